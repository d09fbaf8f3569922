"""The rules with one owner each: devices, file specs, output formats, number formats, alignment."""
import numpy as np
import pytest

from minunet.engine import devices
from minunet.errors import UserError
from minunet.files.specs import parse_spec, same_file
from minunet.formatting import fmt
from minunet.inference import outputs
from minunet.model import geometry


def test_auto_device_never_picks_the_simulator(monkeypatch):
    monkeypatch.setattr(devices, "_no_gpu_driver", lambda: False)       # as on a machine with a driver
    monkeypatch.setattr(devices, "cuda_status", lambda: (True, "Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1)"))
    assert devices.resolve_device("auto") == "cpu"
    assert devices.resolve_device("cuda") == "cuda"                 # asked for explicitly: allowed
    monkeypatch.setattr(devices, "cuda_status", lambda: (True, "NVIDIA H200"))
    assert devices.resolve_device("auto") == "cuda"
    monkeypatch.setattr(devices, "cuda_status", lambda: (False, "cupy"))
    assert devices.resolve_device("auto") == "cpu"
    with pytest.raises(UserError, match=r"--device cuda: no usable GPU here \(missing: cupy\)"):
        devices.resolve_device("cuda")
    with pytest.raises(UserError, match="--device tpu: unknown device"):
        devices.resolve_device("tpu")
    assert devices.resolve_device("reference") == "reference"
    monkeypatch.setattr(devices, "_no_gpu_driver", lambda: True)        # no driver: CUDA is never imported
    monkeypatch.setattr(devices, "cuda_status", lambda: pytest.fail("imported the CUDA stack"))
    assert devices.resolve_device("auto") == "cpu"


@pytest.mark.parametrize("spec, path, kind, dataset", [
    ("a.h5", "a.h5", "hdf5", None), ("dir/a.hdf5:/x/y", "dir/a.hdf5", "hdf5", "/x/y"),
    ("A.HDF:/raw", "A.HDF", "hdf5", "/raw"), ("v.zarr", "v.zarr", "zarr", None),
    ("v.zarr/", "v.zarr", "zarr", None), ("v.ome.zarr:/0", "v.ome.zarr", "zarr", "/0"),
    ("s/*.png", "s/*.png", "file", None), ("x.tif", "x.tif", "file", None),
])
def test_specs(spec, path, kind, dataset):
    parsed = parse_spec(spec)
    assert (str(parsed.path), parsed.kind, parsed.dataset) == (path, kind, dataset)


def test_same_file_sees_through_datasets_and_paths(tmp_path):
    (tmp_path / "d.h5").write_bytes(b"")
    assert same_file(f"{tmp_path}/d.h5:/raw", f"{tmp_path}/./d.h5")
    assert not same_file(f"{tmp_path}/d.h5", f"{tmp_path}/e.h5")


def test_output_formats():
    probs = np.random.default_rng(0).random((2, 3, 4, 5)).astype(np.float32)
    assert outputs.default_format(2) == "foreground" and outputs.default_format(7) == "labels"
    np.testing.assert_array_equal(outputs.format_probabilities(probs, "foreground", 1), probs[:, 1])
    labels = outputs.format_probabilities(probs, "labels", 1)
    assert labels.dtype == np.uint8 and np.array_equal(labels, probs.argmax(1))
    assert outputs.output_layout((2, 4, 5), 3, "probs") == ((2, 3, 4, 5), np.float32)
    assert outputs.output_layout((4, 5), 3, "labels") == ((4, 5), np.uint8)
    with pytest.raises(UserError, match="--output-format logits: use one of foreground, labels, probs"):
        outputs.check_format("logits")


def test_number_format():
    assert fmt(None) == "-" and fmt(0.123456) == "0.1235" and fmt(1234567.0) == "1.235e+06"


@pytest.mark.parametrize("depth", [2, 3, 5])
def test_alignment_is_the_pooling_grid(depth):
    """Tiles stepping by the alignment see the same pooling windows: every valid input size
    differs from the next by a multiple of it."""
    align = geometry.alignment(depth)
    assert align == 2 ** (depth - 1)
    sizes = geometry.valid_sizes(1, 600, depth)
    assert all((b - a) % align == 0 for a, b in zip(sizes, sizes[1:]))
