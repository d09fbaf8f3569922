"""Hostile image inputs: sizes declared beyond memory, absurd tiles, NaN pixels, ambiguous stems.

The huge images are small files whose headers declare 20000 x 20000 or 50000 x 50000 pixels
(a TIFF's size tags rewritten, a PNG's IHDR rewritten with its CRC): what a reader sees before
decoding is all that must be checked. Memory cases run under a 1 GiB address-space limit.
"""
import struct
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from tests.cli_runner import run
from tests.hostile import assert_limited_refusal, refused, run_limited, tiff_image, tiny_model


def declared_tiff(path, side):
    """A 64 x 64 zlib TIFF whose size tags declare side x side pixels."""
    tifffile.imwrite(path, np.zeros((64, 64), np.uint8), photometric="minisblack", compression="zlib")
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[0].tags["ImageWidth"].overwrite(side)
        tif.pages[0].tags["ImageLength"].overwrite(side)
    return path


def declared_png(path, width, height):
    """A 16 x 16 PNG whose header declares width x height pixels (with a valid CRC)."""
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


@pytest.fixture
def work(tmp_path):
    tiny_model(tmp_path / "m.h5")
    return tmp_path


@pytest.mark.parametrize("side", [20000, 50000])
def test_declared_huge_tiff_is_refused_before_decoding(work, side):
    declared_tiff(work / "big.tif", side)
    before = sorted(p.name for p in work.iterdir())
    code, err = run_limited(["predict", "-m", "m.h5", "big.tif", "-o", "out.tif", "--device", "reference"], work)
    assert_limited_refusal(code, err, "big.tif", f"{side} x {side}", "memory", "block-wise")
    code, err = run_limited(["data", "convert", "big.tif", "--no-labels", "-o", "d.h5"], work)
    assert_limited_refusal(code, err, "big.tif", "memory")
    assert sorted(p.name for p in work.iterdir()) == before


def test_declared_huge_png_is_refused(work):
    declared_png(work / "bomb.png", 20000, 20000)       # beyond Pillow's decompression-bomb limit
    declared_png(work / "wide.png", 12000, 12000)       # within it, but not within 1 GiB
    for name in ("bomb.png", "wide.png"):
        code, err = run_limited(["predict", "-m", "m.h5", name, "-o", "out.tif", "--device", "reference"], work)
        assert_limited_refusal(code, err, name, "block-wise")
    assert not (work / "out.tif").exists()


def test_tile_beyond_memory(work, rng, capsys):
    tiff_image(work / "in.tif", rng.integers(0, 256, (40, 40), dtype=np.uint8))
    refused(["predict", "-m", work / "m.h5", work / "in.tif", "-o", work / "out.tif", "--device", "reference",
             "--tile", "100004"], capsys, "--tile 100004", "use --tile", folders=[work])


def test_tile_beyond_memory_under_a_limit(work, rng):
    tiff_image(work / "in.tif", rng.integers(0, 256, (40, 40), dtype=np.uint8))
    code, err = run_limited(["predict", "-m", "m.h5", "in.tif", "-o", "out.tif", "--device", "reference",
                             "--tile", "100004"], work)
    assert_limited_refusal(code, err, "--tile", "use --tile")


def test_non_finite_pixels_refused_at_conversion_and_prediction(work, capsys, rng):
    image = rng.random((2, 32, 32)).astype(np.float32)
    image[1, 3, 4], image[1, 5, 6] = np.nan, np.inf
    tiff_image(work / "img.tif", image)
    tiff_image(work / "lab.tif", (rng.random((2, 32, 32)) > 0.5).astype(np.uint8) * 255)
    refused(["data", "convert", work / "img.tif", work / "lab.tif", "-o", work / "d.h5"], capsys,
            "img.tif", "NaN or infinite", folders=[work])
    refused(["predict", "-m", work / "m.h5", work / "img.tif", "-o", work / "p.tif", "--device", "reference"],
            capsys, "img.tif", "NaN or infinite", folders=[work])


def test_image_stems_must_be_unique(tmp_path, capsys, rng):
    """1.png and 1.tif among the images would both pair with label 1.png."""
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    for i in range(2):
        page = rng.integers(0, 256, (16, 16), dtype=np.uint8)
        Image.fromarray(page).save(tmp_path / "img" / f"{i}.png")
        Image.fromarray(((page > 128) * 255).astype(np.uint8)).save(tmp_path / "lab" / f"{i}.png")
    tiff_image(tmp_path / "img" / "1.tif", rng.integers(0, 256, (16, 16), dtype=np.uint8))
    refused(["data", "convert", tmp_path / "img", tmp_path / "lab", "-o", tmp_path / "d.h5"], capsys,
            "share the stem '1'", folders=[tmp_path])


def test_evaluate_names_the_bit_depth_of_an_integer_probability_map(tmp_path, capsys, rng):
    truth = (rng.random((32, 32)) > 0.3).astype(np.uint8) * 255
    tiff_image(tmp_path / "truth.tif", truth)
    tiff_image(tmp_path / "pred.tif", rng.integers(0, 65536, (32, 32), dtype=np.uint16))
    err = refused(["evaluate", tmp_path / "pred.tif", tmp_path / "truth.tif"], capsys, "16-bit", folders=[tmp_path])
    assert "8-bit" not in err


def test_evaluate_explains_labels_without_cells(tmp_path, capsys, rng):
    tiff_image(tmp_path / "truth.tif", np.zeros((32, 32), np.uint8))
    tiff_image(tmp_path / "pred.tif", rng.random((32, 32)).astype(np.float32))
    refused(["evaluate", tmp_path / "pred.tif", tmp_path / "truth.tif"], capsys, "truth.tif",
            "every pixel is 0 (membrane)", "Rand error undefined", folders=[tmp_path])
    code, out, err = run(["evaluate", tmp_path / "pred.tif", tmp_path / "truth.tif", "--metrics", "iou"], capsys)
    assert code == 0, err
