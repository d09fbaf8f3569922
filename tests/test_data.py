"""minunet.data (datafile, convert, sampler): the HDF5 format, conversion from TIFF/PNG, the tile sampler and validation slices."""
import h5py
import numpy as np
import pytest
import tifffile
from PIL import Image

from minunet.data import convert, datafile, sampler, slices
from minunet.data.synth import synth_stack
from minunet.errors import UserError


@pytest.fixture(scope="module")
def stacks():
    return synth_stack(4, 48, seed=1)


@pytest.fixture(scope="module")
def h5file(tmp_path_factory, stacks):
    raw, labels = stacks
    return convert.save_arrays(tmp_path_factory.mktemp("d") / "s.h5", raw, labels)


def test_parse_and_format_slices():
    assert slices.parse_slices("24-29") == [24, 25, 26, 27, 28, 29]
    assert slices.parse_slices("0,3,5-6") == [0, 3, 5, 6]
    assert slices.parse_slices("all", 3) == [0, 1, 2]
    assert slices.format_slices([0, 1, 2, 5]) == "0-2,5"
    for bad, msg in [("3-1", "backwards"), ("a-b", "cannot read"), ("7", "out of range")]:
        with pytest.raises(UserError, match=msg):
            slices.parse_slices(bad, 5)


def test_parse_classes():
    assert convert.parse_classes("0:0,255:1") == {0: 0, 255: 1}
    assert convert.parse_classes("0,50,100") == {0: 0, 50: 1, 100: 2}
    assert convert.parse_classes("3") == {0: 0, 1: 1, 2: 2}
    with pytest.raises(UserError, match="without gaps"):
        convert.parse_classes("0:0,255:2")


def test_normalize():
    assert datafile.normalize(np.array([255], np.uint8))[0] == 1.0
    assert datafile.normalize(np.array([65535], np.uint16))[0] == 1.0
    assert datafile.normalize(np.array([3.5], np.float32))[0] == 3.5
    assert datafile.normalize(np.zeros(1, np.uint8)).dtype == np.float32


def test_file_layout_and_info(h5file, stacks):
    info = datafile.open_dataset(h5file)
    assert info.shape == (4, 48, 48) and info.n_classes == 2 and info.has_labels and info.has_weights
    with h5py.File(h5file) as f:
        np.testing.assert_array_equal(f["raw"][()], stacks[0])
        assert f["weights"].dtype == np.float32 and f.attrs["format_version"] == datafile.FORMAT_VERSION
        assert f.attrs["w0"] == 10 and f.attrs["sigma"] == 5
    assert "4 x 48 x 48 uint8" in datafile.info(h5file)
    raw, labels = datafile.load_slices(h5file, "2-3")
    np.testing.assert_array_equal(labels, stacks[1][2:])
    got = [i for i, *_ in datafile.validation_slices(h5file, "1,3")]
    assert got == [1, 3]


def write_pngs(folder, stack, name="{}"):
    folder.mkdir()
    for i, page in enumerate(stack):
        Image.fromarray(page).save(folder / f"{name.format(i)}.png")
    return folder


def test_tiff_stack_equals_png_folder(tmp_path, stacks):
    raw, labels = stacks
    write_pngs(tmp_path / "img", raw)
    write_pngs(tmp_path / "lab", labels * 255)
    tifffile.imwrite(tmp_path / "img.tif", raw, photometric="minisblack")
    tifffile.imwrite(tmp_path / "lab.tif", labels * 255, photometric="minisblack")
    a = convert.convert(tmp_path / "img", tmp_path / "lab", tmp_path / "a.h5")
    b = convert.convert(tmp_path / "img.tif", tmp_path / "lab.tif", tmp_path / "b.h5")
    with h5py.File(a) as fa, h5py.File(b) as fb:
        for name in ("raw", "labels", "weights"):
            np.testing.assert_array_equal(fa[name][()], fb[name][()])
        np.testing.assert_array_equal(fa["labels"][()], labels)
        for key in ("n_classes", "w0", "sigma", "format_version"):
            assert fa.attrs[key] == fb.attrs[key]


def test_multiclass_mapping(tmp_path, rng):
    raw = rng.integers(0, 256, (2, 16, 16), dtype=np.uint8)
    labels = rng.choice(np.array([0, 50, 100], np.uint8), (2, 16, 16))
    tifffile.imwrite(tmp_path / "i.tif", raw, photometric="minisblack")
    tifffile.imwrite(tmp_path / "l.tif", labels, photometric="minisblack")
    convert.convert(tmp_path / "i.tif", tmp_path / "l.tif", tmp_path / "m.h5", classes="0,50,100", class_names=["a", "b", "c"])
    info = datafile.open_dataset(tmp_path / "m.h5")
    assert info.n_classes == 3 and info.class_names == ["a", "b", "c"]
    _, got = datafile.load_slices(tmp_path / "m.h5")
    np.testing.assert_array_equal(got, labels // 50)


def test_open_dataset_errors(tmp_path):
    (tmp_path / "x.h5").write_text("not hdf5")
    with pytest.raises(UserError, match="not an HDF5 file"):
        datafile.open_dataset(tmp_path / "x.h5")
    with h5py.File(tmp_path / "y.h5", "w") as f:
        f["raw"] = np.zeros((2, 4, 4), np.uint8)
        f["labels"] = np.zeros((2, 4, 5), np.uint8)
    with pytest.raises(UserError, match="/labels has shape"):
        datafile.open_dataset(tmp_path / "y.h5")
    with h5py.File(tmp_path / "z.h5", "w") as f:
        f["other"] = np.zeros(3)
    with pytest.raises(UserError, match="no /raw"):
        datafile.open_dataset(tmp_path / "z.h5")


def test_sampler_shapes_and_alignment(h5file):
    with sampler.TileSampler(h5file, "0-2", 44, 20, augment=False, seed=3) as s:
        image, labels, weights = s.sample()
        assert image.shape == (1, 44, 44) and image.dtype == np.float32
        assert labels.shape == weights.shape == (20, 20) and labels.dtype == np.uint8
        images, labs, wts = s.batch(3)
        assert images.shape == (3, 1, 44, 44) and labs.shape == wts.shape == (3, 20, 20)


def test_sampler_labels_follow_image_under_augmentation(tmp_path, stacks):
    """Raw = labels * 255: the deformed image's centre must show the deformed labels."""
    labels = stacks[1]
    path = convert.save_arrays(tmp_path / "l.h5", labels * 255, labels)
    from minunet.data.augment import AugmentConfig
    cfg = AugmentConfig(brightness=0, contrast=0, gamma=0)
    with sampler.TileSampler(path, None, 40, 24, augment=cfg, seed=1) as s:
        for _ in range(3):
            image, lab, w = s.sample()
            centre = image[0, 8:32, 8:32]
            inside = w > 0
            assert set(np.unique(lab)) <= {0, 1}
            assert ((centre > 0.5) == (lab == 1))[inside].mean() > 0.9


def test_every_pixel_reachable(tmp_path):
    raw = np.arange(30 * 30, dtype=np.float32).reshape(1, 30, 30)
    path = convert.save_arrays(tmp_path / "c.h5", raw, (raw % 2).astype(np.uint8))
    seen = np.zeros(30 * 30, bool)
    with sampler.TileSampler(path, None, 30, 24, augment=False, pad="zero") as s:
        for _ in range(400):
            image, _, w = s.sample()
            values = image[0, 3:27, 3:27][w > 0]
            seen[values.astype(int)] = True
    assert seen.all()


def test_state_resume_and_workers(h5file):
    a = sampler.TileSampler(h5file, None, 44, 20, seed=7)
    a.batch(2)
    state = a.state()
    expected = a.batch(2)
    b = sampler.TileSampler(h5file, None, 44, 20, seed=99, workers=1)
    b.set_state(state)
    got = b.batch(2)
    b.close()
    a.close()
    for x, y in zip(expected, got):
        np.testing.assert_array_equal(x, y)


def test_sampler_errors(h5file, tmp_path):
    with pytest.raises(UserError, match="even number"):
        sampler.TileSampler(h5file, None, 45, 20)
    with pytest.raises(UserError, match="out of range"):
        sampler.TileSampler(h5file, "0-9", 44, 20)
    convert.save_arrays(tmp_path / "u.h5", np.zeros((1, 8, 8), np.uint8))
    with pytest.raises(UserError, match="no /labels"):
        sampler.TileSampler(tmp_path / "u.h5", None, 8, 4)


def test_isbi_conversion(isbi_dir, tmp_path):
    out = convert.convert(isbi_dir / "train" / "image", isbi_dir / "train" / "label", tmp_path / "isbi.h5")
    info = datafile.open_dataset(out)
    assert info.shape == (30, 512, 512) and info.n_classes == 2
    with h5py.File(out) as f:
        assert 0.15 < (f["labels"][0] == 0).mean() < 0.35           # ~22 % membrane
        assert f["weights"][0].max() > 5                             # border term present
