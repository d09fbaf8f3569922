"""A run's setup from its settings: the data file and its slices, the deep-supervision levels."""
from pathlib import Path

from minunet.data.datafile import open_dataset
from minunet.data.slices import format_slices, select_slices
from minunet.errors import UserError
from minunet.model import geometry as geo
from minunet.training.config import DEFAULT_AUX_WEIGHT
from minunet.training.supervision import coarse_index


def open_training_data(config):
    """The data file's description and the (train, validation) slice lists; fills in the settings
    that default from the file (classes, slices, tile). UserError naming the option otherwise."""
    path = Path(config.data)
    if not path.is_file():
        raise UserError(f"--data {path}: no such file; make one with `minunet data convert` "
                        f"or `minunet data synth -o demo.h5`")
    try:
        info = open_dataset(path)
    except UserError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise UserError(f"--data {path}: not a readable minunet data file ({err}); make one with "
                        f"`minunet data convert`") from None
    n_slices, n_classes = info.n_slices, info.n_classes
    if config.classes is None:
        config.classes = n_classes
    elif config.classes < n_classes:
        raise UserError(f"--classes {config.classes}: {path} has labels of {n_classes} classes; "
                        f"use --classes {n_classes} or more")
    if config.val_slices is None:
        n_val = n_slices // 5
        config.val_slices = format_slices(range(n_slices - n_val, n_slices)) if n_val else "none"
    val = [] if str(config.val_slices).lower() == "none" else select_slices(config.val_slices, n_slices, "--val-slices")
    if config.train_slices is None:
        train = [s for s in range(n_slices) if s not in set(val)]
        config.train_slices = format_slices(train)
    else:
        train = select_slices(config.train_slices, n_slices, "--train-slices")
    if not train:
        raise UserError(f"--train-slices: no slices left to train on ({path} has {n_slices}); "
                        f"choose fewer --val-slices")
    if config.tile is None:
        config.tile = geo.nearest_valid(572, config.depth, config.up_kernel)[0]
    return info, train, val


def aux_levels(config, geometry):
    """Index maps and loss weights of each deep-supervision level (deepest first); [] without."""
    if not config.deep_supervision:
        if config.aux_weights:
            raise UserError("--aux-weights needs --deep-supervision")
        return []
    sizes = geometry.decoder_sizes[:-1]
    if not sizes:
        raise UserError(f"--deep-supervision needs --depth 3 or more (got {config.depth})")
    weights = config.aux_weights
    if weights is None:
        weights = [DEFAULT_AUX_WEIGHT] * len(sizes)
    if len(weights) != len(sizes):
        raise UserError(f"--aux-weights: give {len(sizes)} weights (one per coarse level of a depth-"
                        f"{config.depth} network, deepest first), not {len(weights)}")
    config.aux_weights = [float(w) for w in weights]
    out = geometry.output_size
    return [(coarse_index(s, len(sizes) - i, out, config.up_kernel), w)
            for i, (s, w) in enumerate(zip(sizes, config.aux_weights))]
