"""Whether a training step fits in memory, checked before the first step."""
from minunet.errors import UserError
from minunet.model import geometry as geo
from minunet.model.memory import activation_bytes, memory_budget


def training_memory(geometry, width, classes, n_params, batch=1, up_kernel=2, in_channels=1):
    """A rough upper estimate (bytes) of the memory one float32 training step needs.

    Every activation of the forward pass (:func:`minunet.model.memory.activation_bytes`: the graph keeps
    them for backward), half as much again for the gradients alive during backward, and the
    parameters four times (weights, gradients, two optimiser buffers).
    """
    return int(1.5 * activation_bytes(geometry, width, in_channels, classes, up_kernel, batch) + 16 * n_params)


def check_memory(config, geometry, model):
    """UserError if a training step at this tile size will not fit in memory; names a tile that fits.

    The budget is :func:`minunet.model.memory.memory_budget` (half the free host memory, 70% of a GPU's).
    """
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
