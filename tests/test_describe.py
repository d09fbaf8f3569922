"""``minunet data info`` says what any file minunet reads or writes is."""
import numpy as np
import pytest

from minunet.data.convert import save_arrays
from minunet.model.checkpoint import save_checkpoint
from minunet.model.unet import UNet
from tests.cli_runner import run

h5py = pytest.importorskip("h5py")
tifffile = pytest.importorskip("tifffile")


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.h5"
    save_checkpoint(path, UNet(depth=2, width=2, classes=3, device="cpu", seed=1), iteration=17)
    return path


def test_checkpoint_says_its_network_and_iteration(model_file, capsys):
    code, out, err = run(["data", "info", model_file], capsys)
    assert code == 0, err
    assert "minunet checkpoint" in out and "iteration 17" in out
    assert "depth 2, width 2" in out and "3 classes" in out and "minunet predict --model" in out


def test_data_file_still_gets_its_summary(tmp_path, rng, capsys):
    path = save_arrays(tmp_path / "d.h5", rng.integers(0, 256, (2, 16, 16), dtype=np.uint8),
                       (rng.random((2, 16, 16)) > 0.5).astype(np.uint8))
    code, out, err = run(["data", "info", path], capsys)
    assert code == 0, err
    assert "minunet data" in out and "2 x 16 x 16 uint8" in out and "membrane" in out and "cell" in out


def test_prediction_and_image_files(tmp_path, model_file, rng, capsys):
    image = tmp_path / "in.tif"
    tifffile.imwrite(image, rng.integers(0, 256, (2, 24, 24), dtype=np.uint8), photometric="minisblack")
    code, _, err = run(["predict", "-m", model_file, image, "-o", f"{tmp_path / 'p.h5'}:/probs", "--device", "cpu",
                        "--output-format", "probs", "-q"], capsys)
    assert code == 0, err
    code, out, err = run(["data", "info", tmp_path / "p.h5"], capsys)
    assert code == 0, err
    assert "/probs" in out and "2 x 3 x 24 x 24 float32" in out and "probabilities of 3 classes" in out
    code, out, _ = run(["data", "info", image], capsys)
    assert code == 0 and "TIFF, 2 x 24 x 24 uint8" in out


def test_zarr_store(tmp_path, model_file, rng, capsys):
    pytest.importorskip("zarr")
    image = tmp_path / "in.png"
    from PIL import Image
    Image.fromarray(rng.integers(0, 256, (20, 30), dtype=np.uint8)).save(image)
    code, _, err = run(["predict", "-m", model_file, image, "-o", tmp_path / "labels.zarr", "--device", "cpu", "-q"],
                       capsys)
    assert code == 0, err
    code, out, err = run(["data", "info", tmp_path / "labels.zarr"], capsys)
    assert code == 0, err
    assert "Zarr array" in out and "20 x 30 uint8" in out and "chunks" in out


@pytest.mark.parametrize("name, content, message", [
    ("x.h5", b"no", "not an HDF5 file"),
    ("x.txt", b"hello", "not a file minunet reads"),
])
def test_unknown_files_are_one_line(tmp_path, capsys, name, content, message):
    (tmp_path / name).write_bytes(content)
    code, _, err = run(["data", "info", tmp_path / name], capsys)
    assert code == 2 and message in err and err.count("\n") == 1
    code, _, err = run(["data", "info", tmp_path / "missing.h5"], capsys)
    assert code == 2 and "no such file" in err
