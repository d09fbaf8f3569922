"""minunet.data.imageio: every input form gives the same stack; bad inputs give one-line UserErrors."""
import h5py
import numpy as np
import pytest
import tifffile
from PIL import Image

from minunet.data import imageio
from minunet.errors import UserError
from minunet.files.atomic import write_tiff_atomic


@pytest.fixture
def stack(rng):
    return rng.integers(0, 256, (12, 9, 11), dtype=np.uint8)


def write_pngs(folder, stack, names=None):
    folder.mkdir(exist_ok=True)
    for i, page in enumerate(stack):
        Image.fromarray(page).save(folder / f"{names[i] if names else i}.png")
    return folder


def test_natural_order_of_folder_and_glob(tmp_path, stack):
    folder = write_pngs(tmp_path / "s", stack)
    assert [s.stem for s in imageio.list_slices(folder)] == [str(i) for i in range(12)]
    np.testing.assert_array_equal(imageio.read_stack(folder), stack)
    np.testing.assert_array_equal(imageio.read_stack(str(folder / "*.png")), stack)


def test_tiff_stack_single_png_and_hdf5(tmp_path, stack):
    tifffile.imwrite(tmp_path / "v.tif", stack, photometric="minisblack")
    np.testing.assert_array_equal(imageio.read_stack(tmp_path / "v.tif"), stack)
    assert [s.stem for s in imageio.list_slices(tmp_path / "v.tif")][:2] == ["v[0]", "v[1]"]
    Image.fromarray(stack[0]).save(tmp_path / "one.png")
    assert imageio.read_stack(tmp_path / "one.png").shape == (1, 9, 11)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["raw"] = stack
        f["other"] = stack[:2]
    np.testing.assert_array_equal(imageio.read_stack(f"{tmp_path / 'd.h5'}:/other"), stack[:2])
    np.testing.assert_array_equal(imageio.read_stack(tmp_path / "d.h5"), stack)     # bare file: /raw


def test_uint16_kept(tmp_path, rng):
    a = rng.integers(0, 65536, (3, 8, 8), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", a, photometric="minisblack")
    got = imageio.read_stack(tmp_path / "a.tif")
    assert got.dtype == np.uint16 and np.array_equal(got, a)


def test_rgb_policy(tmp_path, stack):
    gray_rgb = np.repeat(stack[0][..., None], 3, axis=2)
    Image.fromarray(gray_rgb).save(tmp_path / "g.png")
    np.testing.assert_array_equal(imageio.read_stack(tmp_path / "g.png")[0], stack[0])   # silent
    colour = gray_rgb.copy()
    colour[..., 1] = 255 - colour[..., 1]
    Image.fromarray(colour).save(tmp_path / "c.png")
    with pytest.raises(UserError, match="c.png: colour .*expects grayscale"):
        imageio.read_stack(tmp_path / "c.png")
    with pytest.warns(UserWarning, match="converted to grayscale"):
        assert imageio.read_stack(tmp_path / "c.png", rgb="luminance").shape == (1, 9, 11)


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file"), ("empty", "folder has no"), ("glob", "matches no"),
    ("corrupt", "cannot read"), ("h5name", "no dataset /nope"), ("sizes", "same size"),
])
def test_bad_inputs(tmp_path, stack, case, message):
    spec = {"missing": tmp_path / "nope.tif", "empty": tmp_path, "glob": str(tmp_path / "*.png"),
            "corrupt": tmp_path / "bad.tif", "h5name": f"{tmp_path / 'd.h5'}:/nope",
            "sizes": tmp_path / "mixed"}[case]
    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage")
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["raw"] = stack
    write_pngs(tmp_path / "mixed", [stack[0], stack[1, :5]])
    if case in ("empty", "glob"):
        (tmp_path / "bad.tif").unlink()
    with pytest.raises(UserError, match=message) as err:
        imageio.read_stack(spec)
    assert "\n" not in str(err.value)


def test_write_tiff_atomic(tmp_path, stack):
    write_tiff_atomic(tmp_path / "o.tif", stack)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "o.tif"), stack)
    with pytest.raises(Exception):                   # a failed write leaves no temporary file
        write_tiff_atomic(tmp_path / "x.tif", object())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.tif"]
