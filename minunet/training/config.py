"""A training run's settings: their defaults, what a resumed run may change, config.json.

Budgets are for the whole run: ``iterations`` is the last iteration and ``minutes`` the wall time
summed over every session, so a resumed run finishes what the interrupted one started.
"""
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from minunet.errors import UserError

DEFAULT_LR = {"sgd": 0.001, "adam": 3e-4}   # measured on ISBI: docs/training.md, "Optimiser and learning rate"
DEFAULT_AUX_WEIGHT = 0.5            # each deep-supervision level, unless aux_weights says otherwise


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
    optimizer: str = "adam"           # the paper's SGD does not learn this network here: docs/training.md
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
    best_score: float = None          # the best validation Rand error (2 classes) or pixel error (more)
    best_iteration: int = None
    history: list = field(default_factory=list)


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
