"""What a checkpoint may hold: the checks :mod:`minunet.model.checkpoint` applies before reading.

The architecture stored in the file (``model``) implies every parameter's name and shape, and the
optimiser's kind the names and shapes of its buffers; anything else under ``/params`` or
``/optimizer`` is refused, and nothing is read before the whole layout has been checked. The
JSON attributes are checked against their known keys and sane ranges: the ranges are far wider
than any network minunet trains, and only refuse what no real checkpoint holds.
"""
import math

import numpy as np

MODEL_DEFAULTS = dict(depth=5, width=64, in_channels=1, classes=2, up_kernel=2, dropout=0.5,
                      deep_supervision=False)
MODEL_RANGES = dict(depth=(1, 10), width=(1, 4096), in_channels=(1, 256), classes=(2, 255))
UP_KERNELS = (2, 4)
OPTIMIZER_KEYS = {"sgd": {"lr", "momentum", "weight_decay"}, "adam": {"lr", "betas", "eps", "weight_decay"}}
PADS = ("mirror", "zero")
MAX_COUNT = 2 ** 53                   # iterations, samples drawn, seeds: any count a run reaches


def shown(value, limit=40):
    """A value as a message quotes it: its repr, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def is_count(value, low=0, high=MAX_COUNT):
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def is_finite_number(value, low=-math.inf, high=math.inf):
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and low <= value <= high)


def check_model(r, config):
    """The ``model`` attribute: known keys, integer sizes in range; returns it with defaults filled."""
    unknown = sorted(set(config) - set(MODEL_DEFAULTS))
    if unknown:
        r.fail(f"attribute 'model' has unknown key {shown(unknown[0])} (known: {', '.join(MODEL_DEFAULTS)})")
    config = {**MODEL_DEFAULTS, **config}
    for key, (low, high) in MODEL_RANGES.items():
        if not is_count(config[key], low, high):
            r.fail(f"model {key} is {shown(config[key])}; expected a whole number from {low} to {high}")
    if config["up_kernel"] not in UP_KERNELS or isinstance(config["up_kernel"], bool):
        r.fail(f"model up_kernel is {shown(config['up_kernel'])}; expected 2 or 4")
    if not is_finite_number(config["dropout"], 0.0) or config["dropout"] >= 1:
        r.fail(f"model dropout is {shown(config['dropout'])}; expected a number in [0, 1)")
    if not isinstance(config["deep_supervision"], bool):
        r.fail(f"model deep_supervision is {shown(config['deep_supervision'])}; expected true or false")
    return config


def parameter_shapes(config):
    """[(name, shape)] of a UNet's parameters in its order (``UNet.named_parameters``), computed
    from the architecture alone (tests compare it with a built UNet)."""
    depth, width, classes, k = config["depth"], config["width"], config["classes"], config["up_kernel"]
    channels = [width * 2 ** level for level in range(depth)]
    shapes = []

    def conv(name, c_out, c_in, size):
        shapes.extend([(f"{name}.weight", (c_out, c_in, size, size)), (f"{name}.bias", (c_out,))])
    previous = config["in_channels"]
    for i, c in enumerate(channels):
        conv(f"encoder.{i}.conv1", c, previous, 3)
        conv(f"encoder.{i}.conv2", c, c, 3)
        previous = c
    levels = list(range(depth - 2, -1, -1))
    for j, level in enumerate(levels):
        c = channels[level]
        shapes.extend([(f"up.{j}.weight", (channels[level + 1], c, k, k)), (f"up.{j}.bias", (c,))])
    for j, level in enumerate(levels):
        conv(f"decoder.{j}.conv1", channels[level], 2 * channels[level], 3)
        conv(f"decoder.{j}.conv2", channels[level], channels[level], 3)
    if config["deep_supervision"]:
        for j, level in enumerate(lv for lv in levels if lv > 0):
            conv(f"aux_heads.{j}", classes, channels[level], 1)
    conv("head", classes, channels[0], 1)
    return shapes


def check_optimizer(r, settings):
    """The ``optimizer`` attribute: {} (no optimiser saved) or a kind with its known settings."""
    if not settings:
        return {}
    kind = settings.get("kind")
    if kind not in OPTIMIZER_KEYS:
        r.fail(f"optimizer kind is {shown(kind)}; expected sgd or adam")
    keys = set(settings) - {"kind"}
    if keys != OPTIMIZER_KEYS[kind]:
        odd = sorted(keys ^ OPTIMIZER_KEYS[kind])[0]
        r.fail(f"optimizer settings have an unknown or missing key {shown(odd)}")
    if not is_finite_number(settings["lr"], 0.0) or settings["lr"] <= 0:
        r.fail(f"optimizer lr is {shown(settings['lr'])}; expected a positive number")
    if not is_finite_number(settings["weight_decay"], 0.0):
        r.fail(f"optimizer weight_decay is {shown(settings['weight_decay'])}; expected a number >= 0")
    if kind == "sgd" and not (is_finite_number(settings["momentum"], 0.0) and settings["momentum"] < 1):
        r.fail(f"optimizer momentum is {shown(settings['momentum'])}; expected a number in [0, 1)")
    if kind == "adam":
        betas = settings["betas"]
        if not (isinstance(betas, list) and len(betas) == 2 and all(is_finite_number(b, 0.0) and b < 1 for b in betas)):
            r.fail(f"optimizer betas are {shown(betas)}; expected two numbers in [0, 1)")
        if not is_finite_number(settings["eps"], 0.0) or settings["eps"] <= 0:
            r.fail(f"optimizer eps is {shown(settings['eps'])}; expected a positive number")
    return settings


def optimizer_shapes(settings, shapes):
    """[(name under /optimizer, shape)] of the buffers an optimiser of ``settings`` keeps."""
    if not settings:
        return []
    buffers = ("velocity",) if settings["kind"] == "sgd" else ("m", "v")
    return [(f"{b}/{i}", shape) for b in buffers for i, (_, shape) in enumerate(shapes)]


def check_generator_state(r, state, name):
    """A NumPy PCG64 bit-generator state (what ``default_rng`` saves), checked field by field."""
    ok = (isinstance(state, dict) and state.get("bit_generator") == "PCG64"
          and set(state) == {"bit_generator", "state", "has_uint32", "uinteger"}
          and isinstance(state["state"], dict) and set(state["state"]) == {"state", "inc"}
          and all(is_count(v, 0, 2 ** 128 - 1) for v in state["state"].values())
          and is_count(state["has_uint32"], 0, 1) and is_count(state["uinteger"], 0, 2 ** 32 - 1))
    if not ok:
        r.fail(f"the saved state of random generator {shown(name)} is not a NumPy PCG64 state",
               "the training state in this checkpoint is damaged: start a new run")
    try:
        np.random.default_rng().bit_generator.state = state
    except (ValueError, TypeError, KeyError, OverflowError):
        r.fail(f"the saved state of random generator {shown(name)} cannot be restored",
               "the training state in this checkpoint is damaged: start a new run")


def check_rng(r, rng):
    """The ``rng`` attribute: each entry a NumPy PCG64 state (the dropout generator) or a dict of
    counts (the sampler's seed and position), checked before any generator is restored."""
    for name, state in rng.items():
        if isinstance(state, dict) and "bit_generator" in state:
            check_generator_state(r, state, name)
        elif not (isinstance(state, dict) and state and all(is_count(v, 0, 2 ** 64) for v in state.values())):
            r.fail(f"the saved state of {shown(name)} ({shown(state, 60)}) is neither a generator state nor counts",
                   "the training state in this checkpoint is damaged: start a new run")
    return rng


def check_extra(r, extra):
    """The ``extra`` attribute: the keys minunet reads are checked, other keys are ignored."""
    checks = {"elapsed_s": lambda v: is_finite_number(v, 0.0), "loss_sum": is_finite_number,
              "loss_count": is_count, "best_iteration": lambda v: v is None or is_count(v),
              "best_score": lambda v: v is None or is_finite_number(v), "best_rand_error": lambda v: v is None or is_finite_number(v),
              "config": lambda v: isinstance(v, dict) and v.get("pad", "mirror") in PADS}
    for key, ok in checks.items():
        if key in extra and not ok(extra[key]):
            r.fail(f"attribute 'extra' has an invalid {key}: {shown(extra[key], 60)}")
    return extra


def check_iteration(r, value):
    """The ``iteration`` attribute: a count."""
    if not is_count(value):
        r.fail(f"attribute 'iteration' is {shown(value)}; expected a whole number >= 0")
    return value


def check_version(r, value, newest):
    """The ``format_version`` attribute: 1 (no checksums) up to ``newest``."""
    if not is_count(value, 1):
        r.fail(f"attribute 'format_version' is {shown(value)}; expected a whole number")
    if value > newest:
        r.fail(f"checkpoint format {value} is newer than this minunet reads ({newest})", "upgrade minunet")
    return value
