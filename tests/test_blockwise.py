"""Block-wise prediction on Dask equals in-memory prediction, resumes, runs on a cluster, fails clearly."""
import os

import numpy as np
import pytest

pytest.importorskip("dask.array")
zarr = pytest.importorskip("zarr")

from minunet.data.datafile import normalize  # noqa: E402
from minunet.errors import UserError  # noqa: E402
from minunet.inference import blockwise, tiling, volume_stores  # noqa: E402
from minunet.model.checkpoint import load_model, save_checkpoint  # noqa: E402
from minunet.model.unet import UNet  # noqa: E402
from tests.backends import fast_device  # noqa: E402

DEVICE = fast_device()
BLOCK = 40          # a multiple of 2^(depth-1) = 4, not of the 52 tile's 12-pixel output
TILE = 52


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """A tiny depth-3, width-3 U-Net with random weights, saved as a checkpoint."""
    path = tmp_path_factory.mktemp("model") / "tiny.h5"
    save_checkpoint(path, UNet(depth=3, width=3, device=DEVICE, seed=5))
    return str(path)


def write_zarr(path, array, chunks):
    z = zarr.create_array(store=str(path), shape=array.shape, chunks=chunks, dtype=array.dtype)
    z[...] = array
    return str(path)


def in_memory(model_path, raw, pad):
    """What ``minunet predict`` computes: (N, K, H, W) probabilities of the normalised stack."""
    model = load_model(model_path, DEVICE)[0]
    stack = normalize(raw)
    return tiling.predict_stack(model, stack if stack.ndim == 3 else stack[None], pad=pad)


def run(model_path, spec, out, **kw):
    kw = {"block": BLOCK, "tile": TILE, "device": DEVICE, "scheduler": "local", **kw}
    return blockwise.predict_volume(model_path, spec, str(out), **kw)


@pytest.mark.parametrize("pad", ["mirror", "zero"])
def test_volume_in_blocks_equals_in_memory(tmp_path, model_path, rng, pad):
    """3-D uint8 Zarr volume, 3 x 3 blocks per slice (the last ones partial), chunks unlike the blocks."""
    raw = rng.integers(0, 256, (2, 97, 110), dtype=np.uint8)
    spec = write_zarr(tmp_path / "in.zarr", raw, (1, 32, 48))
    expected = in_memory(model_path, raw, pad)
    seen = []
    result = run(model_path, spec, tmp_path / "probs.zarr", pad=pad, output_format="probs",
                 progress=lambda done, total: seen.append((done, total)))
    assert result["blocks"] == 2 * 3 * 3 and result["computed"] == 18 and result["tile"] == TILE
    assert seen[0] == (0, 18) and seen[-1] == (18, 18) and len(seen) == 19
    out = zarr.open_array(str(tmp_path / "probs.zarr"), mode="r")
    assert out.shape == (2, 2, 97, 110) and out.chunks == (1, 2, BLOCK, BLOCK) and out.dtype == np.float32
    assert np.abs(out[...] - expected).max() < 1e-5

    labels = run(model_path, spec, tmp_path / "labels.zarr", pad=pad, output_format="labels")
    out = zarr.open_array(labels["output"], mode="r")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[...], expected.argmax(axis=1))


def test_hdf5_image_with_chosen_tile(tmp_path, model_path, rng):
    """A 2-D float32 HDF5 dataset, the tile chosen automatically, foreground written (H, W)."""
    import h5py
    raw = rng.standard_normal((83, 61)).astype(np.float32)
    with h5py.File(tmp_path / "img.h5", "w") as f:
        f.create_dataset("em/raw", data=raw, chunks=(16, 16))
    result = run(model_path, f"{tmp_path / 'img.h5'}:/em/raw", tmp_path / "fg.zarr", tile=None, block=36,
                 output_format="foreground", scheduler="synchronous")
    assert result["blocks"] == 3 * 2
    out = zarr.open_array(result["output"], mode="r")[...]
    assert out.shape == (83, 61)
    assert np.abs(out - in_memory(model_path, raw, "mirror")[0, 1]).max() < 1e-5


def test_resume_skips_finished_blocks(tmp_path, model_path, rng):
    raw = rng.integers(0, 256, (1, 70, 90), dtype=np.uint8)
    spec = write_zarr(tmp_path / "in.zarr", raw, (1, 70, 90))
    out_path = tmp_path / "out.zarr"
    assert run(model_path, spec, out_path)["computed"] == 6
    full = zarr.open_array(str(out_path), mode="r")[...]

    out = zarr.open_array(str(out_path), mode="r+")
    out[0, 0:40, 40:80] = 0                                  # block 0.0.1: data lost, marker removed
    os.remove(out_path / volume_stores.DONE_DIR / "0.0.1")
    out[0, 40:70, 0:40] = 7                                  # block 0.1.0: marker kept -> must be skipped
    result = run(model_path, spec, out_path, resume=True)
    assert (result["computed"], result["skipped"]) == (1, 5)
    again = zarr.open_array(str(out_path), mode="r")[...]
    np.testing.assert_array_equal(again[0, 0:40, 40:80], full[0, 0:40, 40:80])
    assert (again[0, 40:70, 0:40] == 7).all()
    assert run(model_path, spec, out_path, resume=True)["computed"] == 0

    with pytest.raises(UserError, match="cannot resume.*block 40 vs 20"):
        run(model_path, spec, out_path, resume=True, block=20)
    with pytest.raises(UserError, match="output exists; pass --resume"):
        run(model_path, spec, out_path)
    assert run(model_path, spec, out_path, overwrite=True)["computed"] == 6


def test_distributed_cluster_through_its_address(tmp_path, model_path, rng):
    """A real LocalCluster, 2 worker processes on loopback; each worker loads the model once."""
    distributed = pytest.importorskip("distributed")
    raw = rng.integers(0, 65536, (2, 50, 75), dtype=np.uint16)
    spec = write_zarr(tmp_path / "in.zarr", raw, (1, 25, 25))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  protocol="tcp://", dashboard_address=None) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        result = run(model_path, spec, tmp_path / "out.zarr", scheduler=cluster.scheduler_address,
                     output_format="probs")
        with distributed.Client(cluster.scheduler_address) as client:
            models = client.run(lambda: len(blockwise._MODELS))
    assert result["computed"] == 2 * 2 * 2 and len(models) == 2
    assert all(n <= 1 for n in models.values()) and sum(models.values()) >= 1
    out = zarr.open_array(result["output"], mode="r")[...]
    assert np.abs(out - in_memory(model_path, raw, "mirror")).max() < 1e-5


def test_clear_errors(tmp_path, model_path, rng):
    spec = write_zarr(tmp_path / "in.zarr", rng.integers(0, 256, (30, 30), dtype=np.uint8), (30, 30))
    out = tmp_path / "out.zarr"
    with pytest.raises(UserError, match="no such Zarr store"):
        run(model_path, str(tmp_path / "missing.zarr"), out)
    with pytest.raises(UserError, match="no such HDF5 file"):
        run(model_path, f"{tmp_path / 'missing.h5'}:/raw", out)
    cube = write_zarr(tmp_path / "4d.zarr", np.zeros((2, 2, 8, 8), np.uint8), (1, 1, 8, 8))
    with pytest.raises(UserError, match=r"shape \(2, 2, 8, 8\) is neither an image"):
        run(model_path, cube, out)
    with pytest.raises(UserError, match="--block 30: must be a multiple of 4.*use 28 or 32"):
        run(model_path, spec, out, block=30)
    with pytest.raises(UserError, match="--tile: tile size 50 is not valid"):
        run(model_path, spec, out, tile=50)
    with pytest.raises(UserError, match="--scheduler nowhere"):
        run(model_path, spec, out, scheduler="nowhere")
    with pytest.raises(UserError, match="--resume and --overwrite"):
        run(model_path, spec, out, resume=True, overwrite=True)
    (tmp_path / "plain.zarr").mkdir()
    with pytest.raises(UserError, match="not a Zarr store"):
        run(model_path, spec, tmp_path / "plain.zarr", overwrite=True)
    assert (tmp_path / "plain.zarr").is_dir()
    with pytest.raises(UserError, match="writes a Zarr store; name the output NAME.zarr"):
        run(model_path, spec, tmp_path / "out.tif")
    assert volume_stores.wants_blockwise("em.zarr", "x.tif") and volume_stores.wants_blockwise("em.h5:/raw", "o.zarr")
    assert not volume_stores.wants_blockwise("em.h5:/raw", "o.h5") and not volume_stores.wants_blockwise("a.tif", "b.tif")
    import h5py
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["other"] = np.zeros((4, 4))
    with pytest.raises(UserError, match=r"no dataset /raw; the file has \['/other'\]"):
        run(model_path, str(tmp_path / "x.h5"), out)


def test_memory_benchmark_runs_small(tmp_path):
    """benchmarks/blockwise.py end to end on a tiny volume (the documented figures use the defaults)."""
    from benchmarks import blockwise as bench
    r = bench.run(slices=2, size=300, block=128, budget_gb=1.0, depth=2, width=1, folder=str(tmp_path))
    assert r["blocks"] == 2 * 3 * 3 and r["under_budget"] and 0 < r["peak_rss_bytes"] < 2 ** 30
    assert r["mpx_per_s_per_core"] > 0 and list(tmp_path.iterdir()) == []      # scratch removed
