"""OME-Zarr predictions: valid NGFF 0.5 images (and labels) that ome-zarr reads back with the right axes,
shapes and values; block-wise and in-memory outputs equal; OME-Zarr inputs read at full resolution."""
import numpy as np
import pytest
import tifffile

zarr = pytest.importorskip("zarr")
pytest.importorskip("dask.array")
ome_zarr_py = pytest.importorskip("ome_zarr")
models = pytest.importorskip("ome_zarr_models")

from ome_zarr.io import parse_url  # noqa: E402
from ome_zarr.reader import Reader  # noqa: E402
from ome_zarr_models.v05 import Image, Labels  # noqa: E402

from minunet.data.datafile import normalize  # noqa: E402
from minunet.inference import tiling  # noqa: E402
from minunet.model.checkpoint import load_model, save_checkpoint  # noqa: E402
from minunet.model.unet import UNet  # noqa: E402
from tests.backends import cpu_ready  # noqa: E402
from tests.cli_runner import assert_one_line_error, run  # noqa: E402

pytestmark = pytest.mark.skipif(not cpu_ready(), reason="the Numba CPU backend (--device cpu) is not ready")
TILE, BLOCK = 60, 40        # depth 2: tiles 18 + 2n, blocks a multiple of 2


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.h5"
    save_checkpoint(path, UNet(depth=2, width=2, classes=3, device="cpu", seed=4))
    return path


def expected_probs(model_file, raw):
    """(N, K, H, W): what in-memory prediction computes for a raw (N, H, W) stack."""
    model, _ = load_model(model_file, "cpu")
    return tiling.predict_stack(model, normalize(raw), tile=TILE)


def predict(args, capsys, model_file):
    code, _, err = run(["predict", "-m", model_file, "--device", "cpu", "--tile", TILE] + args, capsys)
    assert code == 0, err
    return err


def read_back(path):
    """The image and label nodes ome-zarr's reader finds: {name: (axis names, full-resolution array, metadata)}."""
    nodes = {}
    for node in Reader(parse_url(str(path)))():
        if node.data:
            meta = node.metadata
            nodes[meta["name"]] = ([a["name"] for a in meta["axes"]], np.asarray(node.data[0]), meta)
    return nodes


def validate(path, labels):
    group = zarr.open_group(str(path), mode="r")
    Image.from_zarr(group)
    if labels:
        Labels.from_zarr(group["labels"])


def test_stack_to_probabilities_and_labels(tmp_path, model_file, rng, capsys):
    raw = rng.integers(0, 256, (2, 57, 70), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "stack.tif", raw, photometric="minisblack")
    out = tmp_path / "probs.ome.zarr"
    err = predict([tmp_path / "stack.tif", "-o", out, "--labels"], capsys, model_file)
    assert "OME-Zarr image, probs and labels/classes" in err
    validate(out, labels=True)
    nodes = read_back(out)
    axes, image, _ = nodes["probs"]
    probs = expected_probs(model_file, raw)
    assert axes == ["c", "z", "y", "x"] and image.shape == (3, 2, 57, 70) and image.dtype == np.float32
    np.testing.assert_allclose(image, probs.transpose(1, 0, 2, 3), atol=1e-6)
    axes, classes, _ = nodes["classes"]
    assert axes == ["z", "y", "x"] and classes.dtype == np.uint8
    np.testing.assert_array_equal(classes, probs.argmax(axis=1))
    label_attrs = zarr.open_group(str(out / "labels" / "classes"), mode="r").attrs["ome"]
    assert label_attrs["image-label"]["source"] == {"image": "../../"}
    assert len(label_attrs["image-label"]["colors"]) == 3
    assert zarr.open_group(str(out), mode="r").attrs["minunet"]["tile"] == TILE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probs.ome.zarr", "stack.tif"]


@pytest.mark.parametrize("fmt,dtype", [("foreground", np.float32), ("labels", np.uint8)])
def test_single_image_formats(tmp_path, model_file, rng, capsys, fmt, dtype):
    raw = rng.integers(0, 256, (1, 45, 52), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "image.tif", raw[0])
    out = tmp_path / f"{fmt}.ome.zarr"
    predict([tmp_path / "image.tif", "-o", out, "--output-format", fmt], capsys, model_file)
    validate(out, labels=False)
    axes, image, _ = read_back(out)[fmt]
    probs = expected_probs(model_file, raw)[0]
    assert axes == ["y", "x"] and image.shape == (45, 52) and image.dtype == dtype
    want = probs[1] if fmt == "foreground" else probs.argmax(axis=0)
    np.testing.assert_allclose(image, want, atol=1e-6)


def test_blockwise_equals_in_memory(tmp_path, model_file, rng, capsys):
    raw = rng.integers(0, 256, (2, 97, 110), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "stack.tif", raw, photometric="minisblack")
    volume = zarr.create_array(store=str(tmp_path / "in.zarr"), shape=raw.shape, chunks=(1, 32, 48), dtype=raw.dtype)
    volume[...] = raw
    predict([tmp_path / "stack.tif", "-o", tmp_path / "memory.ome.zarr", "--labels"], capsys, model_file)
    err = predict([tmp_path / "in.zarr", "-o", tmp_path / "blocks.ome.zarr", "--labels", "--block", BLOCK],
                  capsys, model_file)
    assert "18 block(s) predicted" in err                # 2 slices x 3 x 3 blocks: really block-wise
    validate(tmp_path / "blocks.ome.zarr", labels=True)
    memory, blocks = (zarr.open_group(str(tmp_path / name), mode="r") for name in ("memory.ome.zarr", "blocks.ome.zarr"))
    assert blocks["0"].chunks == (3, 1, BLOCK, BLOCK)
    assert memory.attrs["ome"] == blocks.attrs["ome"]
    for key in ("0", "labels/classes/0"):
        assert memory[key].shape == blocks[key].shape and memory[key].dtype == blocks[key].dtype
        assert np.abs(memory[key][...].astype(np.float64) - blocks[key][...]).max() <= 1e-5
    assert memory["labels/classes"].attrs["ome"] == blocks["labels/classes"].attrs["ome"]
    code, _, err = run(["predict", "-m", model_file, "--device", "cpu", "--tile", TILE, tmp_path / "in.zarr",
                        "-o", tmp_path / "blocks.ome.zarr", "--labels", "--block", BLOCK, "--resume"], capsys)
    assert code == 0 and "0 block(s) predicted, 18 skipped" in err


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_input_is_read_at_full_resolution(tmp_path, model_file, rng, capsys, version):
    """An image written by ome-zarr (axes c, z, y, x with one channel, a two-level pyramid, pixel sizes)."""
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image
    raw = rng.integers(0, 256, (2, 64, 72), dtype=np.uint8)
    source = tmp_path / "raw.ome.zarr"
    fmt = FormatV04() if version == "0.4" else FormatV05()
    group = zarr.open_group(str(source), mode="w", zarr_format=2 if version == "0.4" else 3)
    write_image(raw[None], group, scale_factors=[2], axes="czyx", fmt=fmt,
                scale={"c": 1.0, "z": 3.0, "y": 0.5, "x": 0.5}, axes_units={"z": "nanometer", "y": "nanometer", "x": "nanometer"},
                storage_options={"chunks": (1, 1, 32, 32)})
    probs = expected_probs(model_file, raw)
    predict([source, "-o", tmp_path / "fg.tif", "--output-format", "foreground"], capsys, model_file)  # in memory
    np.testing.assert_allclose(tifffile.imread(tmp_path / "fg.tif"), probs[:, 1], atol=1e-6)
    out = tmp_path / "probs.ome.zarr"
    predict([source, "-o", out, "--block", BLOCK], capsys, model_file)               # block-wise, OME-Zarr to OME-Zarr
    validate(out, labels=False)
    axes, image, meta = read_back(out)["probs"]
    np.testing.assert_allclose(image, probs.transpose(1, 0, 2, 3), atol=1e-5)
    multiscale = zarr.open_group(str(out), mode="r").attrs["ome"]["multiscales"][0]
    assert multiscale["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 3.0, 0.5, 0.5]
    assert [a.get("unit") for a in multiscale["axes"]] == [None, "nanometer", "nanometer", "nanometer"]


def test_mistakes_are_one_line_errors(tmp_path, model_file, rng, capsys):
    raw = rng.integers(0, 256, (40, 40), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "image.tif", raw)
    base = ["predict", "-m", model_file, "--device", "cpu", tmp_path / "image.tif"]
    code, _, err = run(base + ["-o", tmp_path / "probs.tif", "--labels"], capsys)
    assert_one_line_error(code, err, "--labels", "probs.ome.zarr")
    (tmp_path / "taken.ome.zarr").mkdir()
    code, _, err = run(base + ["-o", tmp_path / "taken.ome.zarr"], capsys)
    assert_one_line_error(code, err, "taken.ome.zarr", "--force")
    code, _, err = run(base + ["-o", tmp_path / "taken.ome.zarr", "--force"], capsys)
    assert_one_line_error(code, err, "taken.ome.zarr", "not a Zarr store")
    several = zarr.open_group(str(tmp_path / "rgb.ome.zarr"), mode="w", zarr_format=3, attributes={"ome": {
        "version": "0.5", "multiscales": [{"axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"},
                                                    {"name": "x", "type": "space"}],
                                           "datasets": [{"path": "0", "coordinateTransformations": [
                                               {"type": "scale", "scale": [1.0, 1.0, 1.0]}]}]}]}})
    several.create_array("0", shape=(3, 40, 40), dtype=np.uint8)
    code, _, err = run(["predict", "-m", model_file, "--device", "cpu", tmp_path / "rgb.ome.zarr",
                        "-o", tmp_path / "out.tif"], capsys)
    assert_one_line_error(code, err, "rgb.ome.zarr", "axis 'c' has 3 entries")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.tif", "rgb.ome.zarr", "taken.ome.zarr"]
