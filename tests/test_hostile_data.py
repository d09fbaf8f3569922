"""Hostile and damaged data files, given to `minunet data info`, `train` and `predict`.

Crafted here with h5py from a tiny valid data file; every case ends in one line, exit 2, no
traceback, the data file unchanged.
"""
import os

import h5py
import numpy as np
import pytest

from tests.backends import fast_device
from tests.hostile import assert_limited_refusal, refused, run_limited, tiny_model
from tests.test_train import write_data

TINY = ["--device", fast_device(), "--depth", "2", "--width", "2", "--tile", "44", "--val-slices", "none",
        "--workers", "0", "--iterations", "3", "-q"]


@pytest.fixture
def data(tmp_path):
    return write_data(tmp_path / "d.h5", n=3, size=48)


def _replace(name, make):
    def craft(f, folder):
        shape = f[name].shape
        del f[name]
        make(f, name, shape, folder)
    return craft


def _external_raw(f, name, shape, folder):
    secret = folder / "secret.bin"
    secret.write_bytes(os.urandom(int(np.prod(shape))))
    f.create_dataset(name, shape=shape, dtype=np.uint8, external=[(str(secret), 0, h5py.h5f.UNLIMITED)])


def _linked_raw(f, name, shape, folder):
    with h5py.File(folder / "other.h5", "w") as g:
        g["raw"] = np.zeros(shape, np.uint8)
    f[name] = h5py.ExternalLink(str(folder / "other.h5"), "/raw")


def _virtual_raw(f, name, shape, folder):
    with h5py.File(folder / "source.h5", "w") as g:
        g["raw"] = np.zeros(shape, np.uint8)
    layout = h5py.VirtualLayout(shape=shape, dtype=np.uint8)
    layout[...] = h5py.VirtualSource(str(folder / "source.h5"), "raw", shape=shape)
    f.create_virtual_dataset(name, layout)


def _attribute(name, value):
    def craft(f, folder):
        f.attrs[name] = value
    return craft


CRAFTED = {
    "external storage": (_replace("raw", _external_raw), "another file"),
    "external link": (_replace("raw", _linked_raw), "link to another file"),
    "soft-link loop": (_replace("raw", lambda f, n, s, d: f.__setitem__(n, h5py.SoftLink("/raw"))), "soft link"),
    "virtual dataset": (_replace("raw", _virtual_raw), "virtual dataset"),
    "complex raw": (_replace("raw", lambda f, n, s, d: f.create_dataset(n, data=np.zeros(s, np.complex64))),
                    "not real numbers"),
    "int64 labels": (_replace("labels", lambda f, n, s, d: f.create_dataset(n, data=np.zeros(s, np.int64))),
                     "expected uint8"),
    "labels beyond classes": (lambda f, d: f["labels"].__setitem__((0, 0, 0), 9), "class 9"),
    "n_classes text": (_attribute("n_classes", "two"), "'n_classes'"),
    "giant chunks": (_replace("weights", lambda f, n, s, d: f.create_dataset(
        n, shape=s, maxshape=(None, None, None), chunks=(64, 4096, 4096), dtype=np.float32)), "chunks of"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_data_file_is_refused(data, capsys, case):
    craft, message = CRAFTED[case]
    with h5py.File(data, "a") as f:
        craft(f, data.parent)
    refused(["data", "info", data], capsys, "d.h5", message, folders=[data.parent])
    refused(["train", "--data", data, "--out", data.parent / "run", *TINY], capsys, message, folders=[data.parent])


def test_huge_attribute_is_refused_unread(tmp_path, capsys):
    """A 20 MB attribute (dense storage, latest file format) where a list of names belongs."""
    with h5py.File(tmp_path / "d.h5", "w", libver="latest") as f:
        f["raw"] = np.zeros((2, 16, 16), np.uint8)
        f.attrs["class_names"] = np.array([b"x" * 1024] * 20000)
    refused(["data", "info", tmp_path / "d.h5"], capsys, "far more than", folders=[tmp_path])


@pytest.mark.parametrize("fraction", [0.5, 0.9])
def test_truncated_data_file_is_incomplete(data, capsys, fraction):
    raw = data.read_bytes()
    data.write_bytes(raw[:int(len(raw) * fraction)])
    refused(["data", "info", data], capsys, "incomplete HDF5 file", folders=[data.parent])


def test_damaged_chunk_is_found_on_reading(tmp_path, capsys):
    """Data files minunet writes carry a checksum per chunk (Fletcher-32), checked on every read."""
    code_file = tmp_path / "s.h5"
    from tests.cli_runner import run
    code, _, err = run(["data", "synth", "-o", code_file, "--slices", "2", "--size", "64"], capsys)
    assert code == 0, err
    with h5py.File(code_file) as f:
        offset = f["labels"].id.get_chunk_info(1).byte_offset
    raw = bytearray(code_file.read_bytes())
    raw[offset + 100:offset + 1124] = bytes(1024)
    code_file.write_bytes(bytes(raw))
    refused(["data", "info", code_file], capsys, "damaged data file", folders=[tmp_path])


def test_non_finite_and_out_of_range_values_stop_training_in_one_line(tmp_path, capsys):
    """Values no converted file holds (NaN pixels, class ids beyond n_classes in a later slice)."""
    for name, craft, message in (
            ("nan.h5", lambda f: f.__setitem__("raw", np.where(np.arange(48) % 7 == 0, np.nan, 0.5)
                                               .astype(np.float32) * np.ones((3, 48, 48), np.float32)), "NaN"),
            ("cls.h5", lambda f: f["labels"].__setitem__((2, slice(None), slice(None)), 7), "class 7")):
        data = write_data(tmp_path / name, n=3, size=48)
        with h5py.File(data, "a") as f:
            if name == "nan.h5":
                del f["raw"]
            craft(f)
        before = data.read_bytes()
        refused(["train", "--data", data, "--out", tmp_path / f"run-{name}", *TINY, "--no-augment",
                 "--iterations", "20"], capsys, message)
        assert data.read_bytes() == before
        assert "stopped:" in (tmp_path / f"run-{name}" / "train.log").read_text()


def test_huge_declared_dataset_under_a_memory_limit(tmp_path):
    """A small file declaring a 100000 x 100000 slice: prediction and evaluation refuse before reading."""
    with h5py.File(tmp_path / "big.h5", "w") as f:
        f.create_dataset("raw", shape=(1, 100000, 100000), dtype=np.uint8, chunks=(1, 1024, 1024))
        f.create_dataset("labels", shape=(1, 100000, 100000), dtype=np.uint8, chunks=(1, 1024, 1024))
        f.attrs["n_classes"] = 2
    tiny_model(tmp_path / "m.h5")
    code, err = run_limited(["predict", "-m", "m.h5", "big.h5", "-o", "out.tif", "--device", "reference"], tmp_path)
    assert_limited_refusal(code, err, "big.h5", "memory", "block-wise")
    code, err = run_limited(["evaluate", "big.h5:/raw", "big.h5"], tmp_path)
    assert_limited_refusal(code, err, "big.h5", "memory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.h5", "m.h5"]
