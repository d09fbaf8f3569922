"""``minunet export``: ONNX files and bioimage.io packages from checkpoints, one-line errors, no debris."""
import zipfile

import h5py
import numpy as np
import pytest
import tifffile

onnx = pytest.importorskip("onnx")
pytest.importorskip("yaml")

from minunet.model import checkpoint as checkpoint_module  # noqa: E402
from minunet.model.checkpoint import save_checkpoint  # noqa: E402
from minunet.model.unet import UNet  # noqa: E402
from tests.backends import cpu_ready  # noqa: E402
from tests.cli_runner import assert_one_line_error, run  # noqa: E402

pytestmark = pytest.mark.skipif(not cpu_ready(), reason="the Numba CPU backend (--device cpu) is not ready")


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.h5"
    save_checkpoint(path, UNet(depth=3, width=2, classes=3, deep_supervision=True, device="cpu", seed=2))
    return path


@pytest.fixture
def sample_png(tmp_path, rng):
    from PIL import Image
    path = tmp_path / "sample.png"
    Image.fromarray(rng.integers(0, 256, (60, 80), dtype=np.uint8)).save(path)
    return path


def test_onnx_export(tmp_path, model_file, capsys):
    out = tmp_path / "unet.onnx"
    code, _, err = run(["export", model_file, "-o", out, "--output", "logits", "--opset", "18"], capsys)
    assert code == 0, err
    proto = onnx.load(out)
    onnx.checker.check_model(proto)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert (meta["input_size_min"], meta["input_size_step"], meta["output_offset"]) == ("44", "4", "20")
    assert meta["output"] == "logits" and proto.opset_import[0].version == 18
    assert "valid input sizes 44 + 4 * n" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.h5", "unet.onnx"]


def test_bioimageio_export(tmp_path, model_file, sample_png, capsys):
    out = tmp_path / "unet.zip"
    code, _, err = run(["export", model_file, "--bioimageio", "--sample", sample_png, "-o", out,
                        "--author", "Ada Lovelace", "--license", "CC-BY-4.0"], capsys)
    assert code == 0, err
    with zipfile.ZipFile(out) as archive:
        assert archive.namelist()[0] == "rdf.yaml"
        rdf = archive.read("rdf.yaml").decode()
    assert "Ada Lovelace" in rdf and "CC-BY-4.0" in rdf and "U-Net depth 3 width 2 3 classes (minunet)" in rdf
    assert "note: the bioimage.io zoo asks for a maintainer before upload: add --maintainer GITHUB_USER" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.h5", "sample.png", "unet.zip"]


def test_export_loads_through_the_checkpoint_loader(tmp_path, model_file, monkeypatch, capsys):
    """The model is read by minunet.model.checkpoint.load_model (the loader predict uses), nothing else."""
    calls = []
    original = checkpoint_module.load_model
    monkeypatch.setattr(checkpoint_module, "load_model",
                        lambda path, device="cpu": calls.append(str(path)) or original(path, device))
    code, _, err = run(["export", model_file, "-o", tmp_path / "unet.onnx"], capsys)
    assert code == 0, err
    assert calls == [str(model_file)]


def test_a_strangers_file_is_refused_as_predict_refuses_it(tmp_path, capsys):
    bogus = tmp_path / "stranger.h5"
    with h5py.File(bogus, "w") as f:
        f.attrs["format"] = "something else"
    image = tmp_path / "image.tif"
    tifffile.imwrite(image, np.zeros((50, 50), np.uint8))
    _, _, predict_err = run(["predict", "-m", bogus, image, "-o", tmp_path / "p.tif", "--device", "cpu"], capsys)
    code, _, export_err = run(["export", bogus, "-o", tmp_path / "unet.onnx"], capsys)
    assert_one_line_error(code, export_err, "stranger.h5", "not a minunet checkpoint")
    assert export_err == predict_err
    assert not (tmp_path / "unet.onnx").exists()


@pytest.mark.parametrize("args,fragments", [
    (["-o", "{tmp}/unet.zip"], ["-o", "NAME.onnx"]),
    (["--bioimageio", "-o", "{tmp}/unet.onnx"], ["-o", "NAME.zip"]),
    (["-o", "{tmp}/missing/unet.onnx"], ["does not exist"]),
    (["-o", "{tmp}/model.h5"], ["NAME.onnx"]),
    (["-o", "{tmp}/unet.onnx", "--sample", "{tmp}/sample.png"], ["--sample", "--bioimageio"]),
    (["-o", "{tmp}/unet.onnx", "--author", "X"], ["--author", "--bioimageio"]),
    (["--bioimageio", "-o", "{tmp}/unet.zip"], ["--bioimageio needs --sample"]),
    (["--bioimageio", "-o", "{tmp}/unet.zip", "--sample", "{tmp}/sample.png", "--license", "MIT"],
     ["--bioimageio needs --author NAME and --license"]),
    (["--bioimageio", "-o", "{tmp}/unet.zip", "--sample", "{tmp}/sample.png", "--author", "A"],
     ["--bioimageio needs --author NAME and --license"]),
    (["--bioimageio", "-o", "{tmp}/unet.zip", "--sample", "{tmp}/sample.png", "--author", "A", "--license",
      "MIT License"], ["--license 'MIT License'", "SPDX"]),
    (["--bioimageio", "-o", "{tmp}/unet.zip", "--sample", "{tmp}/sample.png", "--author", "A", "--license", "MIT",
      "--name", "bad/name"], ["--name"]),
    (["-o", "{tmp}/unet.onnx", "--opset", "12"], ["--opset 12", "17"]),
])
def test_mistakes_are_one_line_errors(tmp_path, model_file, sample_png, capsys, args, fragments):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run(["export", model_file] + args, capsys)
    assert_one_line_error(code, err, *fragments)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_existing_output_needs_force(tmp_path, model_file, capsys):
    out = tmp_path / "unet.onnx"
    out.write_bytes(b"keep me")
    code, _, err = run(["export", model_file, "-o", out], capsys)
    assert_one_line_error(code, err, "output exists", "--force")
    assert out.read_bytes() == b"keep me"
    code, _, err = run(["export", model_file, "-o", out, "--force"], capsys)
    assert code == 0 and onnx.load(out).graph.name == "minunet_unet"


def test_sample_smaller_than_a_tile(tmp_path, model_file, capsys):
    from PIL import Image
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((30, 90), np.uint8)).save(small)
    code, _, err = run(["export", model_file, "--bioimageio", "--sample", small, "-o", tmp_path / "u.zip",
                        "--author", "A", "--license", "MIT"], capsys)
    assert_one_line_error(code, err, f"--sample {small}", "30x90", "44x44")
    assert not (tmp_path / "u.zip").exists()


def test_help_teaches():
    from click.testing import CliRunner

    from minunet.cli.main import cli
    result = CliRunner().invoke(cli, ["export", "--help"])
    assert result.exit_code == 0
    for fragment in ("--bioimageio", "--sample", "probabilities|logits", "min + step * n", "docs/interop.md"):
        assert fragment in result.output
