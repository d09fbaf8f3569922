"""A bioimage.io model package (model description format 0.5) of a minunet U-Net.

``minunet export MODEL.h5 --bioimageio --sample IMAGE -o model.zip`` writes one zip that Fiji
(deepImageJ), ilastik, Icy and ``bioimageio.core`` open. It holds:

- ``rdf.yaml``, the model description: the input tensor (batch, channel, y, x; y and x of any
  valid size ``min + n * step``, :func:`minunet.export.onnx_graph.tile_rule`), the output tensor
  (each spatial size is the input's minus twice the network's halo, stated as the size reference's
  offset, which is how the format declares a halo the model crops itself), the preprocessing minunet
  applies to images of the sample's data type (:func:`minunet.data.datafile.normalize`: uint8 / 255,
  uint16 / 65535, float as is), the ONNX weights with their SHA-256, the test tensors, the cover,
  the documentation, the license, the citation of the U-Net paper and minunet's settings;
- ``model.onnx`` (:func:`minunet.export.onnx_graph.build`);
- ``test_input.npy``, the centre of the sample image at the largest valid tile that fits (at most
  the paper's 572), and ``test_output.npy``, what minunet's own forward pass computes for it;
- ``cover.png``: the input (cropped to the output's field) beside the prediction, 2:1;
- ``README.md`` (:mod:`minunet.export.model_card`): the model, its tiling rule, its training
  data and settings as the checkpoint records them, and how to validate it.

Only facts go in: what the checkpoint, the network and the sample determine, and what the user
states (name, authors, license). Optional fields minunet cannot know (a zoo id, the training
data's zoo record, a DOI of the weights) are left out.
"""
import hashlib
import io
import re
import zipfile
from datetime import datetime, timezone

import numpy as np
import tifffile
from PIL import Image

from minunet.data.datafile import normalize
from minunet.engine import functional as F
from minunet.engine.autograd import Tensor, no_grad
from minunet.errors import UserError
from minunet.export import model_card, onnx_graph
from minunet.files.atomic import atomic_path
from minunet.kernels import get_backend

# 0.5.4 rather than the newest: bioimageio.spec releases from 0.5.3.6 on read it (checked by hand), and
# every field used here exists in it; it requires authors and a license, which the newest makes optional.
FORMAT_VERSION = "0.5.4"
TEST_TILE_MAX = 572                 # the paper's tile: a test tensor of a size every consumer handles
COVER_MIN_HEIGHT = 256              # small outputs are enlarged (nearest neighbour) for the cover
NAME = re.compile(r"^[A-Za-z0-9_+\-() ]{5,64}$")    # the format's alphabet and lengths for a model name
SPDX_ID = re.compile(r"^[A-Za-z0-9.+\-]+$")
DESCRIPTION_MAX = 512
UNET_CITATION = {
    "text": "Ronneberger, O., Fischer, P. and Brox, T. U-Net: Convolutional Networks for Biomedical Image "
            "Segmentation. MICCAI 2015, LNCS 9351, 234-241 (arXiv:1505.04597)",
    "doi": "10.1007/978-3-319-24574-4_28",
}


def check_people(authors, license_):
    """UserError unless there is an author and an SPDX license id (the format requires both)."""
    if not authors or not license_:
        raise UserError("--bioimageio needs --author NAME and --license SPDX_ID (model format 0.5.4 requires "
                        "both), e.g. --author 'Jane Doe' --license CC-BY-4.0")
    if not SPDX_ID.match(license_):
        raise UserError(f"--license {license_!r}: give an SPDX license id such as CC-BY-4.0 or MIT")


def check_info(info):
    """UserError for a name, description, author list or license the format refuses or requires."""
    check_people(info.get("authors"), info.get("license"))
    if not NAME.match(info["name"]):
        raise UserError(f"--name {info['name']!r}: use 5 to 64 ASCII letters, digits, spaces, '_', '+', '-' "
                        "and parentheses")
    if len(info["description"]) > DESCRIPTION_MAX:
        raise UserError(f"--description: {len(info['description'])} characters; bioimage.io allows {DESCRIPTION_MAX}")


def test_tile(rule, height, width, sample="--sample"):
    """The largest valid tile that fits the sample (at most TEST_TILE_MAX); UserError if none fits."""
    fits = min(height, width, TEST_TILE_MAX)
    if fits < rule.minimum:
        raise UserError(f"{sample}: the image is {height}x{width} but the network's smallest valid tile is "
                        f"{rule.minimum}x{rule.minimum}; pass a larger image")
    return rule.minimum + (fits - rule.minimum) // rule.step * rule.step


def test_input(raw, in_channels, tile, sample="--sample"):
    """The sample's centre tile as a (1, C, tile, tile) array in the sample's own data type.

    ``raw`` is (N, H, W) as :func:`minunet.data.imageio.read_stack` returns it: one slice for a
    one-channel model, one slice per channel otherwise.
    """
    raw = np.asarray(raw)
    if raw.dtype.kind not in "uif" or raw.dtype.itemsize > 4:
        raise UserError(f"{sample}: pixels of type {raw.dtype}; save the image as uint8, uint16 or float32")
    planes = raw[:1] if in_channels == 1 else raw
    if planes.shape[0] != in_channels:
        raise UserError(f"{sample}: {raw.shape[0]} slice(s) but the model has {in_channels} input channels; "
                        f"pass a TIFF with one page per channel")
    _, h, w = planes.shape
    top, left = (h - tile) // 2, (w - tile) // 2
    return np.ascontiguousarray(planes[None, :, top:top + tile, left:left + tile])


def preprocessing(dtype):
    """The bioimage.io preprocessing that equals :func:`minunet.data.datafile.normalize` for ``dtype``."""
    as_float = {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}
    if np.dtype(dtype).kind not in "ui":
        return [as_float]
    # the trailing ensure_dtype keeps consumers from casting back to the input's integer type
    return [as_float, {"id": "scale_linear", "kwargs": {"gain": 1.0 / np.iinfo(dtype).max, "offset": 0.0}}, as_float]


def forward(model, x, output="probabilities"):
    """minunet's own output (N, K, h, w) float32 for a normalised input batch (N, C, H, W)."""
    model.eval()
    with no_grad():
        scores = model(Tensor(get_backend(model.device).asarray(np.ascontiguousarray(x, np.float32)),
                              device=model.device))
        scores = scores[0] if isinstance(scores, tuple) else scores
        return (F.softmax(scores) if output == "probabilities" else scores).numpy()


def cover_png(image, prediction, offset, output):
    """PNG bytes: the first input channel over the output's field beside the prediction (2:1).

    Two classes show class 1's probability in gray; more show the class map in colour.
    """
    field = image[0, 0, offset:image.shape[2] - offset, offset:image.shape[3] - offset].astype(np.float64)
    span = field.max() - field.min()
    left = np.uint8(np.round(255 * (field - field.min()) / (span if span > 0 else 1)))
    scores = prediction[0].astype(np.float64)
    if output == "logits":
        scores = np.exp(scores - scores.max(axis=0))
        scores /= scores.sum(axis=0)
    if scores.shape[0] == 2:
        right = np.uint8(np.round(255 * scores[1]))
        pair = np.concatenate([left, right], axis=1)
    else:
        from matplotlib import colormaps  # heavy, and only for more than two classes
        palette = np.uint8(255 * colormaps["tab20"](np.arange(20))[:, :3])
        right = palette[scores.argmax(axis=0) % 20]
        pair = np.concatenate([np.repeat(left[..., None], 3, axis=2), right], axis=1)
    zoom = -(-COVER_MIN_HEIGHT // pair.shape[0])
    pair = np.repeat(np.repeat(pair, zoom, axis=0), zoom, axis=1)
    buffer = io.BytesIO()
    Image.fromarray(pair).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def npy_bytes(array):
    """An array in NumPy's .npy format (no pickle)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def tiff_bytes(array):
    """An array as a TIFF with its full shape (the format's sample tensors are images, not .npy)."""
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, photometric="minisblack", metadata={"axes": "QCYX"})
    return buffer.getvalue()


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def _file(files, name):
    return {"source": name, "sha256": sha256(files[name])}


def _space_axes(size_of):
    return [{"type": "space", "id": axis, "size": size_of(axis)} for axis in ("y", "x")]


def description(model, checkpoint, rule, info, files, dtype, output, opset):
    """The rdf.yaml content as a dict (``files``: name -> bytes of the files it names)."""
    in_names = [f"channel{c}" for c in range(model.in_channels)]
    class_names = [f"class{k}" for k in range(model.classes)]
    output_data = {"type": "float32", "range": [0.0, 1.0]} if output == "probabilities" else {"type": "float32"}
    rdf = {
        "format_version": FORMAT_VERSION,
        "type": "model",
        "name": info["name"],
        "description": info["description"],
        "authors": [{"name": author} for author in info["authors"]],
        "maintainers": [{"github_user": user} for user in info.get("maintainers", ())],
        "cite": [UNET_CITATION],
        "license": info["license"],
        "documentation": "README.md",
        "covers": ["cover.png"],
        "tags": ["unet", "semantic-segmentation", "2d", "onnx", "minunet"],
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": [{
            "id": onnx_graph.INPUT,
            "description": f"{model.in_channels}-channel image; height and width {rule.minimum} + {rule.step} * n",
            "axes": [{"type": "batch"}, {"type": "channel", "channel_names": in_names}]
            + _space_axes(lambda axis: {"min": rule.minimum, "step": rule.step}),
            "test_tensor": _file(files, "test_input.npy"),
            "sample_tensor": _file(files, "sample_input.tif"),
            "data": {"type": np.dtype(dtype).name},
            "preprocessing": preprocessing(dtype),
        }],
        "outputs": [{
            "id": output,
            "description": f"class {output} over the input's centre (the input minus {rule.offset} pixels "
                           "on each side: valid convolutions)",
            "axes": [{"type": "batch"}, {"type": "channel", "channel_names": class_names}]
            + _space_axes(lambda axis: {"tensor_id": onnx_graph.INPUT, "axis_id": axis, "offset": -2 * rule.offset}),
            "test_tensor": _file(files, "test_output.npy"),
            "sample_tensor": _file(files, "sample_output.tif"),
            "data": output_data,
        }],
        "weights": {"onnx": {**_file(files, "model.onnx"), "opset_version": int(opset)}},
        "config": {"minunet": model_card.settings(model, checkpoint, rule)},
    }
    return {key: value for key, value in rdf.items() if value not in (None, [])}


def build_package(model, checkpoint, sample_raw, info, output="probabilities", opset=onnx_graph.MIN_OPSET,
                  sample="--sample"):
    """The package's files as {name: bytes}.

    Args:
        model, checkpoint: as :func:`minunet.model.checkpoint.load_model` returns them.
        sample_raw: (N, H, W) pixels in their stored type, an image like those the model segments.
        info: dict with name, description, authors (list of names), license (SPDX id).
        output, opset: as :func:`minunet.export.onnx_graph.build`.
        sample: how errors about the sample name it.
    """
    import yaml  # optional: the export extra

    check_info(info)
    rule = onnx_graph.tile_rule(model.depth, model.up_kernel)
    tile = test_tile(rule, *np.shape(sample_raw)[-2:], sample=sample)
    raw = test_input(sample_raw, model.in_channels, tile, sample=sample)
    prediction = forward(model, normalize(raw), output)
    files = {
        "model.onnx": onnx_graph.build(model, output, opset).SerializeToString(),
        "test_input.npy": npy_bytes(raw),
        "test_output.npy": npy_bytes(prediction.astype(np.float32)),
        "sample_input.tif": tiff_bytes(raw),
        "sample_output.tif": tiff_bytes(prediction.astype(np.float32)),
        "cover.png": cover_png(raw, prediction, rule.offset, output),
        "README.md": model_card.readme(model, checkpoint, rule, info, output).encode(),
    }
    rdf = description(model, checkpoint, rule, info, files, raw.dtype, output, opset)
    files["rdf.yaml"] = yaml.safe_dump(rdf, sort_keys=False, allow_unicode=True).encode()
    return files


def write_zip(path, files, force=True):
    """Write the package atomically (temporary file, then one rename); rdf.yaml first."""
    with atomic_path(path, force) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name in sorted(files, key=lambda n: n != "rdf.yaml"):
                archive.writestr(name, files[name])
    return path
