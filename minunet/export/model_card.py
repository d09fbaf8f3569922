"""What a bioimage.io package says about its model in words: the README and minunet's settings.

Both are read off the network and the checkpoint, never guessed: the architecture and tiling rule
from the model, the training data and settings from the checkpoint's stored training configuration
(the data file's name only, not the folders it lay in), the best validation score if training
recorded one.
"""
from pathlib import Path

from minunet import __version__

TRAINING_KEYS = ("train_slices", "val_slices", "tile", "pad", "augment", "optimizer", "lr", "momentum",
                 "weight_decay", "batch", "dropout", "deep_supervision", "aux_weights", "seed")


def training_record(checkpoint):
    """The training data and settings the checkpoint records (empty entries left out)."""
    config = checkpoint.extra.get("config") or {}
    record = {}
    if config.get("data"):
        record["data_file"] = Path(str(config["data"])).name
    record.update({key: config[key] for key in TRAINING_KEYS if config.get(key) is not None})
    record["iterations"] = int(checkpoint.iteration)
    if checkpoint.extra.get("best_rand_error") is not None:
        record["best_validation_rand_error"] = float(checkpoint.extra["best_rand_error"])
        record["best_iteration"] = checkpoint.extra.get("best_iteration")
    return record


def settings(model, checkpoint, rule):
    """minunet's section of rdf.yaml's ``config``: architecture, tiling rule, training record."""
    return {
        "version": __version__,
        "architecture": model.config(),
        "parameters": model.num_parameters(),
        "tiling": {"input_size_min": rule.minimum, "input_size_step": rule.step, "output_offset": rule.offset},
        "training": training_record(checkpoint),
    }


def describe_training(record):
    """One paragraph on the training data and run, from a :func:`training_record`."""
    data = record.get("data_file", "a data file the checkpoint does not name")
    parts = [f"Trained with minunet for {record['iterations']} iterations on `{data}`"]
    if "train_slices" in record:
        parts.append(f"slices {record['train_slices']}")
    text = ", ".join(parts)
    if "val_slices" in record:
        text += f", validated on slices {record['val_slices']}"
    if "optimizer" in record:
        text += f"; optimiser {record['optimizer']}" + (f" (learning rate {record['lr']})" if "lr" in record else "")
    text += "."
    if "best_validation_rand_error" in record:
        text += (f" Best validation Rand error {record['best_validation_rand_error']:.4f} "
                 f"(iteration {record['best_iteration']}).")
    return text


def readme(model, checkpoint, rule, info, output):
    """The package's README.md: what the model is, how to tile with it, how it was trained and how to validate it."""
    config = model.config()
    sizes = ", ".join(str(s) for s in rule.sizes(4))
    record = training_record(checkpoint)
    kind = "Class probabilities (softmax)" if output == "probabilities" else "Class scores before the softmax"
    return f"""# {info['name']}

{info['description']}

A U-Net (Ronneberger, Fischer and Brox, MICCAI 2015) with valid (unpadded) convolutions, exported
by minunet {__version__} as ONNX: depth {config['depth']}, width {config['width']}, {config['in_channels']} input
channel(s), {config['classes']} classes, {config['up_kernel']}x{config['up_kernel']} up-convolutions,
{model.num_parameters():,} parameters.

## Input and output

- Input `input`: (batch, channel, y, x). Height and width must each be {rule.minimum} + {rule.step} * n
  ({sizes}, ...); the network refuses other sizes.
- Preprocessing: pixel values scaled to [0, 1] as in training (uint8 / 255, uint16 / 65535, float as is).
- Output `{output}`: (batch, class, y, x). {kind}, {rule.offset} pixels smaller than the input
  on every side: output pixel (i, j) lies over input pixel (i + {rule.offset}, j + {rule.offset}).
- To segment a large image, tile it with overlapping input tiles whose outputs abut (overlap-tile
  strategy), mirroring the image beyond its border as minunet does.

## Training

{describe_training(record)}

## Validation

Predict held-out labelled images and score them, for example with minunet:
`minunet predict -m MODEL.h5 IMAGES -o probs.tif` then `minunet evaluate probs.tif LABELS`
(pixel error, Rand and warping errors, IoU). The package's test output is minunet's own prediction
for its test input (the centre of the sample image), and this ONNX model reproduces it.
"""
