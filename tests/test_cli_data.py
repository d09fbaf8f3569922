"""`minunet data`: convert, info, synth; every bad input gives one line, exit 2 and no file."""
import h5py
import numpy as np
import pytest
import tifffile
from PIL import Image

from tests.cli_runner import run


def pngs(folder, stack, names=None):
    folder.mkdir(exist_ok=True)
    for i, page in enumerate(stack):
        Image.fromarray(page).save(folder / f"{names[i] if names else i}.png")
    return folder


@pytest.fixture
def pair(tmp_path, rng):
    """A small image/label folder pair (binary 0/255 masks) and its arrays."""
    raw = rng.integers(0, 256, (3, 20, 20), dtype=np.uint8)
    labels = np.where(rng.random((3, 20, 20)) < 0.3, 0, 255).astype(np.uint8)
    return pngs(tmp_path / "img", raw), pngs(tmp_path / "lab", labels), raw, labels


def test_convert_info_and_synth(tmp_path, pair, capsys):
    img, lab, raw, labels = pair
    code, out, err = run(["data", "convert", img, lab, "-o", tmp_path / "d.h5"], capsys)
    assert code == 0, err
    assert "3 x 20 x 20 uint8, 2 classes" in out
    with h5py.File(tmp_path / "d.h5") as f:
        np.testing.assert_array_equal(f["labels"][()], labels // 255)
    code, out, _ = run(["data", "info", tmp_path / "d.h5"], capsys)
    assert code == 0 and "2 classes" in out and "weights" in out
    code, out, err = run(["data", "synth", "-o", tmp_path / "s.h5", "--slices", "2", "--size", "64", "--seed", "1"], capsys)
    assert code == 0, err
    with h5py.File(tmp_path / "s.h5") as f:
        assert f["raw"].shape == (2, 64, 64) and f.attrs["n_classes"] == 2
    code, out, err = run(["data", "convert", img, "--no-labels", "-o", tmp_path / "u.h5"], capsys)
    assert code == 0 and "no labels" in out, err


def test_help_has_examples(capsys):
    code, out, _ = run(["data", "convert", "--help"], capsys)
    assert code == 0 and "Examples:" in out and "--classes" in out


def corrupt(tmp_path, img, lab):
    (img / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")


def missing(tmp_path, img, lab):
    return [tmp_path / "nothing", lab]


def count(tmp_path, img, lab):
    raw = np.stack([np.asarray(Image.open(p)) for p in sorted(img.iterdir())])
    tifffile.imwrite(tmp_path / "i.tif", raw, photometric="minisblack")
    tifffile.imwrite(tmp_path / "l.tif", np.full((2, 20, 20), 255, np.uint8) * (raw[:2] > 99), photometric="minisblack")
    return [tmp_path / "i.tif", tmp_path / "l.tif"]


def size(tmp_path, img, lab):
    Image.fromarray(np.tile(np.uint8([0, 255]), (10, 5))).save(lab / "2.png")


def uncovered(tmp_path, img, lab):
    return [img, lab, "--classes", "0:0,128:1"]


def classes2(tmp_path, img, lab):
    return [img, lab, "--classes", "2"]


def rgb(tmp_path, img, lab):
    colour = np.zeros((20, 20, 3), np.uint8)
    colour[..., 0] = 200
    Image.fromarray(colour).save(img / "0.png")


def empty(tmp_path, img, lab):
    (tmp_path / "none").mkdir()
    return [tmp_path / "none", lab]


def one_class(tmp_path, img, lab):
    for p in lab.iterdir():
        Image.fromarray(np.zeros((20, 20), np.uint8)).save(p)


def prefix(tmp_path, img, lab):
    (lab / "2.png").rename(lab / "22.png")          # "2" must not match "22"


def extra_label(tmp_path, img, lab):
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(lab / "7.png")


def multivalue(tmp_path, img, lab):
    Image.fromarray(np.tile(np.uint8([0, 100, 255]), (20, 7))[:, :20]).save(lab / "0.png")


def no_labels_both(tmp_path, img, lab):
    return [img, lab, "--no-labels"]


def no_labels_given(tmp_path, img, lab):
    return [img]


BAD = [
    (missing, "nothing: no such file"),
    (corrupt, "1.png: cannot read image"),
    (count, "has 3 slices but .*l.tif has 2"),
    (size, "2.png: label 2 is 10x10 but its image 2 is 20x20; labels must match"),
    (uncovered, "label value 255 is not covered by --classes 0:0,128:1"),
    (classes2, "look like 0/255 binary masks: drop --classes"),
    (rgb, "0.png: colour \\(RGB\\) image"),
    (empty, "none: folder has no"),
    (one_class, "every label pixel has value 0 \\(one class\\)"),
    (prefix, "2.png: image has no label with stem '2'"),
    (extra_label, "7.png: label has no image with stem '7'"),
    (multivalue, "say which class each value is, e.g. --classes 0,100,255"),
    (no_labels_both, "--no-labels given together with LABELS"),
    (no_labels_given, "LABELS missing"),
]


@pytest.mark.parametrize("make, message", BAD, ids=[b[0].__name__ for b in BAD])
def test_bad_input_one_line_and_no_file(tmp_path, pair, capsys, make, message):
    img, lab, *_ = pair
    args = make(tmp_path, img, lab) or [img, lab]
    out = tmp_path / "out.h5"
    code, _, err = run(["data", "convert", *args, "-o", out], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    import re
    assert re.search(message, lines[0]), lines[0]
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.h5")]


def test_output_exists_needs_force(tmp_path, pair, capsys):
    img, lab, *_ = pair
    out = tmp_path / "out.h5"
    out.write_bytes(b"keep")
    code, _, err = run(["data", "convert", img, lab, "-o", out], capsys)
    assert code == 2 and "output exists; use --force" in err and out.read_bytes() == b"keep"
    code, _, err = run(["data", "synth", "-o", out, "--slices", "1", "--size", "32"], capsys)
    assert code == 2 and "use --force" in err and out.read_bytes() == b"keep"
    code, _, err = run(["data", "convert", img, lab, "-o", out, "--force"], capsys)
    assert code == 0, err
    with h5py.File(out) as f:
        assert f["raw"].shape == (3, 20, 20)


def test_info_on_bad_file(tmp_path, capsys):
    (tmp_path / "x.h5").write_text("no")
    code, _, err = run(["data", "info", tmp_path / "x.h5"], capsys)
    assert code == 2 and "not an HDF5 file" in err and err.count("\n") == 1


def test_isbi_one_command(isbi_dir, tmp_path, capsys):
    out = tmp_path / "isbi.h5"
    code, text, err = run(["data", "convert", isbi_dir / "train/image", isbi_dir / "train/label", "-o", out], capsys)
    assert code == 0, err
    assert "30 x 512 x 512 uint8, 2 classes" in text
