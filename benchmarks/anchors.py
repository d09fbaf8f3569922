"""The contenders of ``benchmarks/predict.py``: minunet and the libraries users predict with on a CPU.

Each contender is built from one minunet model (the same weights) and answers two calls on
float32 NumPy batches (N, C, S, S): ``logits(tiles)`` (the forward, for the one-tile case) and
``probabilities(tiles)`` (the forward and the softmax over classes, for overlap-tile prediction).

- ``minunet``: the CPU backend, float32.
- ``torch``, ``torch_cl``: the PyTorch twin (``minunet.benchmarks.torch_unet``), NCHW and
  channels_last, under ``inference_mode``.
- ``ort``: ONNX Runtime's CPU execution provider on the ONNX export of the model.
- ``ov_f32``: OpenVINO's CPU plugin with ``INFERENCE_PRECISION_HINT`` f32; ``ov_default``: its
  default precision (bf16 on CPUs with AVX512-BF16 or AMX; f32 elsewhere): not a float32 anchor.

Every library gets the same number of threads (the cores this process may use). onnxruntime,
openvino and torch are benchmark-only dependencies (``pip install -e ".[bench]"``); a contender
whose library is missing is reported as such, never silently dropped.
"""
import os

import numpy as np

FLOAT32_ANCHORS = ("torch", "torch_cl", "ort", "ov_f32")
ALL = ("minunet",) + FLOAT32_ANCHORS + ("ov_default",)
LABELS = {
    "minunet": "minunet, float32",
    "torch": "PyTorch, NCHW, inference_mode",
    "torch_cl": "PyTorch, channels_last",
    "ort": "ONNX Runtime, CPU provider",
    "ov_f32": "OpenVINO, CPU, f32",
    "ov_default": "OpenVINO, CPU, its default (bf16 here)",
}


def threads():
    """Threads every contender gets: ``MINUNET_BENCH_THREADS`` if set (``--threads``), else the
    cores this process may run on."""
    return int(os.environ.get("MINUNET_BENCH_THREADS", 0)) or len(os.sched_getaffinity(0))


def use_threads(n):
    """Give every contender ``n`` threads; before minunet's CPU backend loads (Numba reads
    NUMBA_NUM_THREADS once), and inherited by the processes of the alone mode."""
    os.environ["MINUNET_BENCH_THREADS"] = os.environ["NUMBA_NUM_THREADS"] = str(n)


def make_model(width, seed=0):
    """The benchmark's network: the paper's U-Net (depth 5, 1 channel, 2 classes), He-initialised."""
    from minunet.model.unet import UNet
    return UNet(width=width, seed=seed).eval()


def make_onnx(model, path, tile, softmax):
    """Write the ONNX file ONNX Runtime and OpenVINO run, for input tiles of ``tile`` pixels (any batch).

    From the PyTorch twin (``torch.onnx.export``), with the softmax in the graph when ``softmax``.
    minunet's own exporter (``minunet.export``) replaces this function's body when it lands; the
    contenders only need the file.
    """
    from minunet.benchmarks.timing import import_torch
    torch = import_torch("benchmarks/predict.py")
    from minunet.benchmarks.torch_unet import TorchUNet
    net = TorchUNet.from_minunet(model).eval()
    if softmax:
        net = torch.nn.Sequential(net, torch.nn.Softmax(dim=1))
    example = torch.zeros((1, model.in_channels, tile, tile))
    torch.onnx.export(net, example, str(path), input_names=["x"], output_names=["y"], opset_version=17,
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, dynamo=False)
    return path


class Minunet:
    """minunet's CPU backend, float32."""

    def __init__(self, model):
        from minunet.engine import functional as F
        from minunet.engine.autograd import Tensor, no_grad
        self.model, self.F, self.Tensor, self.no_grad = model, F, Tensor, no_grad

    def logits(self, tiles):
        with self.no_grad():
            return self.model(self.Tensor(tiles)).numpy()

    def probabilities(self, tiles):
        with self.no_grad():
            return self.F.softmax(self.model(self.Tensor(tiles))).numpy()


class Torch:
    """The PyTorch twin, NCHW or channels_last."""

    def __init__(self, model, channels_last=False):
        from minunet.benchmarks.timing import import_torch
        self.torch = torch = import_torch("benchmarks/predict.py")
        from minunet.benchmarks.torch_unet import TorchUNet
        torch.set_num_threads(threads())
        self.net = TorchUNet.from_minunet(model).eval()
        self.format = torch.channels_last if channels_last else torch.contiguous_format
        self.net = self.net.to(memory_format=self.format)

    def _run(self, tiles, softmax):
        torch = self.torch
        with torch.inference_mode():
            out = self.net(torch.from_numpy(tiles).contiguous(memory_format=self.format))
            if softmax:
                out = torch.softmax(out, dim=1)
            return out.contiguous().numpy()

    def logits(self, tiles):
        return self._run(tiles, False)

    def probabilities(self, tiles):
        return self._run(tiles, True)


class OnnxRuntime:
    """ONNX Runtime, CPU execution provider, all graph optimisations."""

    def __init__(self, logits_path, probs_path):
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads(), 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.sessions = [ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
                         for p in (logits_path, probs_path)]

    def logits(self, tiles):
        return self.sessions[0].run(None, {"x": tiles})[0]

    def probabilities(self, tiles):
        return self.sessions[1].run(None, {"x": tiles})[0]


class OpenVino:
    """OpenVINO's CPU plugin, compiled per input shape (static shapes are its fast path)."""

    def __init__(self, logits_path, probs_path, precision):
        import openvino as ov
        self.ov, self.core = ov, ov.Core()
        self.paths, self.compiled = (logits_path, probs_path), {}
        self.config = {"INFERENCE_NUM_THREADS": threads(), "PERFORMANCE_HINT": "LATENCY"}
        if precision == "f32":
            self.config["INFERENCE_PRECISION_HINT"] = "f32"

    def _run(self, tiles, which):
        key = (which, tiles.shape)
        if key not in self.compiled:
            net = self.core.read_model(str(self.paths[which]))
            net.reshape({net.inputs[0]: self.ov.PartialShape(list(tiles.shape))})
            self.compiled[key] = self.core.compile_model(net, "CPU", self.config)
        return self.compiled[key](tiles)[0]

    def logits(self, tiles):
        return self._run(tiles, 0)

    def probabilities(self, tiles):
        return self._run(tiles, 1)


def missing(name):
    """Why contender ``name`` cannot run here (its library is not installed), or None."""
    module = {"torch": "torch", "torch_cl": "torch", "ort": "onnxruntime", "ov_f32": "openvino",
              "ov_default": "openvino"}.get(name)
    if module is None:
        return None
    import importlib.util
    if importlib.util.find_spec(module) is None:
        return f"{module} is not installed (pip install -e '.[bench]')"
    return None


def build(name, model, onnx_paths):
    """Contender ``name`` for ``model``; ``onnx_paths`` = (logits file, probabilities file)."""
    if name == "minunet":
        return Minunet(model)
    if name in ("torch", "torch_cl"):
        return Torch(model, channels_last=name == "torch_cl")
    if name == "ort":
        return OnnxRuntime(*onnx_paths)
    if name in ("ov_f32", "ov_default"):
        return OpenVino(*onnx_paths, precision="f32" if name == "ov_f32" else "default")
    raise ValueError(f"unknown contender {name!r}; one of {', '.join(ALL)}")


def relative_difference(output, reference):
    """max |output - reference| / max |reference|: how far a contender's result is from minunet's."""
    output, reference = np.asarray(output, np.float64), np.asarray(reference, np.float64)
    return float(np.abs(output - reference).max() / max(np.abs(reference).max(), 1e-30))
