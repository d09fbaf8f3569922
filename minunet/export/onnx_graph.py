"""The U-Net as an ONNX graph, built node by node with ``onnx.helper`` and ``onnx.numpy_helper`` (no torch).

The graph computes what :class:`minunet.model.unet.UNet` computes in eval mode, layer for layer:
valid 3x3 ``Conv`` + ``Relu`` pairs, 2x2/2 ``MaxPool``, stride-2 ``ConvTranspose`` (2x2 or 4x4
kernels), a constant ``Slice`` that center-crops each skip connection, ``Concat`` on channels, the
1x1 head, and ``Softmax`` over the class axis (or raw logits). Dropout is the identity at inference
and deep-supervision heads are training aids, so neither is in the graph.

Height and width are symbolic (``height``, ``width``): one graph serves every valid tile size.
Valid sizes form the progression ``min + n * step`` (:class:`TileRule`, derived from
:mod:`minunet.model.geometry`); the output is smaller by ``2 * offset`` and output pixel (i, j)
lies over input pixel (i + offset, j + offset). Because the network's size map has slope 1 between
poolings, every skip connection's crop is the same number of pixels for every valid size, so the
crops are constants. The rule, the offset and the input normalisation are written into the model's
``metadata_props`` (:func:`metadata`) for consumers that tile images.
"""
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minunet import __version__
from minunet.errors import UserError
from minunet.files.atomic import atomic_path
from minunet.model import geometry

OUTPUTS = ("probabilities", "logits")
MIN_OPSET = 17                       # Softmax over one axis (13+); 17 is what consumers widely run
INPUT = "input"
NORMALIZATION = ("pixel values scaled to [0, 1] as minunet does in training: uint8 / 255, uint16 / 65535, "
                 "float as is")
_TO_END = np.iinfo(np.int64).max     # Slice end meaning "to the end of the axis"


def require_onnx():
    """The onnx module, or a UserError naming the extra to install."""
    try:
        import onnx  # optional: the export extra
    except ImportError:
        raise UserError("minunet export needs the onnx package; install it with: "
                        "pip install 'minunet[export]'") from None
    return onnx


@dataclass(frozen=True)
class TileRule:
    """The valid input sizes ``minimum + n * step`` (n >= 0, rows and columns alike) and the output offset."""

    minimum: int
    step: int
    offset: int

    def sizes(self, count):
        """The ``count`` smallest valid input sizes."""
        return [self.minimum + n * self.step for n in range(count)]

    def output_size(self, size):
        """The output size for a valid input size."""
        return size - 2 * self.offset


def tile_rule(depth, up_kernel):
    """The TileRule of a U-Net, read off :mod:`minunet.model.geometry` (tests check it against every size)."""
    minimum = geometry.input_size_for(1, depth, up_kernel)
    following = geometry.nearest_valid(minimum + 1, depth, up_kernel)[1]
    return TileRule(minimum, following - minimum, geometry.trace(minimum, depth, up_kernel).margin)


def skip_crops(depth, up_kernel, size=None):
    """Pixels cropped from each side of each skip connection, deepest first, for a valid input size
    (default: the smallest; the crops are the same for every valid size)."""
    geo = geometry.check_tile(size or tile_rule(depth, up_kernel).minimum, depth, up_kernel)
    crops, below = [], geo.encoder_sizes[-1]
    for i, level in enumerate(range(depth - 2, -1, -1)):
        upsampled = 2 * (below - 1) + up_kernel
        crops.append((geo.encoder_sizes[level] - upsampled) // 2)
        below = geo.decoder_sizes[i]
    return crops


def metadata(model, output):
    """The model's ``metadata_props``: how to tile with it and what it expects and returns."""
    rule = tile_rule(model.depth, model.up_kernel)
    return {
        "valid_input_size": f"{rule.minimum} + {rule.step} * n for n >= 0, height and width alike "
                            f"(e.g. {', '.join(map(str, rule.sizes(4)))})",
        "input_size_min": str(rule.minimum),
        "input_size_step": str(rule.step),
        "output_offset": str(rule.offset),
        "output_size": f"input size - {2 * rule.offset}; output pixel (i, j) lies over input pixel "
                       f"(i + {rule.offset}, j + {rule.offset})",
        "input_normalization": NORMALIZATION,
        "output": output,
        "classes": str(model.classes),
        "minunet_config": json.dumps(model.config()),
        "minunet_version": __version__,
    }


class _GraphBuilder:
    """Collects nodes and initializers; every node has one output named after the node."""

    def __init__(self, onnx, names):
        self.onnx, self.names = onnx, names          # names: id(Parameter) -> dotted parameter name
        self.nodes, self.initializers = [], []

    def constant(self, name, array):
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def parameter(self, p):
        return self.constant(self.names[id(p)], p.numpy().astype(np.float32))

    def node(self, op, inputs, name, **attributes):
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [name], name=name, **attributes))
        return name

    def conv(self, layer, x, name):
        """A valid, stride-1 Conv (with its fused ReLU if the layer has one)."""
        k = int(layer.weight.shape[-1])
        y = self.node("Conv", [x, self.parameter(layer.weight), self.parameter(layer.bias)], name,
                      kernel_shape=[k, k])
        return self.node("Relu", [y], f"{name}.relu") if layer.relu else y

    def double_conv(self, block, x, name):
        return self.conv(block.conv2, self.conv(block.conv1, x, f"{name}.conv1"), f"{name}.conv2")

    def crop(self, x, pixels, name):
        """Center crop by a constant number of pixels on every side of height and width."""
        starts = self.constant(f"{name}.starts", np.array([pixels, pixels], np.int64))
        ends = self.constant(f"{name}.ends", np.array([-pixels or _TO_END] * 2, np.int64))
        axes = self.constant(f"{name}.axes", np.array([2, 3], np.int64))
        return self.node("Slice", [x, starts, ends, axes], name)


def build(model, output="probabilities", opset=MIN_OPSET):
    """The ONNX ModelProto of a UNet: input ``input`` (batch, C, height, width) float32, output
    ``probabilities`` or ``logits`` (batch, K, height - 2 offset, width - 2 offset).

    Args:
        model: a :class:`minunet.model.unet.UNet` (any depth, width, channels, classes, up-kernel).
        output: "probabilities" (Softmax over classes, what ``minunet predict`` computes) or "logits".
        opset: the ONNX opset to declare, from 17 to the newest the installed onnx knows.
    """
    onnx = require_onnx()
    helper = onnx.helper
    if output not in OUTPUTS:
        raise UserError(f"--output {output}: use one of {', '.join(OUTPUTS)}")
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= int(opset) <= newest:
        raise UserError(f"--opset {opset}: use an opset from {MIN_OPSET} to {newest} (the newest this onnx "
                        f"{onnx.__version__} knows)")
    g = _GraphBuilder(onnx, {id(p): name for name, p in model.named_parameters()})
    x, skips = INPUT, []
    for level, block in enumerate(model.encoder):
        x = g.double_conv(block, x, f"encoder.{level}")
        if level < model.depth - 1:
            skips.append(x)
            x = g.node("MaxPool", [x], f"pool.{level}", kernel_shape=[2, 2], strides=[2, 2])
    crops = skip_crops(model.depth, model.up_kernel)
    for i, (up, block) in enumerate(zip(model.up, model.decoder)):
        k = int(up.weight.shape[-1])
        x = g.node("ConvTranspose", [x, g.parameter(up.weight), g.parameter(up.bias)], f"up.{i}",
                   kernel_shape=[k, k], strides=[2, 2])
        skip = g.crop(skips[-1 - i], crops[i], f"crop.{i}")
        x = g.double_conv(block, g.node("Concat", [skip, x], f"concat.{i}", axis=1), f"decoder.{i}")
    x = g.conv(model.head, x, "head")
    if output == "probabilities":
        x = g.node("Softmax", [x], "softmax", axis=1)
    g.nodes[-1].output[0] = output

    tensor = onnx.TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info(INPUT, tensor, ["batch", model.in_channels, "height", "width"])]
    outputs = [helper.make_tensor_value_info(output, tensor, ["batch", model.classes, "out_height", "out_width"])]
    graph = helper.make_graph(g.nodes, "minunet_unet", inputs, outputs, g.initializers)
    opsets = [helper.make_opsetid("", int(opset))]
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="minunet", producer_version=__version__,
                              ir_version=helper.find_min_ir_version_for(opsets),
                              doc_string="U-Net (Ronneberger, Fischer and Brox, MICCAI 2015) exported by minunet; "
                                         "valid input sizes and the output offset are in metadata_props")
    helper.set_model_props(proto, metadata(model, output))
    return proto


def save(proto, path, force=True):
    """Write a ModelProto to ``path`` atomically (temporary file, then one rename)."""
    onnx = require_onnx()
    with atomic_path(path, force) as tmp:
        onnx.save_model(proto, str(tmp))
    return Path(path)
