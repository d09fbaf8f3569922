"""Tests of ``minunet predict``: images in, probabilities / labels out, one-line errors and no file left."""
import os
import time

import numpy as np
import pytest

from minunet.data.isbi import isbi_dir
from minunet.inference import tiling
from minunet.model.checkpoint import load_model, save_checkpoint
from minunet.model.unet import UNet
from tests.backends import cpu_ready
from tests.cli_runner import assert_one_line_error, run

ISBI = isbi_dir()
h5py = pytest.importorskip("h5py")
tifffile = pytest.importorskip("tifffile")
pytestmark = pytest.mark.skipif(not cpu_ready(), reason="the Numba CPU backend (--device cpu) is not ready")


@pytest.fixture
def model_file(tmp_path):
    """A tiny untrained depth-2, width-2 U-Net saved as a minunet checkpoint (fast on any backend)."""
    path = tmp_path / "model.h5"
    save_checkpoint(path, UNet(depth=2, width=2, device="cpu", seed=5))
    return str(path)


def expected_probs(model_file, raw, tile, pad="mirror"):
    """What the library predicts for a raw stack (N, H, W): normalised as in training."""
    from minunet.data.datafile import normalize
    model, _ = load_model(model_file, "cpu")
    return tiling.predict_stack(model, normalize(raw), tile=tile, pad=pad)


def test_tiff_stack_to_float32_tiff(tmp_path, model_file, rng, capsys):
    raw = rng.integers(0, 256, (3, 40, 50), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "stack.tif", raw, photometric="minisblack")
    out = tmp_path / "probs.tif"
    code, _, err = run(["predict", "--model", model_file, str(tmp_path / "stack.tif"), "-o", str(out),
                        "--device", "cpu", "--tile", "60", "--batch", "2"], capsys)
    assert code == 0, err
    got = tifffile.imread(out)
    assert got.shape == (3, 40, 50) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected_probs(model_file, raw, 60)[:, 1], atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.h5", "probs.tif", "stack.tif"]


def test_png_folder_labels_and_probs(tmp_path, model_file, rng, capsys):
    from PIL import Image
    folder = tmp_path / "slices"
    folder.mkdir()
    raw = rng.integers(0, 256, (2, 37, 45), dtype=np.uint8)
    for k, s in enumerate(raw):
        Image.fromarray(s).save(folder / f"{k}.png")
    probs = expected_probs(model_file, raw, None)
    code, _, err = run(["predict", "-m", model_file, str(folder), "-o", str(tmp_path / "labels.tif"),
                        "--device", "cpu", "--output-format", "labels"], capsys)
    assert code == 0, err
    labels = tifffile.imread(tmp_path / "labels.tif")
    assert labels.shape == (2, 37, 45) and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, probs.argmax(axis=1))
    code, _, err = run(["predict", "-m", model_file, str(folder), "-o", str(tmp_path / "all.tif"),
                        "--device", "cpu", "--output-format", "probs"], capsys)
    assert code == 0, err
    got = tifffile.imread(tmp_path / "all.tif")
    assert got.shape == (2, 2, 37, 45) and got.dtype == np.float32
    np.testing.assert_allclose(got, probs, atol=1e-6)


@pytest.mark.parametrize("shape", [(1000, 700), (100, 100)])
def test_single_images_of_any_size(tmp_path, model_file, rng, capsys, shape):
    from PIL import Image
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(tmp_path / "image.png")
    out = tmp_path / "probs.tif"
    code, _, err = run(["predict", "-m", model_file, str(tmp_path / "image.png"), "-o", str(out),
                        "--device", "auto"], capsys)
    assert code == 0, err
    got = tifffile.imread(out)
    assert got.shape == shape and got.dtype == np.float32 and 0 <= got.min() and got.max() <= 1


def test_hdf5_in_and_out(tmp_path, model_file, rng, capsys):
    raw = rng.integers(0, 256, (2, 30, 30), dtype=np.uint8)
    with h5py.File(tmp_path / "data.h5", "w") as f:
        f["raw"] = raw
    code, _, err = run(["predict", "-m", model_file, f"{tmp_path / 'data.h5'}:/raw", "-o",
                        str(tmp_path / "pred.h5"), "--device", "cpu", "--tile", "52"], capsys)
    assert code == 0, err
    with h5py.File(tmp_path / "pred.h5", "r") as f:
        got = f["foreground"][()]
        assert f["foreground"].attrs["tile"] == 52
    np.testing.assert_allclose(got, expected_probs(model_file, raw, 52)[:, 1], atol=1e-6)
    code, _, err = run(["predict", "-m", model_file, str(tmp_path / "data.h5"), "-o",
                        f"{tmp_path / 'p.h5'}:/probs", "--device", "cpu", "--output-format", "probs"], capsys)
    assert code == 0, err
    with h5py.File(tmp_path / "p.h5", "r") as f:
        assert f["probs"].shape == (2, 2, 30, 30)


def test_overwrite_needs_force(tmp_path, model_file, rng, capsys):
    tifffile.imwrite(tmp_path / "in.tif", rng.integers(0, 256, (20, 20), dtype=np.uint8), photometric="minisblack")
    out = tmp_path / "out.tif"
    out.write_bytes(b"keep me")
    args = ["predict", "-m", model_file, str(tmp_path / "in.tif"), "-o", str(out), "--device", "cpu"]
    code, _, err = run(args, capsys)
    assert_one_line_error(code, err, "exists", "--force")
    assert out.read_bytes() == b"keep me"
    code, _, err = run(args + ["--force"], capsys)
    assert code == 0, err
    assert tifffile.imread(out).shape == (20, 20)
    with h5py.File(tmp_path / "data.h5", "w") as f:
        f["raw"] = np.zeros((1, 20, 20), np.uint8)
    code, _, err = run(["predict", "-m", model_file, f"{tmp_path / 'data.h5'}:/raw", "-o", str(tmp_path / "data.h5"),
                        "--force"], capsys)
    assert_one_line_error(code, err, "is an input of this command")
    with h5py.File(tmp_path / "data.h5", "r") as f:
        assert list(f) == ["raw"]


def test_the_compile_notice_comes_after_the_checks(tmp_path, model_file, rng, capsys, monkeypatch):
    """On a cold kernel cache a refused input is still a one-line error; a good one is told of the compilation."""
    from minunet.kernels.cpu import cache
    monkeypatch.setattr(cache, "cache_is_warm", lambda: False)
    tifffile.imwrite(tmp_path / "in.tif", rng.integers(0, 256, (20, 20), dtype=np.uint8), photometric="minisblack")
    (tmp_path / "out.tif").write_bytes(b"keep me")
    code, _, err = run(["predict", "-m", model_file, str(tmp_path / "in.tif"), "-o", str(tmp_path / "out.tif"),
                        "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "exists", "--force")
    code, _, err = run(["predict", "-m", model_file, str(tmp_path / "in.tif"), "-o", str(tmp_path / "new.tif"),
                        "--device", "cpu"], capsys)
    assert code == 0 and "compiling CPU kernels" in err, err


def test_bad_inputs_give_one_line_errors_and_leave_no_file(tmp_path, model_file, rng, capsys):
    good = tmp_path / "good.tif"
    tifffile.imwrite(good, rng.integers(0, 256, (24, 24), dtype=np.uint8), photometric="minisblack")
    (tmp_path / "broken.tif").write_bytes(b"II*\x00 this is not a tiff")
    (tmp_path / "notes.h5").write_text("not hdf5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    two_channels = tmp_path / "rgbmodel.h5"
    save_checkpoint(two_channels, UNet(depth=2, width=2, in_channels=2, device="cpu"))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = str(out_dir / "p.tif")
    cases = [
        (["-m", model_file, str(tmp_path / "broken.tif"), "-o", out], ["broken.tif"]),
        (["-m", model_file, str(tmp_path / "missing.tif"), "-o", out], ["missing.tif"]),
        (["-m", str(two_channels), str(good), "-o", out], ["2 input channels"]),
        (["-m", str(tmp_path / "notes.h5"), str(good), "-o", out], ["notes.h5", "checkpoint"]),
        (["-m", str(tmp_path / "other.h5"), str(good), "-o", out], ["other.h5", "not a minunet checkpoint"]),
        (["-m", model_file, str(good), "-o", str(tmp_path / "nowhere" / "p.tif")], ["does not exist"]),
        (["-m", model_file, str(good), "-o", str(out_dir / "p.png")], [".tif", ".h5"]),
        (["-m", model_file, str(good), "-o", out, "--tile", "51"], ["--tile", "use 50 or 52"]),
    ]
    for args, fragments in cases:
        code, _, err = run(["predict", "--device", "cpu"] + args, capsys)
        assert_one_line_error(code, err, *fragments)
        assert list(out_dir.iterdir()) == [], args


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder(tmp_path, model_file, rng, capsys):
    tifffile.imwrite(tmp_path / "in.tif", rng.integers(0, 256, (20, 20), dtype=np.uint8), photometric="minisblack")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, _, err = run(["predict", "-m", model_file, str(tmp_path / "in.tif"), "-o",
                            str(locked / "p.tif"), "--device", "cpu"], capsys)
        assert_one_line_error(code, err, "cannot write")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_help_has_an_example(capsys):
    code, out, _ = run(["predict", "--help"], capsys)
    assert code == 0 and "minunet predict --model" in out and "--output-format" in out


def test_isbi_test_slices(tmp_path, model_file, capsys):
    """The ISBI 2012 test slices: a glob of two; all 30 only when that promises a few seconds."""
    test_dir = ISBI / "test"
    if not test_dir.is_dir():
        pytest.skip(f"ISBI 2012 test slices not found at {test_dir}")
    start = time.perf_counter()
    code, _, err = run(["predict", "-m", model_file, str(test_dir / "[0-1].png"), "-o",
                        str(tmp_path / "two.tif"), "--device", "cpu"], capsys)
    assert code == 0, err
    got = tifffile.imread(tmp_path / "two.tif")
    assert got.shape == (2, 512, 512) and got.dtype == np.float32
    if (time.perf_counter() - start) * 15 > 5.0:
        return                                 # 30 slices would take more than ~5 s here
    code, _, err = run(["predict", "-m", model_file, str(test_dir), "-o", str(tmp_path / "all.tif"),
                        "--device", "cpu"], capsys)
    assert code == 0, err
    assert tifffile.imread(tmp_path / "all.tif").shape == (30, 512, 512)


def test_zarr_volume_is_predicted_block_wise(tmp_path, model_file, rng, capsys):
    """A .zarr input goes through the Dask block-wise path and equals the in-memory prediction."""
    zarr = pytest.importorskip("zarr")
    pytest.importorskip("dask")
    raw = rng.integers(0, 256, (2, 45, 61), dtype=np.uint8)
    z = zarr.create_array(store=str(tmp_path / "in.zarr"), shape=raw.shape, chunks=(1, 32, 32), dtype=raw.dtype)
    z[...] = raw
    out = tmp_path / "out.zarr"
    code, _, err = run(["predict", "-m", model_file, str(tmp_path / "in.zarr"), "-o", str(out), "--device", "cpu",
                        "--tile", "60", "--block", "24"], capsys)
    assert code == 0, err
    expected = expected_probs(model_file, raw, 60)[:, 1]
    np.testing.assert_allclose(zarr.open_array(str(out), mode="r")[...], expected, atol=1e-5)
    code, _, err = run(["predict", "-m", model_file, str(tmp_path / "in.zarr"), "-o", str(out), "--device", "cpu",
                        "--tile", "60", "--block", "24", "--tta"], capsys)
    assert_one_line_error(code, err, "--tta")


def test_multiclass_model_writes_labels_by_default(tmp_path, rng, capsys):
    """Class 1's probability means little for a 3-class model: the default output is the class map."""
    path = tmp_path / "three.h5"
    save_checkpoint(path, UNet(depth=2, width=2, classes=3, device="cpu", seed=1))
    raw = rng.integers(0, 256, (30, 30), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "image.tif", raw)
    out = tmp_path / "labels.tif"
    code, _, err = run(["predict", "-m", str(path), str(tmp_path / "image.tif"), "-o", str(out), "--device", "cpu"],
                       capsys)
    assert code == 0, err
    labels = tifffile.imread(out)
    assert labels.dtype == np.uint8 and labels.shape == (30, 30) and labels.max() <= 2
