"""Checkpoints in HDF5: weights, optimiser state, random-generator states, iteration, config.

No pickle anywhere: arrays are HDF5 datasets, everything else is JSON in attributes. Files are
written atomically (temporary file in the same folder, space reserved, synced, renamed), so a
crash or a full disk at any moment leaves the previous checkpoint intact.

Layout (format version 2)::

    /                attrs: format="minunet-checkpoint", format_version, minunet_version,
                     model (JSON: UNet config), iteration, optimizer (JSON: kind and settings),
                     rng (JSON: {name: numpy bit-generator state}), extra (JSON),
                     attrs_sha256 (SHA-256 of the attributes above)
    /params/NAME     one float32 dataset per parameter, NAME as in UNet.named_parameters();
                     attr sha256 (of the array's bytes)
    /optimizer/KEY   the optimiser's buffers (velocity/i, or m/i and v/i), each with its sha256;
                     attrs: steps, attrs_sha256

Reading goes through :mod:`minunet.files.hdf5` and :mod:`minunet.model.checkpoint_schema`: the
layout the stored architecture implies is checked before any array is read, and every checksum
is verified. Format 1 (minunet 0.1 before checksums) has the same layout without the checksums
and still loads, unverified.
"""
import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from minunet import __version__
from minunet.errors import UserError
from minunet.files.atomic import atomic_h5
from minunet.files.hdf5 import array_sha256, open_h5, seal_attributes
from minunet.files.space import check_memory
from minunet.model import checkpoint_schema as schema
from minunet.model.unet import UNet

FORMAT = "minunet-checkpoint"
FORMAT_VERSION = 2
ROOT_ATTRS = ("format", "format_version", "minunet_version", "model", "iteration", "optimizer", "rng", "extra")
FIX = "pass a checkpoint written by `minunet train` (RUN/checkpoint.h5 or RUN/best.h5)"
STATE_FIX = "the training state in this checkpoint is damaged: start a new run"


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
    arrays = {f"params/{name}": p.numpy() for name, p in model.named_parameters()}
    scalars = {}
    if optimizer is not None:
        for key, value in optimizer.state().items():
            if isinstance(value, (int, float)):
                scalars[key] = value
            else:
                arrays[f"optimizer/{key}"] = optimizer.params[0].backend.to_numpy(value)

    def write(f):
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["minunet_version"] = __version__
        f.attrs["model"] = json.dumps(model.config())
        f.attrs["iteration"] = int(iteration)
        f.attrs["rng"] = json.dumps(rng or {})
        f.attrs["extra"] = json.dumps(extra or {})
        f.attrs["optimizer"] = json.dumps(optimizer_settings(optimizer) if optimizer is not None else {})
        f.create_group("params")
        opt = f.create_group("optimizer")
        for name, array in arrays.items():
            ds = f.create_dataset(name, data=array)
            ds.attrs["sha256"] = array_sha256(array)
        opt.attrs.update(scalars)
        seal_attributes(opt, sorted(scalars))
        seal_attributes(f, ROOT_ATTRS)
    atomic_h5(path, write, nbytes=sum(a.nbytes for a in arrays.values()), option=None)


def optimizer_settings(optimizer):
    """The optimiser's kind and hyper-parameters as a JSON-friendly dict."""
    kind = type(optimizer).__name__.lower()
    if kind == "sgd":
        return {"kind": kind, "lr": optimizer.lr, "momentum": optimizer.momentum,
                "weight_decay": optimizer.weight_decay}
    return {"kind": kind, "lr": optimizer.lr, "betas": list(optimizer.betas), "eps": optimizer.eps,
            "weight_decay": optimizer.weight_decay}


def load_checkpoint(path, training_state=True):
    """Read a checkpoint, checked (layout, values, checksums) before anything is read whole.

    ``training_state=False`` reads only what prediction needs (architecture, weights, extra):
    the optimiser buffers and generator states are neither read nor checked. A file that is not
    a minunet checkpoint, or is damaged, incomplete or tampered with, is a one-line UserError.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file; pass a run's checkpoint.h5 or best.h5")
    with open_h5(path, "checkpoint", FIX) as r:
        root = r.file
        if r.attr(root, "format", None) != FORMAT:
            r.fail("not a minunet checkpoint (attribute 'format' is missing or different)")
        version = schema.check_version(r, r.attr(root, "format_version", None), FORMAT_VERSION)
        checksums = version >= 2
        if checksums and not r.verify_attributes(root, ROOT_ATTRS):
            r.fail("the attribute checksum is missing, so the file cannot be verified")
        model = schema.check_model(r, r.json_attr(root, "model"))
        iteration = schema.check_iteration(r, r.attr(root, "iteration"))
        extra = schema.check_extra(r, r.json_attr(root, "extra", default={}))
        shapes = schema.parameter_shapes(model)
        optimizer, state_shapes = {}, []
        if training_state:
            optimizer = schema.check_optimizer(r, r.json_attr(root, "optimizer", default={}))
            state_shapes = schema.optimizer_shapes(optimizer, shapes)
        total = 4 * sum(int(np.prod(s)) for _, s in shapes + state_shapes)
        check_memory(total, f"{path}: a depth-{model['depth']} width-{model['width']} U-Net",
                     "this checkpoint is too large for this machine")
        params = _read_arrays(r, "params", shapes, checksums)
        state, rng = {}, {}
        if training_state:
            state = _read_arrays(r, "optimizer", state_shapes, checksums)
            state.update(_optimizer_scalars(r, optimizer, checksums))
            rng = schema.check_rng(r, r.json_attr(root, "rng", default={}))
        return Checkpoint(model=model, params=params, iteration=iteration, optimizer=optimizer,
                          optimizer_state=state, rng=rng, extra=extra)


def _read_arrays(r, group, expected, checksums):
    """The float32 datasets of ``group`` (names and shapes exactly ``expected``), each verified."""
    wanted = dict(expected)
    found = _dataset_names(r, r.get(group, h5py.Group), len(wanted) + 16)    # a few extra are named
    odd = sorted(set(found) ^ set(wanted))
    if odd:
        state = "unexpected" if odd[0] in found else "missing"
        r.fail(f"/{group}/{odd[0][:80]} is {state} for the architecture the file describes")
    arrays = {}
    for name, shape in expected:
        ds = r.dataset(f"/{group}/{name}", shape=shape, dtypes=[np.float32])
        sha = r.attr(ds, "sha256") if checksums else None
        if checksums and not (isinstance(sha, str) and len(sha) == 64):
            r.fail(f"/{group}/{name} has no valid checksum attribute, so it cannot be verified")
        array = r.read(ds, sha)
        if not np.isfinite(array).all():
            r.fail(f"/{group}/{name} holds NaN or infinite values",
                   "the training had diverged: use an earlier checkpoint (e.g. best.h5)")
        arrays[name] = array
    return arrays


def _dataset_names(r, group, limit, prefix=""):
    """Paths of the datasets under ``group`` (hard links only, at most ``limit`` entries per level)."""
    names = []
    for name in r.members(group, limit):
        obj = r.get(f"{group.name}/{name}", (h5py.Group, h5py.Dataset))
        if isinstance(obj, h5py.Group):
            names += _dataset_names(r, obj, limit, f"{prefix}{name}/")
        else:
            names.append(prefix + name)
    return names


def _optimizer_scalars(r, settings, checksums):
    """The optimiser's counters (``steps``), stored as attributes of /optimizer."""
    if not settings:
        return {}
    group = r.get("optimizer", h5py.Group)
    if checksums and not r.verify_attributes(group, ["steps"]):
        r.fail("/optimizer has no attribute checksum, so it cannot be verified")
    steps = r.attr(group, "steps")
    if not schema.is_count(steps):
        r.fail(f"/optimizer steps is {schema.shown(steps)}; expected a whole number >= 0", STATE_FIX)
    return {"steps": steps}


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
    checkpoint = load_checkpoint(path, training_state=False)
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
