"""Training: the paper's recipe, a run directory, safe checkpoints and exact resume.

The recipe of Ronneberger et al. (2015): a batch of one large tile, SGD with momentum 0.99 (or
Adam), He initialisation and dropout (both in :class:`minunet.model.unet.UNet`), elastic augmentation
and the border weight maps of the data file (both in :class:`minunet.data.dataset.TileSampler`), and the
weighted softmax cross-entropy. With deep supervision (the paper's dental network) each coarse
expanding level adds its own weighted loss.

A run directory holds::

    config.json     every setting, the data file's sha256, the versions
    checkpoint.h5   the latest state (weights, optimiser, sampler and dropout generators, iteration)
    best.h5         the state with the lowest validation Rand error so far
    metrics.csv     iteration, elapsed_s, train_loss, val_pixel_error, val_rand_error
    curves.png      the loss and validation curves
    train.log       what happened, with times

Budgets are for the whole run: ``iterations`` is the last iteration and ``minutes`` the wall time
summed over every session, so a resumed run finishes what the interrupted one started. On the CPU,
N iterations, a stop and a resume to N + M give bitwise the weights of N + M iterations in one go:
everything random is drawn from generators that are saved in the checkpoint.
"""
import csv
import dataclasses
import hashlib
import json
import math
import os
import platform
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minunet import __version__
from minunet.engine import functional as F
from minunet.engine.autograd import Tensor, no_grad
from minunet.engine.optim import SGD, Adam
from minunet.errors import UserError
from minunet.model.checkpoint import generator_state, load_checkpoint, load_weights, restore_generator, save_checkpoint
from minunet.model.unet import UNet

IGNORE = 255                        # label of pixels that carry no loss
METRIC_COLUMNS = ("iteration", "elapsed_s", "train_loss", "val_pixel_error", "val_rand_error")
DEFAULT_LR = {"sgd": 0.001, "adam": 3e-4}   # measured on ISBI: docs/training.md, "Optimiser and learning rate"
DEFAULT_AUX_WEIGHT = 0.5            # each deep-supervision level, unless aux_weights says otherwise


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainConfig:
    """Every setting of a run (stored in config.json and in each checkpoint).

    Budgets: ``iterations`` (the last iteration) and/or ``minutes`` (wall time over all sessions);
    training stops at whichever comes first. ``val_slices`` "none" disables validation; None
    means the last fifth of the slices (24-29 for the 30 ISBI slices). ``train_slices`` None means
    every slice not used for validation. ``aux_weights``: one loss weight per coarse level of
    deep supervision, deepest first. ``workers``: background processes that prepare the next
    augmented tiles while a step runs (0: in the training process); the tiles are the same
    either way.
    """

    data: str
    out: str
    device: str = "cpu"
    iterations: int = None
    minutes: float = None
    depth: int = 5
    width: int = 64
    tile: int = 572
    classes: int = None
    up_kernel: int = 2
    pad: str = "mirror"
    deep_supervision: bool = False
    aux_weights: list = None
    dropout: float = 0.5
    optimizer: str = "adam"         # the paper's SGD does not learn at width 16: docs/training.md
    lr: float = None
    momentum: float = 0.99
    weight_decay: float = 0.0
    batch: int = 1
    augment: bool = True
    train_slices: str = None
    val_slices: str = None
    val_every: int = 500
    checkpoint_minutes: float = 5.0
    seed: int = 0
    workers: int = 1

    def to_json(self):
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    """How a call to :meth:`Trainer.run` ended."""

    iteration: int
    reason: str                      # "iterations", "minutes" or "signal"
    signum: int = None
    best_rand_error: float = None
    best_iteration: int = None
    history: list = field(default_factory=list)


# ----------------------------------------------------------------------------- deep supervision

def coarse_positions(coarse_size, levels_up, up_kernel=2, convs_per_level=2, kernel=3):
    """Where the pixel centres of a coarse expanding-level map fall in the final output.

    Each level up, a stride-2 up-convolution with a k x k kernel spreads coarse pixel j over fine
    pixels 2j .. 2j+k-1 (centre 2j + (k-1)/2), then the level's valid convolutions crop
    ``convs_per_level * (kernel-1) / 2`` pixels from each side. Returns float positions (one per
    coarse row or column) in the coordinates of the output tile.
    """
    pos = np.arange(coarse_size, dtype=np.float64)
    crop = convs_per_level * (kernel - 1) / 2
    for _ in range(levels_up):
        pos = 2 * pos + (up_kernel - 1) / 2 - crop
    return pos


def coarse_index(coarse_size, levels_up, out_size, up_kernel=2):
    """Output-tile row (or column) read by each coarse pixel, or -1 where it falls outside.

    The coarse map at stride 2^k covers the output window, centred, with one block of 2^k x 2^k
    output pixels per coarse pixel; its label is the label of the block's centre pixel (nearest
    neighbour; a block of even size has its centre between pixels, and the one below/right of it
    is taken). Coarse pixels whose centre lies outside the output tile get the ignore label.
    """
    idx = np.floor(coarse_positions(coarse_size, levels_up, up_kernel) + 0.5).astype(np.int64)
    idx[(idx < 0) | (idx >= out_size)] = -1
    return idx


def coarse_targets(labels, weights, idx):
    """Labels and weights (N, S, S) brought to a coarse level by nearest sampling at ``idx``.

    Pixels outside the output tile get label 255 (ignored) and weight 0.
    """
    inside = idx >= 0
    safe = np.where(inside, idx, 0)
    lab = labels[:, safe][:, :, safe].copy()
    wgt = weights[:, safe][:, :, safe].copy()
    outside = ~(inside[:, None] & inside[None, :])
    lab[:, outside] = IGNORE
    wgt[:, outside] = 0
    return lab, wgt


# ----------------------------------------------------------------------------- small helpers

def file_sha256(path, chunk=1 << 20):
    """The sha256 of a file, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def versions():
    """Versions of minunet, Python and the libraries that decide the numbers."""
    out = {"minunet": __version__, "python": platform.python_version(), "numpy": np.__version__,
           "platform": platform.platform()}
    for name in ("numba", "h5py", "scipy"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            pass
    return out


def training_memory(geometry, width, classes, n_params, batch=1, up_kernel=2, in_channels=1):
    """A rough upper estimate (bytes) of the memory one float32 training step needs.

    Every activation of the forward pass (:func:`minunet.inference.tiling.activation_bytes`: the graph keeps
    them for backward), half as much again for the gradients alive during backward, and the
    parameters four times (weights, gradients, two optimiser buffers).
    """
    from minunet.inference.tiling import activation_bytes
    return int(1.5 * activation_bytes(geometry, width, in_channels, classes, up_kernel, batch) + 16 * n_params)


def check_memory(config, geometry, model):
    """UserError if a training step at this tile size will not fit in memory; names a tile that fits.

    The budget is :func:`minunet.inference.tiling.memory_budget` (half the free host memory, 70% of a GPU's).
    """
    from minunet.inference.tiling import memory_budget
    from minunet.model import geometry as geo
    budget = memory_budget(config.device)
    n_params = model.num_parameters()

    def need(g):
        return training_memory(g, config.width, model.classes, n_params, config.batch, config.up_kernel)
    if need(geometry) <= budget:
        return
    fits = [s for s in geo.valid_sizes(1, config.tile, config.depth, config.up_kernel)
            if need(geo.trace(s, config.depth, config.up_kernel)) <= budget]
    hint = f"use --tile {fits[-1]} or less" if fits else "use a smaller --width or --depth"
    raise UserError(f"--tile {config.tile} at width {config.width} needs about {need(geometry) / 2**30:.1f} GiB "
                    f"per training step but only {budget / 2**30:.1f} GiB can be used on {config.device}; {hint}")


def check_device(device):
    """The device name to use: "auto" picks CUDA when a GPU is there; UserError if one is missing."""
    if device in ("cpu", "reference"):
        return device
    try:
        from minunet.kernels import cuda
        ok, reason = cuda.available()
    except (ImportError, AttributeError) as err:
        ok, reason = False, f"the CUDA backend cannot be loaded ({err})"
    if device == "auto":
        return "cuda" if ok else "cpu"
    if device == "cuda" and not ok:
        raise UserError(f"--device cuda: no usable GPU ({reason}); use --device cpu")
    if device != "cuda":
        raise UserError(f"--device {device}: unknown device; use auto, cpu or cuda")
    return device


def _finite_params(model):
    return all(np.isfinite(p.numpy()).all() for p in model.parameters())


# ----------------------------------------------------------------------------- run settings

# settings a resumed run may change: its budgets, reporting, device, the data file's path (the
# checksum must still match), the learning rate (to go on more gently after a NaN, say) and the
# number of sampling workers (the tiles do not depend on it)
RESUMABLE = ("iterations", "minutes", "val_every", "checkpoint_minutes", "device", "data", "lr", "workers")


def stored_config(out):
    """The TrainConfig a run directory was started with (from its config.json)."""
    path = Path(out) / "config.json"
    try:
        settings = json.loads(path.read_text())["settings"]
    except (OSError, ValueError, KeyError):
        raise UserError(f"--resume: {path} is missing or unreadable; is {out} a minunet run directory?") from None
    return TrainConfig(**{k: v for k, v in settings.items() if k in TrainConfig.__dataclass_fields__})


def resume_config(out, **given):
    """The stored settings of a run, with the budgets (and device, data path) replaced by ``given``.

    Any other setting in ``given`` must equal the stored one: a run cannot change its network,
    data split or optimiser half-way (UserError naming the option).
    """
    if not (Path(out) / "checkpoint.h5").is_file():
        raise UserError(f"--resume: {out} holds no checkpoint.h5 to continue; start a new run without --resume")
    config = stored_config(out)
    for key, value in given.items():
        if value is None:
            continue
        if key in RESUMABLE:
            setattr(config, key, value)
        elif key in TrainConfig.__dataclass_fields__ and value != getattr(config, key):
            option = "--" + key.replace("_", "-")
            raise UserError(f"{option} {value}: the run in {out} was started with {option} "
                            f"{getattr(config, key)}; drop the option to resume, or start a new run "
                            f"with another --out")
    config.out = str(out)
    return config


# ----------------------------------------------------------------------------- the trainer

class Trainer:
    """One training run in a run directory: build, step, validate, checkpoint, resume.

    Args:
        config: a :class:`TrainConfig` (to resume, the stored one: see :func:`resume_config`).
        resume: continue from ``config.out/checkpoint.h5``.
        echo: called with each log line (besides train.log); None prints nothing.
        sampler: a training-tile sampler (``batch(n)``, ``state()``, ``set_state()``) to use
            instead of :class:`minunet.data.dataset.TileSampler` (tests).
    """

    def __init__(self, config, resume=False, echo=None, sampler=None):
        self.echo = echo
        self.out = Path(config.out)
        config = self._prepare_directory(config, resume)
        config.device = check_device(config.device)
        if config.iterations is None and config.minutes is None:
            raise UserError("give a budget: --iterations N or --minutes M")
        if config.optimizer not in DEFAULT_LR:
            raise UserError(f"--optimizer {config.optimizer}: unknown; use sgd or adam")
        if config.lr is None:
            config.lr = DEFAULT_LR[config.optimizer]
        if not config.lr > 0 or not math.isfinite(config.lr):
            raise UserError(f"--lr {config.lr}: the learning rate must be a positive number")
        if config.val_every < 1:
            raise UserError(f"--val-every {config.val_every}: must be at least 1")
        self.config = config

        from minunet.data import dataset as data
        self.data_info = self._open_data(data, config)
        self.geometry = _geometry(config)

        self.model = UNet(depth=config.depth, width=config.width, in_channels=1, classes=self.classes,
                          up_kernel=config.up_kernel, dropout=config.dropout,
                          deep_supervision=config.deep_supervision, device=config.device, seed=config.seed)
        check_memory(config, self.geometry, self.model)
        params = self.model.parameters()
        if config.optimizer == "sgd":
            self.optimizer = SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
        else:
            self.optimizer = Adam(params, lr=config.lr, weight_decay=config.weight_decay)
        self.aux = self._aux_levels(config)
        sampler_seed = int(np.random.SeedSequence([config.seed, 2]).generate_state(1)[0])
        self.sampler = sampler or data.TileSampler(config.data, self.train_slices, self.geometry.input_size,
                                                   self.geometry.output_size, augment=config.augment,
                                                   pad=config.pad, seed=sampler_seed, workers=config.workers)
        self.iteration, self.elapsed_before = 0, 0.0
        self.loss_sum, self.loss_count = 0.0, 0
        self.best_rand, self.best_iteration = None, None
        self.stop_signal = None
        self._val_data = None
        if resume:
            self._load_state(self.out / "checkpoint.h5")
        self.out.mkdir(parents=True, exist_ok=True)
        if not resume:
            self._clear_stale()
        self._write_config(resume)

    # ------------------------------------------------------------------ setup

    def _prepare_directory(self, config, resume):
        ckpt = self.out / "checkpoint.h5"
        if resume and not ckpt.is_file():
            raise UserError(f"--resume: {self.out} holds no checkpoint.h5 to continue; start a new run without --resume")
        if not resume and ckpt.exists():
            raise UserError(f"{self.out} already holds a run (checkpoint.h5); add --resume to continue it "
                            f"or choose another --out")
        return dataclasses.replace(config)

    def _clear_stale(self):
        """A new run in a folder without a checkpoint: results of an earlier failed start are void."""
        for name in ("metrics.csv", "best.h5", "curves.png"):
            (self.out / name).unlink(missing_ok=True)

    def _open_data(self, data, config):
        path = Path(config.data)
        if not path.is_file():
            raise UserError(f"--data {path}: no such file; make one with `minunet data convert` "
                            f"or `minunet data synth -o demo.h5`")
        try:
            info = data.open_dataset(path)
        except UserError:
            raise
        except (OSError, KeyError, ValueError, TypeError) as err:
            raise UserError(f"--data {path}: not a readable minunet data file ({err}); make one with "
                            f"`minunet data convert`") from None
        n_slices, n_classes = _dataset_shape(info, path)
        self.n_slices = n_slices
        if config.classes is None:
            config.classes = n_classes
        elif config.classes < n_classes:
            raise UserError(f"--classes {config.classes}: {path} has labels of {n_classes} classes; "
                            f"use --classes {n_classes} or more")
        self.classes = config.classes
        if config.val_slices is None:
            n_val = n_slices // 5
            config.val_slices = data.format_slices(range(n_slices - n_val, n_slices)) if n_val else "none"
        val = [] if str(config.val_slices).lower() == "none" else _parse(data, config.val_slices, "--val-slices", n_slices)
        if config.train_slices is None:
            train = [s for s in range(n_slices) if s not in set(val)]
            config.train_slices = data.format_slices(train)
        else:
            train = _parse(data, config.train_slices, "--train-slices", n_slices)
        if not train:
            raise UserError(f"--train-slices: no slices left to train on ({path} has {n_slices}); "
                            f"choose fewer --val-slices")
        self.train_slices, self.val_slices = train, val
        if config.tile is None:
            from minunet.model import geometry as geo
            config.tile = geo.nearest_valid(572, config.depth, config.up_kernel)[0]
        return info

    def _aux_levels(self, config):
        """Index maps and loss weights of each deep-supervision level (deepest first)."""
        if not config.deep_supervision:
            if config.aux_weights:
                raise UserError("--aux-weights needs --deep-supervision")
            return []
        sizes = self.geometry.decoder_sizes[:-1]
        if not sizes:
            raise UserError(f"--deep-supervision needs --depth 3 or more (got {config.depth})")
        weights = config.aux_weights
        if weights is None:
            weights = [DEFAULT_AUX_WEIGHT] * len(sizes)
        if len(weights) != len(sizes):
            raise UserError(f"--aux-weights: give {len(sizes)} weights (one per coarse level of a depth-"
                            f"{config.depth} network, deepest first), not {len(weights)}")
        config.aux_weights = [float(w) for w in weights]
        out = self.geometry.output_size
        return [(coarse_index(s, len(sizes) - i, out, config.up_kernel), w)
                for i, (s, w) in enumerate(zip(sizes, config.aux_weights))]

    def _write_config(self, resume):
        path = self.out / "config.json"
        record = json.loads(path.read_text()) if resume and path.is_file() else {}
        sha = file_sha256(self.config.data)
        if resume and record.get("data_sha256") not in (None, sha):
            raise UserError(f"--resume: {self.config.data} changed since the run started (sha256 differs); "
                            f"resume with the original file or start a new run")
        sessions = record.get("sessions", [])
        sessions.append({"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "iteration": self.iteration,
                         "argv": sys.argv[1:]})
        record.update(settings=self.config.to_json(), data_sha256=sha, versions=versions(),
                      model=self.model.config(), parameters=self.model.num_parameters(),
                      geometry=dataclasses.asdict(self.geometry), train_slices=self.train_slices,
                      val_slices=self.val_slices, sessions=sessions)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, path)

    def log(self, message):
        """A line in train.log (with the time) and, unless quiet, on the terminal."""
        with open(self.out / "train.log", "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
        if self.echo is not None:
            self.echo(message)

    # ------------------------------------------------------------------ state

    def state_extra(self):
        return {"config": self.config.to_json(), "elapsed_s": self.elapsed(), "loss_sum": self.loss_sum,
                "loss_count": self.loss_count, "best_rand_error": self.best_rand,
                "best_iteration": self.best_iteration}

    def save(self, path=None):
        """Write a full checkpoint (default: checkpoint.h5); refuses non-finite weights."""
        path = Path(path or self.out / "checkpoint.h5")
        if not _finite_params(self.model):
            raise TrainingDiverged(f"the weights became NaN or infinite by iteration {self.iteration}: "
                                   + self._diverged_advice())
        rng = {"dropout": generator_state(self.model.dropout_rng), "sampler": _jsonable(self.sampler.state())}
        save_checkpoint(path, self.model, self.optimizer, self.iteration, rng=rng, extra=self.state_extra())
        self._last_save = time.monotonic()

    def _diverged_advice(self):
        """The likely cause of a NaN/Inf and what to do, naming the last good checkpoint."""
        lr, lower = self.config.lr, self.config.lr / 10
        cause = f"the learning rate (--lr {lr:g}) is probably too high for this data"
        ckpt = self.out / "checkpoint.h5"
        if ckpt.is_file():
            iteration = load_checkpoint(ckpt).iteration
            return (f"{cause}; {ckpt} keeps the last good state (iteration {iteration}): continue it with "
                    f"`minunet train --out {self.out} --resume --lr {lower:g}`")
        return f"{cause}; no checkpoint was written yet: start again with a lower --lr (e.g. --lr {lower:g})"

    def _load_state(self, path):
        ckpt = load_checkpoint(path)
        load_weights(self.model, ckpt, path)
        kind = ckpt.optimizer.get("kind")
        if kind != self.config.optimizer:
            raise UserError(f"{path}: the run used --optimizer {kind}, not {self.config.optimizer}")
        self.optimizer.load_state(ckpt.optimizer_state)
        self.model.dropout_rng = restore_generator(ckpt.rng["dropout"])
        self.sampler.set_state(ckpt.rng["sampler"])
        self.iteration = ckpt.iteration
        extra = ckpt.extra
        self.elapsed_before = float(extra.get("elapsed_s", 0.0))
        self.loss_sum, self.loss_count = float(extra.get("loss_sum", 0.0)), int(extra.get("loss_count", 0))
        self.best_rand, self.best_iteration = extra.get("best_rand_error"), extra.get("best_iteration")
        self._truncate_metrics(self.iteration)

    def _truncate_metrics(self, iteration):
        """Drop metrics rows written after the checkpoint we resume from."""
        path = self.out / "metrics.csv"
        if not path.is_file():
            return
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= iteration]
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows(kept)

    # ------------------------------------------------------------------ one step

    def elapsed(self):
        """Seconds of wall time spent on this run, over every session."""
        return self.elapsed_before + (time.monotonic() - self._t0 if hasattr(self, "_t0") else 0.0)

    def loss(self, image, labels, weights):
        """The training loss tensor for a batch: weighted softmax CE (plus weighted aux losses)."""
        device = self.config.device
        x = Tensor(_to_device(image, device), device=device)
        out = self.model(x)
        logits, aux = (out if self.config.deep_supervision else (out, []))
        total = F.softmax_cross_entropy(logits, _to_device(labels, device), _to_device(weights, device),
                                        ignore=IGNORE)
        for (idx, w), aux_logits in zip(self.aux, aux):
            lab, wgt = coarse_targets(labels, weights, idx)
            term = F.softmax_cross_entropy(aux_logits, _to_device(lab, device), _to_device(wgt, device),
                                           ignore=IGNORE)
            total = F.add(total, F.scale(term, w))
        return total

    def step(self):
        """One optimiser step on a fresh batch; returns the loss (raises TrainingDiverged on NaN/Inf)."""
        image, labels, weights = self.sampler.batch(self.config.batch)
        self.model.train()
        loss = self.loss(image, labels, weights)
        value = loss.item()
        if not math.isfinite(value):
            raise TrainingDiverged(f"the loss became {value} at iteration {self.iteration + 1}: "
                                   + self._diverged_advice())
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.iteration += 1
        self.loss_sum += value
        self.loss_count += 1
        return value

    def close(self):
        """Stop the sampling workers and close the data file (the run directory stays as it is)."""
        close = getattr(self.sampler, "close", None)
        if close is not None:
            close()

    # ------------------------------------------------------------------ validation

    def validation_data(self):
        """The held-out slices, normalised images (N, H, W) and labels (N, H, W)."""
        if self._val_data is None:
            from minunet.data import dataset as data
            raw, labels = _slices(data, self.config.data, self.val_slices)
            self._val_data = (data.normalize(raw), labels)
        return self._val_data

    def validate(self):
        """Pixel and Rand error on the validation slices (overlap-tile prediction, ISBI definitions)."""
        from minunet.evaluation import metrics
        from minunet.inference import tiling
        images, labels = self.validation_data()
        tile = tiling.fit_tile(self.model, self.config.tile, *np.shape(images)[-2:])
        self.model.eval()
        try:
            with no_grad():
                probs = tiling.predict_stack(self.model, images, tile=tile, pad=self.config.pad,
                                             batch=self.config.batch)
        finally:
            self.model.train()
        labels = np.asarray(labels)
        if self.classes == 2:
            scores = metrics.evaluate_stack(probs[:, 1], labels, metrics=("pixel", "rand"))
            pixel = scores["pixel_error"]
        else:
            truth = labels.astype(np.int64)
            pixel = float(np.mean(probs.argmax(axis=1) != truth))
            scores = metrics.evaluate_stack(1.0 - probs[:, 0], (truth > 0).astype(np.uint8), metrics=("rand",))
        return {"pixel_error": pixel, "rand_error": scores["rand_error"]}

    # ------------------------------------------------------------------ the loop

    def done(self):
        """Why the run's budget is spent (None while it is not)."""
        c = self.config
        if c.iterations is not None and self.iteration >= c.iterations:
            return "iterations"
        if c.minutes is not None and self.elapsed() >= 60 * c.minutes:
            return "minutes"
        return None

    def run(self, progress=None, handle_signals=True):
        """Train until the budget is spent or a signal asks to stop.

        progress: called after each step as progress(trainer, loss). With ``handle_signals``,
        SIGINT and SIGTERM let the current step finish, then a checkpoint is written and the
        result says which signal stopped the run (exit status 128 + signum by convention).
        """
        self._t0 = time.monotonic()
        self._last_save = self._t0
        previous = _install_handlers(self) if handle_signals else {}
        c = self.config
        self.log(f"{'resuming' if self.iteration else 'training'} at iteration {self.iteration}: "
                 f"{self.model.num_parameters():,} parameters, depth {c.depth}, width {c.width}, "
                 f"tile {self.geometry.input_size} -> {self.geometry.output_size}, {c.optimizer} lr {c.lr:g}, "
                 f"device {c.device}, train slices {c.train_slices}, val slices {c.val_slices}")
        history = []
        try:
            reason = self.done()
            if reason is not None:
                self.log(f"nothing to do: the {reason} budget is already spent; give a larger --{reason}")
            while reason is None and self.stop_signal is None:
                loss = self.step()
                if progress is not None:
                    progress(self, loss)
                reason = self.done()
                if self.iteration % c.val_every == 0 or reason is not None:
                    history.append(self.record(validate=True))
                    self.save()
                elif time.monotonic() - self._last_save > 60 * c.checkpoint_minutes:
                    self.save()
            if self.stop_signal is not None and reason is None:
                self.save()
                reason = "signal"
                self.log(f"stopped by {signal.Signals(self.stop_signal).name} at iteration {self.iteration}; "
                         f"checkpoint written; continue with: minunet train --out {self.out} --resume")
            elif history:
                self.log(f"finished at iteration {self.iteration} ({reason} budget spent) after "
                         f"{self.elapsed():.0f} s; best validation Rand error "
                         f"{_fmt(self.best_rand)} at iteration {self.best_iteration}")
        except TrainingDiverged as err:
            self.log(f"stopped: {err}")
            raise
        finally:
            _restore_handlers(previous)
        return TrainResult(self.iteration, reason, self.stop_signal, self.best_rand, self.best_iteration, history)

    def record(self, validate=True):
        """Validate (if there are validation slices), append a metrics row, keep best.h5, draw the curves."""
        scores = self.validate() if validate and self.val_slices else {}
        pixel, rand = scores.get("pixel_error"), scores.get("rand_error")
        row = {"iteration": self.iteration, "elapsed_s": round(self.elapsed(), 3),
               "train_loss": self.loss_sum / self.loss_count if self.loss_count else None,
               "val_pixel_error": pixel, "val_rand_error": rand}
        self.loss_sum, self.loss_count = 0.0, 0
        path = self.out / "metrics.csv"
        new = not path.is_file()
        with open(path, "a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(METRIC_COLUMNS)
            writer.writerow(["" if row[k] is None else row[k] for k in METRIC_COLUMNS])
        message = (f"iteration {self.iteration}: train loss {_fmt(row['train_loss'])}, "
                   f"val pixel error {_fmt(pixel)}, val Rand error {_fmt(rand)}")
        # Two classes: the best model has the lowest Rand error (the paper's ISBI criterion). More
        # classes: the Rand error of foreground vs background cannot see classes mixed up, so the
        # argmax pixel error decides.
        key = rand if rand is not None and self.classes == 2 else pixel
        if key is not None and (self.best_rand is None or key < self.best_rand):
            self.best_rand, self.best_iteration = key, self.iteration
            self.save(self.out / "best.h5")
            message += " (best so far: best.h5)"
        self.log(message)
        try:
            plot_curves(path, self.out / "curves.png")
        except Exception as err:                        # a plot must never stop training
            self.log(f"could not draw curves.png: {err}")
        return row


# ----------------------------------------------------------------------------- curves

def read_metrics(path):
    """metrics.csv as a dict of column -> list of floats (nan where empty)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: [float(r[k]) if r[k] not in ("", None) else math.nan for r in rows] for k in METRIC_COLUMNS}


def plot_curves(metrics_path, png_path):
    """Training loss and validation errors against iterations, as a PNG (matplotlib, Agg)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    m = read_metrics(metrics_path)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(m["iteration"], m["train_loss"], "o-", label="training loss")
    ax1.set_xlabel("iteration")
    ax1.set_ylabel("weighted cross-entropy (mean since last row)")
    ax1.legend()
    ax2.plot(m["iteration"], m["val_pixel_error"], "o-", label="pixel error")
    ax2.plot(m["iteration"], m["val_rand_error"], "s-", label="Rand error")
    ax2.set_xlabel("iteration")
    ax2.set_ylabel("validation error")
    ax2.legend()
    fig.tight_layout()
    tmp = Path(png_path).with_name(".curves.tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, png_path)


# ----------------------------------------------------------------------------- internals

def _geometry(config):
    from minunet.model import geometry as geo
    try:
        return geo.check_tile(config.tile, config.depth, config.up_kernel)
    except UserError as err:
        raise UserError(f"--tile: {err}") from None


def _to_device(array, device):
    from minunet.kernels import get_backend
    return get_backend(device).asarray(np.ascontiguousarray(array))


def _fmt(value):
    return "-" if value is None else f"{value:.4g}"


def _jsonable(value):
    """NumPy scalars and arrays inside a state dict as plain JSON values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _dataset_shape(info, path):
    """(number of slices, number of classes) of an opened dataset, whatever object open_dataset returns."""
    def get(name):
        if isinstance(info, dict):
            return info.get(name)
        return getattr(info, name, None)
    n_slices = get("n_slices") or get("slices")
    n_classes = get("n_classes") or get("classes")
    if n_slices is None or n_classes is None:
        import h5py
        with h5py.File(path, "r") as f:
            n_slices = f["raw"].shape[0]
            n_classes = int(f.attrs.get("n_classes", 2))
    if isinstance(n_slices, (list, tuple)):
        n_slices = len(n_slices)
    return int(n_slices), int(n_classes)


def _parse(data, text, option, n_slices):
    try:
        slices = list(data.parse_slices(str(text)))
    except UserError as err:
        raise UserError(f"{option}: {err}") from None
    except ValueError as err:
        raise UserError(f"{option} {text}: {err}; write slices like 24-29 or 0,3,5-9") from None
    bad = [s for s in slices if not 0 <= s < n_slices]
    if bad:
        raise UserError(f"{option} {text}: slice {bad[0]} is out of range; the data file has slices 0-{n_slices - 1}")
    return slices


def _slices(data, path, slices):
    """(raw, labels) of some slices, whatever load_slices returns."""
    out = data.load_slices(path, slices)
    if isinstance(out, dict):
        return out["raw"], out["labels"]
    return out[0], out[1]


def _install_handlers(trainer):
    """SIGINT/SIGTERM set trainer.stop_signal; a second one aborts at once."""
    def handler(signum, frame):
        if trainer.stop_signal is not None:
            raise KeyboardInterrupt
        trainer.stop_signal = signum
        if trainer.echo is not None:
            trainer.echo(f"\n{signal.Signals(signum).name}: finishing this step, then writing a checkpoint "
                         f"(send it again to abort at once)")
    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:                                   # not the main thread
        pass
    return previous


def _restore_handlers(previous):
    for sig, handler in previous.items():
        signal.signal(sig, handler)
