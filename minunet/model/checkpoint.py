"""Checkpoints in HDF5: weights, optimiser state, random-generator states, iteration, config.

No pickle anywhere: arrays are HDF5 datasets, everything else is JSON in attributes. Files are
written atomically (temporary file in the same folder, flush, fsync, rename), so a crash at any
moment leaves the previous checkpoint intact.

Layout (format version 1)::

    /                attrs: format="minunet-checkpoint", format_version, minunet_version,
                     model (JSON: UNet config), iteration, optimizer (JSON: kind and settings),
                     rng (JSON: {name: numpy bit-generator state}), extra (JSON)
    /params/NAME     one dataset per parameter, NAME as in UNet.named_parameters()
    /optimizer/KEY   the optimiser's buffers (velocity/i, or m/i and v/i)
"""
import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from minunet import __version__
from minunet.errors import UserError
from minunet.files.atomic import atomic_h5

FORMAT = "minunet-checkpoint"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """What a checkpoint file holds, as plain Python and NumPy values."""

    model: dict
    params: dict
    iteration: int = 0
    optimizer: dict = field(default_factory=dict)       # {"kind": ..., settings...}
    optimizer_state: dict = field(default_factory=dict)
    rng: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


def save_checkpoint(path, model, optimizer=None, iteration=0, rng=None, extra=None):
    """Write the model (and optionally optimiser, iteration, generator states) to ``path``."""
    def write(f):
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["minunet_version"] = __version__
        f.attrs["model"] = json.dumps(model.config())
        f.attrs["iteration"] = int(iteration)
        f.attrs["rng"] = json.dumps(rng or {})
        f.attrs["extra"] = json.dumps(extra or {})
        params = f.create_group("params")
        for name, p in model.named_parameters():
            params.create_dataset(name, data=p.numpy())
        opt = f.create_group("optimizer")
        if optimizer is not None:
            f.attrs["optimizer"] = json.dumps(optimizer_settings(optimizer))
            for key, value in optimizer.state().items():
                if isinstance(value, (int, float)):
                    opt.attrs[key] = value
                else:
                    opt.create_dataset(key, data=optimizer.params[0].backend.to_numpy(value))
        else:
            f.attrs["optimizer"] = json.dumps({})
    atomic_h5(path, write)


def optimizer_settings(optimizer):
    """The optimiser's kind and hyper-parameters as a JSON-friendly dict."""
    kind = type(optimizer).__name__.lower()
    if kind == "sgd":
        return {"kind": kind, "lr": optimizer.lr, "momentum": optimizer.momentum,
                "weight_decay": optimizer.weight_decay}
    return {"kind": kind, "lr": optimizer.lr, "betas": list(optimizer.betas), "eps": optimizer.eps,
            "weight_decay": optimizer.weight_decay}


def load_checkpoint(path):
    """Read a checkpoint; a UserError names the problem if the file is not one we can read."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file; pass a run's checkpoint.h5 or best.h5")
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise UserError(f"{path}: not an HDF5 file, so not a minunet checkpoint") from None
    with f:
        if f.attrs.get("format") != FORMAT:
            raise UserError(f"{path}: not a minunet checkpoint (attribute 'format' is missing or different)")
        version = int(f.attrs["format_version"])
        if version > FORMAT_VERSION:
            raise UserError(f"{path}: checkpoint format {version} is newer than this minunet reads "
                            f"({FORMAT_VERSION}); upgrade minunet")
        params = {}
        f["params"].visititems(lambda name, obj: params.__setitem__(name, obj[()])
                               if isinstance(obj, h5py.Dataset) else None)
        opt_state = {key: value for key, value in f["optimizer"].attrs.items()}
        f["optimizer"].visititems(lambda name, obj: opt_state.__setitem__(name, obj[()])
                                  if isinstance(obj, h5py.Dataset) else None)
        return Checkpoint(model=json.loads(f.attrs["model"]), params=params, iteration=int(f.attrs["iteration"]),
                          optimizer=json.loads(f.attrs["optimizer"]), optimizer_state=opt_state,
                          rng=json.loads(f.attrs["rng"]), extra=json.loads(f.attrs["extra"]))


def load_weights(model, checkpoint, path="checkpoint"):
    """Copy a checkpoint's parameters into a model of the same architecture."""
    config = model.config()
    differing = {k: (checkpoint.model.get(k), v) for k, v in config.items()
                 if k != "dropout" and checkpoint.model.get(k) != v}
    if differing:
        detail = ", ".join(f"{k}: file {a} vs model {b}" for k, (a, b) in differing.items())
        raise UserError(f"{path}: checkpoint is for a different architecture ({detail})")
    for name, p in model.named_parameters():
        if name not in checkpoint.params or checkpoint.params[name].shape != p.shape:
            raise UserError(f"{path}: parameter {name} is missing or has the wrong shape")
        p.data[...] = p.backend.asarray(checkpoint.params[name].astype(p.dtype))


def load_model(path, device="cpu"):
    """The UNet stored in a checkpoint, on ``device``, in eval mode; also returns the Checkpoint."""
    from minunet.model.unet import UNet
    checkpoint = load_checkpoint(path)
    model = UNet(device=device, **checkpoint.model)
    load_weights(model, checkpoint, path)
    return model.eval(), checkpoint


def generator_state(rng):
    """A NumPy Generator's state as JSON-friendly data."""
    return rng.bit_generator.state


def restore_generator(state):
    """A NumPy Generator continuing exactly from a saved state."""
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    return rng
