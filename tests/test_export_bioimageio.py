"""The bioimage.io package: valid for bioimageio.spec, passes bioimageio.core's model test with
onnxruntime, declares the sizes minunet's geometry allows, and holds minunet's own test output."""
import hashlib
import io
import zipfile

import numpy as np
import pytest

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
yaml = pytest.importorskip("yaml")

from minunet.data.datafile import normalize  # noqa: E402
from minunet.engine.autograd import Tensor, no_grad  # noqa: E402
from minunet.export import bioimageio, onnx_graph  # noqa: E402
from minunet.model import geometry  # noqa: E402
from minunet.model.checkpoint import load_model, save_checkpoint  # noqa: E402
from minunet.model.unet import UNet  # noqa: E402
from tests.backends import fast_device  # noqa: E402
from tests.test_export_onnx import with_random_biases  # noqa: E402

DEVICE = fast_device()
INFO = dict(name="minunet test U-Net", description="A U-Net exported by the test suite.",
            authors=["Test Author"], maintainers=["test-user"], license="MIT")

# (network, sample dtype, output): the EM kind and the dental kind with several input channels
VARIANTS = [
    (dict(depth=3, width=2), np.uint8, "probabilities"),
    (dict(depth=3, width=4, classes=7, in_channels=2, up_kernel=4, deep_supervision=True), np.uint16, "logits"),
]


def package(tmp_path, rng, network, dtype, output, size=(70, 90), info=INFO):
    """Build, write and reopen a package: (zip path, {name: bytes}, rdf dict, model)."""
    path = tmp_path / "model.h5"
    save_checkpoint(path, with_random_biases(UNet(device=DEVICE, seed=int(rng.integers(1 << 30)), **network), rng))
    model, checkpoint = load_model(path, DEVICE)
    channels = model.in_channels
    sample = rng.integers(0, np.iinfo(dtype).max, (channels,) + size, dtype=dtype, endpoint=True)
    files = bioimageio.build_package(model, checkpoint, sample, info, output)
    out = bioimageio.write_zip(tmp_path / "package.zip", files)
    with zipfile.ZipFile(out) as archive:
        stored = {name: archive.read(name) for name in archive.namelist()}
    return out, stored, yaml.safe_load(stored["rdf.yaml"]), model


@pytest.mark.parametrize("network,dtype,output", VARIANTS)
def test_package_declares_geometry_and_holds_minunets_output(tmp_path, rng, network, dtype, output):
    _, files, rdf, model = package(tmp_path, rng, network, dtype, output)
    assert set(files) == {"rdf.yaml", "model.onnx", "test_input.npy", "test_output.npy", "sample_input.tif",
                          "sample_output.tif", "cover.png", "README.md"}
    (tensor_in,), (tensor_out,) = rdf["inputs"], rdf["outputs"]
    y_in, y_out = tensor_in["axes"][2], tensor_out["axes"][2]
    assert [a["type"] for a in tensor_in["axes"]] == ["batch", "channel", "space", "space"]
    # consumers tile with min + n * step: every such size is valid for minunet, and the output size is right
    for n in range(6):
        size = y_in["size"]["min"] + n * y_in["size"]["step"]
        assert geometry.is_valid(size, model.depth, model.up_kernel)
        assert size + y_out["size"]["offset"] == geometry.output_size(size, model.depth, model.up_kernel)
    assert not geometry.is_valid(y_in["size"]["min"] - 1, model.depth, model.up_kernel)
    assert y_in["size"]["step"] == 2 ** (model.depth - 1)
    assert y_out["size"] == {"tensor_id": "input", "axis_id": "y", "offset": -2 * geometry.trace(
        y_in["size"]["min"], model.depth, model.up_kernel).margin}
    assert len(tensor_out["axes"][1]["channel_names"]) == model.classes
    # hashes
    for entry in (tensor_in["test_tensor"], tensor_out["test_tensor"], rdf["weights"]["onnx"]):
        assert hashlib.sha256(files[entry["source"]]).hexdigest() == entry["sha256"]
    # the test output is minunet's own forward pass on the normalised test input ...
    raw = np.load(io.BytesIO(files["test_input.npy"]), allow_pickle=False)
    expected = np.load(io.BytesIO(files["test_output.npy"]), allow_pickle=False)
    assert raw.dtype == dtype and raw.shape[:2] == (1, model.in_channels) and tensor_in["data"]["type"] == raw.dtype.name
    with no_grad():
        scores = model(Tensor(normalize(raw), device=DEVICE))
    scores = (scores[0] if isinstance(scores, tuple) else scores).numpy()
    want = scores if output == "logits" else np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(expected, want, rtol=1e-5, atol=1e-6)
    # ... and the ONNX weights reproduce it after the declared preprocessing
    gain = next((step["kwargs"]["gain"] for step in tensor_in["preprocessing"] if step["id"] == "scale_linear"))
    x = (raw.astype(np.float32) * np.float32(gain)).astype(np.float32)
    got = ort.InferenceSession(files["model.onnx"], providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()
    # the cover: 2:1, under 500 kB
    from PIL import Image
    cover = Image.open(io.BytesIO(files["cover.png"]))
    assert cover.width == 2 * cover.height and len(files["cover.png"]) < 500_000


@pytest.mark.parametrize("network,dtype,output", VARIANTS)
def test_bioimageio_spec_and_core_accept_the_package(tmp_path, rng, network, dtype, output):
    spec = pytest.importorskip("bioimageio.spec")
    core = pytest.importorskip("bioimageio.core")
    offline = {key: value for key, value in INFO.items() if key != "maintainers"}   # a maintainer is looked up on GitHub
    path, _, _, _ = package(tmp_path, rng, network, dtype, output, info=offline)
    description = spec.load_description(path)
    summary = description.validation_summary
    assert summary.status in ("valid-format", "passed"), summary.format()
    tested = core.test_model(path, weight_format="onnx")
    assert tested.status == "passed", tested.format()
    # the only warning left is the zoo's wish for a maintainer
    warnings = [w.msg for detail in tested.details for w in detail.warnings if w.severity >= 30]
    assert all("maintainers" in w for w in warnings), warnings


def test_sample_problems_are_user_errors(rng):
    from minunet.errors import UserError
    rule = onnx_graph.tile_rule(3, 2)
    with pytest.raises(UserError, match="smallest valid tile is 44x44"):
        bioimageio.test_tile(rule, 40, 100)
    assert bioimageio.test_tile(rule, 70, 1000) == 68
    assert bioimageio.test_tile(onnx_graph.tile_rule(5, 2), 2000, 2000) == 572
    with pytest.raises(UserError, match="2 input channels"):
        bioimageio.test_input(rng.integers(0, 255, (3, 50, 50), dtype=np.uint8), 2, 44)
    with pytest.raises(UserError, match="float64"):
        bioimageio.test_input(rng.random((1, 50, 50)), 1, 44)


@pytest.mark.parametrize("name", ["U-Ne", "bad/name", "Zellkern-Färbung U-Net", "x" * 65])
def test_names_the_format_refuses(name):
    from minunet.errors import UserError
    with pytest.raises(UserError, match="--name"):
        bioimageio.check_info(dict(INFO, name=name))
    with pytest.raises(UserError, match="--description"):
        bioimageio.check_info(dict(INFO, description="x" * 513))
    for missing in ({"authors": []}, {"license": None}):
        with pytest.raises(UserError, match="needs --author NAME and --license"):
            bioimageio.check_info(dict(INFO, **missing))


def test_training_record_names_the_data_file_not_its_folders(tmp_path, rng):
    path = tmp_path / "model.h5"
    config = {"data": "/home/someone/private/isbi.h5", "train_slices": "0-23", "val_slices": "24-29",
              "optimizer": "adam", "lr": 3e-4}
    save_checkpoint(path, UNet(depth=3, width=2, device=DEVICE), iteration=500,
                    extra={"config": config, "best_rand_error": 0.05, "best_iteration": 400})
    model, checkpoint = load_model(path, DEVICE)
    files = bioimageio.build_package(model, checkpoint, rng.integers(0, 256, (1, 50, 50), dtype=np.uint8), INFO)
    training = yaml.safe_load(files["rdf.yaml"])["config"]["minunet"]["training"]
    assert training["data_file"] == "isbi.h5" and training["iterations"] == 500
    assert training["best_validation_rand_error"] == 0.05 and training["best_iteration"] == 400
    readme = files["README.md"].decode()
    assert "500 iterations on `isbi.h5`, slices 0-23, validated on slices 24-29" in readme
    assert "0.0500 (iteration 400)" in readme
    assert all(b"/home/someone" not in data for data in files.values())
