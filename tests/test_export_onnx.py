"""The ONNX graph of every kind of U-Net computes minunet's forward pass, on every valid size and no other.

Relative error here is max |onnx - minunet| / max |minunet| over the whole output.
"""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx.reference import ReferenceEvaluator  # noqa: E402

from minunet.engine.autograd import Tensor, no_grad  # noqa: E402
from minunet.errors import UserError  # noqa: E402
from minunet.export import onnx_graph  # noqa: E402
from minunet.model import geometry  # noqa: E402
from minunet.model.unet import UNet  # noqa: E402
from tests.backends import fast_device  # noqa: E402

DEVICE = fast_device()
RTOL_ORT = 1e-5
RTOL_REFERENCE = 1e-5
RTOL_FLOAT32_NETWORK = 3e-5     # minunet's float32 forward of the paper's network against float64

# every kind minunet trains: (classes, in_channels, up_kernel, deep_supervision)
KINDS = [(classes, channels, up, deep) for classes in (2, 7) for channels in (1, 3) for up in (2, 4)
         for deep in (False, True)]


def with_random_biases(model, rng):
    """The model with biases drawn at random: a fresh UNet's are zero, which would leave the graph's
    bias wiring untested and let a narrow network's outputs vanish behind dead ReLUs."""
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            p.data[...] = rng.normal(0.0, 0.1, p.shape).astype(np.float32)
    return model.eval()


def minunet_logits(model, x):
    """The model's class scores (deep-supervision outputs dropped) for a float32 batch."""
    with no_grad():
        scores = model(Tensor(x, device=model.device))
    return (scores[0] if isinstance(scores, tuple) else scores).numpy()


def softmax(scores):
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def session(proto):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.log_severity_level = 4          # invalid sizes are expected to fail quietly
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def relative_error(got, expected):
    assert got.shape == expected.shape and np.abs(expected).max() > 0
    return float(np.abs(got.astype(np.float64) - expected).max() / np.abs(expected).max())


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("up_kernel", [2, 4])
def test_tile_rule_is_the_geometry_helpers_rule(depth, up_kernel):
    """min + n * step is exactly the set of sizes geometry calls valid, with a constant offset and crops."""
    rule = onnx_graph.tile_rule(depth, up_kernel)
    crops = onnx_graph.skip_crops(depth, up_kernel)
    for size in range(1, rule.minimum + 8 * rule.step):
        declared = size >= rule.minimum and (size - rule.minimum) % rule.step == 0
        assert geometry.is_valid(size, depth, up_kernel) == declared, size
        if declared:
            geo = geometry.trace(size, depth, up_kernel)
            assert geo.margin == rule.offset and geo.output_size == rule.output_size(size)
            assert onnx_graph.skip_crops(depth, up_kernel, size) == crops


@pytest.mark.parametrize("width", [2, 4])
@pytest.mark.parametrize("classes,in_channels,up_kernel,deep", KINDS)
def test_graph_equals_minunet_forward(width, classes, in_channels, up_kernel, deep, rng):
    model = with_random_biases(UNet(depth=3, width=width, in_channels=in_channels, classes=classes,
                                    up_kernel=up_kernel, deep_supervision=deep, device=DEVICE,
                                    seed=int(rng.integers(1 << 30))), rng)
    logits_graph = onnx_graph.build(model, "logits")
    probs_graph = onnx_graph.build(model, "probabilities")
    for proto in (logits_graph, probs_graph):
        onnx.checker.check_model(proto, full_check=True)
    rule = onnx_graph.tile_rule(model.depth, model.up_kernel)
    logits_session, probs_session = session(logits_graph), session(probs_graph)
    reference = ReferenceEvaluator(logits_graph)
    sizes = [(rule.minimum, rule.minimum), (rule.minimum + rule.step, rule.minimum + 3 * rule.step),
             (rule.minimum + 2 * rule.step, rule.minimum)]
    for i, (h, w) in enumerate(sizes):
        x = rng.random((2, in_channels, h, w), dtype=np.float32)
        expected = minunet_logits(model, x)
        assert expected.shape == (2, classes, rule.output_size(h), rule.output_size(w))
        assert relative_error(logits_session.run(None, {"input": x})[0], expected) <= RTOL_ORT
        assert relative_error(probs_session.run(None, {"input": x})[0], softmax(expected)) <= RTOL_ORT
        if i < 2:                                 # the pure-Python evaluator is slow; two sizes suffice
            assert relative_error(reference.run(None, {"input": x})[0], expected) <= RTOL_REFERENCE


@pytest.mark.parametrize("depth,up_kernel", [(2, 4), (4, 2)])
def test_graph_runs_on_valid_sizes_only(depth, up_kernel, rng):
    """What the metadata declares is what the graph accepts: every size from min - 4 to min + 3 step."""
    model = UNet(depth=depth, width=2, up_kernel=up_kernel, device=DEVICE, seed=1).eval()
    proto = onnx_graph.build(model)
    meta = {p.key: p.value for p in proto.metadata_props}
    minimum, step, offset = int(meta["input_size_min"]), int(meta["input_size_step"]), int(meta["output_offset"])
    assert meta["output"] == "probabilities" and meta["classes"] == "2"
    sess = session(proto)
    for size in range(max(1, minimum - 4), minimum + 3 * step + 1):
        valid = geometry.is_valid(size, depth, up_kernel)
        assert valid == (size >= minimum and (size - minimum) % step == 0)
        x = rng.random((1, 1, size, size), dtype=np.float32)
        if valid:
            assert sess.run(None, {"input": x})[0].shape == (1, 2, size - 2 * offset, size - 2 * offset)
        else:
            with pytest.raises(Exception):
                sess.run(None, {"input": x})


def test_deep_supervision_heads_are_left_out():
    model = UNet(depth=4, width=2, classes=7, up_kernel=4, deep_supervision=True, device=DEVICE)
    proto = onnx_graph.build(model)
    names = {init.name for init in proto.graph.initializer if not init.name.startswith("crop.")}
    expected = {name for name, _ in model.named_parameters() if not name.startswith("aux_heads")}
    assert names == expected and len(model.aux_heads) == 2
    assert [o.name for o in proto.graph.output] == ["probabilities"]
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 1, "height", "width"]


def test_opset_choice():
    model = UNet(depth=2, width=2, device=DEVICE)
    newest = onnx.defs.onnx_opset_version()
    proto = onnx_graph.build(model, opset=18)
    assert proto.opset_import[0].version == 18
    onnx.checker.check_model(proto)
    with pytest.raises(UserError, match="--opset 16"):
        onnx_graph.build(model, opset=16)
    with pytest.raises(UserError, match=f"--opset {newest + 1}"):
        onnx_graph.build(model, opset=newest + 1)
    with pytest.raises(UserError, match="--output"):
        onnx_graph.build(model, output="argmax")


@pytest.mark.slow
def test_paper_network_on_a_572_tile(rng):
    """The paper's network (depth 5, width 64, 31 M parameters): onnxruntime computes on 572 x 572
    what the float64 reference computes with the same weights. The reference, not minunet's float32
    forward, is the yardstick: over 23 layers F(4x4, 3x3) Winograd leaves minunet's logits about
    1e-5 of their scale from float64 (9.4-9.5e-6 measured), onnxruntime's direct convolutions 1.6e-6."""
    model = with_random_biases(UNet(device=DEVICE, seed=int(rng.integers(1 << 30))), rng)
    proto = onnx_graph.build(model, "logits")
    onnx.checker.check_model(proto)
    x = rng.random((1, 1, 572, 572), dtype=np.float32)
    reference = UNet(device="reference", dtype=np.float64)
    for (_, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        q.data[...] = p.data
    expected = minunet_logits(reference.eval(), x.astype(np.float64))
    got = session(proto).run(None, {"input": x})[0]
    assert got.shape == (1, 2, 388, 388)
    assert relative_error(got, expected) <= RTOL_ORT
    assert relative_error(minunet_logits(model, x), expected) <= RTOL_FLOAT32_NETWORK
