"""The training loop: run directory, exact resume, NaN handling, deep supervision, learning.

Tiny networks (depth 3, width 4-8, 92-pixel tiles) on small synthetic HDF5 files made here, so
the whole module runs in seconds on the CPU backend.
"""
import csv
import hashlib
import json

import h5py
import numpy as np
import pytest
from scipy import ndimage

from minunet.engine.devices import resolve_device
from minunet.errors import UserError
from minunet.model.checkpoint import load_checkpoint, load_model
from minunet.training import config as C
from minunet.training import supervision
from minunet.training import trainer as T
from tests.backends import fast_device

DEVICE = fast_device()


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny kernels on a shared machine run fastest (and steadiest) on one thread."""
    try:
        import numba
    except ImportError:
        yield
        return
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(previous)


def cells(rng, size, n_cells=10):
    """An EM-like slice: Voronoi cells (label 1) split by 2-pixel membranes (label 0), noisy gray values."""
    yy, xx = np.mgrid[:size, :size]
    centres = rng.uniform(0, size, (n_cells, 2))
    d = np.sort(np.hypot(yy[None] - centres[:, 0, None, None], xx[None] - centres[:, 1, None, None]), axis=0)
    membrane = d[1] - d[0] < 2.0
    raw = np.where(membrane, 70.0, 170.0) + rng.normal(0, 20, (size, size))
    raw = ndimage.gaussian_filter(raw, 0.7)
    return np.clip(raw, 0, 255).astype(np.uint8), (~membrane).astype(np.uint8)


def write_data(path, n=5, size=64, seed=0):
    """A tiny data file in minunet's HDF5 layout: /raw, /labels, /weights (w = 3 on membranes)."""
    rng = np.random.default_rng(seed)
    raw, labels = zip(*(cells(rng, size) for _ in range(n)))
    labels = np.stack(labels)
    with h5py.File(path, "w") as f:
        f["raw"] = np.stack(raw)
        f["labels"] = labels
        f["weights"] = np.where(labels == 0, 3.0, 1.0).astype(np.float32)
        f.attrs["n_classes"] = 2
    return path


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("data") / "tiny.h5")


def config(data_file, out, **kw):
    settings = dict(data=str(data_file), out=str(out), device=DEVICE, iterations=6, depth=3, width=4,
                    tile=92, val_every=3, val_slices="4", workers=0)
    settings.update(kw)
    return C.TrainConfig(**settings)


def params(model):
    return {name: p.numpy().copy() for name, p in model.named_parameters()}


# ----------------------------------------------------------------------------- deep-supervision targets

@pytest.mark.parametrize("up_kernel", [2, 4])
def test_coarse_positions_are_centred_blocks(up_kernel):
    from minunet.model.geometry import check_tile
    geo = check_tile(188, depth=4, up_kernel=up_kernel)
    out = geo.output_size
    for i, size in enumerate(geo.decoder_sizes[:-1]):
        levels_up = len(geo.decoder_sizes) - 1 - i
        pos = supervision.coarse_positions(size, levels_up, up_kernel)
        assert np.allclose(np.diff(pos), 2 ** levels_up)                    # one block per coarse pixel
        assert np.allclose(pos + pos[::-1], out - 1)                        # centred on the output tile
        assert pos[0] <= 0 and pos[-1] >= out - 1                          # covers the whole tile


def test_coarse_targets_take_the_block_centre_and_ignore_outside():
    labels = np.arange(16 * 16, dtype=np.int64).reshape(1, 16, 16) % 7
    weights = np.arange(16 * 16, dtype=np.float32).reshape(1, 16, 16)
    # A coarse map of 10 pixels one level up: positions 2j - 1.5 -> rows -1 (outside), 1, 3, ..., 15, 17 (outside)
    idx = supervision.coarse_index(10, 1, 16, up_kernel=2)
    assert idx.tolist() == [-1, 1, 3, 5, 7, 9, 11, 13, 15, -1]
    lab, wgt = supervision.coarse_targets(labels.astype(np.uint8), weights, idx)
    assert lab.shape == wgt.shape == (1, 10, 10)
    assert lab[0, 0].tolist() == [supervision.IGNORE] * 10 and (wgt[0, :, -1] == 0).all()
    assert lab[0, 1, 1] == labels[0, 1, 1] and wgt[0, 2, 3] == weights[0, 3, 5]


# ----------------------------------------------------------------------------- the run directory

def test_run_directory(data_file, tmp_path):
    out = tmp_path / "run"
    trainer = T.Trainer(config(data_file, out))
    result = trainer.run(handle_signals=False)
    assert result.reason == "iterations" and result.iteration == 6
    assert {p.name for p in out.iterdir()} >= {"config.json", "checkpoint.h5", "best.h5", "metrics.csv",
                                               "curves.png", "train.log"}
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["iteration", "elapsed_s", "train_loss", "val_pixel_error", "val_rand_error"]
    assert [int(r[0]) for r in rows[1:]] == [1, 2, 3, 4, 5, 6]              # a loss row each step
    validated = [r for r in rows[1:] if r[3]]
    assert [int(r[0]) for r in validated] == [3, 6]
    assert all(0 <= float(v) <= 1 for r in validated for v in r[3:]) and all(float(r[2]) > 0 for r in rows[1:])
    record = json.loads((out / "config.json").read_text())
    assert record["data_sha256"] == hashlib.sha256(data_file.read_bytes()).hexdigest()
    default = C.TrainConfig.optimizer
    assert record["settings"]["optimizer"] == default and record["settings"]["lr"] == C.DEFAULT_LR[default]
    assert record["settings"]["train_slices"] == "0-3" and {"minunet", "numpy"} <= set(record["versions"])
    ckpt = load_checkpoint(out / "checkpoint.h5")
    assert ckpt.iteration == 6 and {"dropout", "sampler"} <= set(ckpt.rng)
    best = load_checkpoint(out / "best.h5")
    assert best.iteration == result.best_iteration and best.extra["best_score"] == result.best_score
    model, _ = load_model(out / "best.h5", device=DEVICE)
    assert model.width == 4 and model.depth == 3
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "finished at iteration 6" in (out / "train.log").read_text()


def test_refuses_to_overwrite_a_run(data_file, tmp_path):
    T.Trainer(config(data_file, tmp_path, iterations=1)).run(handle_signals=False)
    with pytest.raises(UserError, match="--resume"):
        T.Trainer(config(data_file, tmp_path, iterations=2))
    with pytest.raises(UserError, match="--width 8.*--width 4"):
        C.resume_config(tmp_path, width=8, iterations=2)


# ----------------------------------------------------------------------------- exact resume

@pytest.mark.parametrize("optimizer,deep", [("sgd", False), ("adam", True)])
def test_resume_is_bitwise(data_file, tmp_path, optimizer, deep):
    """N, stop, resume, M iterations == N + M in one go; sampling workers (0, 1, 2) change nothing."""
    kw = dict(optimizer=optimizer, deep_supervision=deep, val_every=4)
    one_go = T.Trainer(config(data_file, tmp_path / "a", iterations=7, workers=0, **kw))
    one_go.run(handle_signals=False)

    first = T.Trainer(config(data_file, tmp_path / "b", iterations=3, workers=1, **kw))
    first.run(handle_signals=False)
    first.close()
    resumed = T.Trainer(C.resume_config(tmp_path / "b", iterations=7, workers=2), resume=True)
    assert resumed.iteration == 3 and resumed.config.workers == 2
    resumed.run(handle_signals=False)
    resumed.close()

    a, b = params(one_go.model), params(resumed.model)
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    for key, value in one_go.optimizer.state().items():
        assert np.array_equal(np.asarray(value), np.asarray(resumed.optimizer.state()[key])), key
    assert one_go.sampler.state() == resumed.sampler.state()
    ca, cb = load_checkpoint(tmp_path / "a" / "checkpoint.h5"), load_checkpoint(tmp_path / "b" / "checkpoint.h5")
    assert ca.rng == cb.rng and ca.iteration == cb.iteration == 7


def test_stop_request_checkpoints_the_current_step(data_file, tmp_path):
    import signal

    def stop_after_two(trainer, loss):
        if trainer.iteration == 2:
            trainer.stop_signal = signal.SIGINT
    trainer = T.Trainer(config(data_file, tmp_path, iterations=50))
    result = trainer.run(progress=stop_after_two, handle_signals=False)
    assert result.reason == "signal" and result.signum == signal.SIGINT and result.iteration == 2
    assert load_checkpoint(tmp_path / "checkpoint.h5").iteration == 2
    assert "--resume" in (tmp_path / "train.log").read_text()


# ----------------------------------------------------------------------------- NaN

def test_nan_stops_and_keeps_the_last_good_checkpoint(data_file, tmp_path):
    T.Trainer(config(data_file, tmp_path, iterations=3)).run(handle_signals=False)
    before = load_checkpoint(tmp_path / "checkpoint.h5")
    trainer = T.Trainer(C.resume_config(tmp_path, iterations=30, lr=1e4), resume=True)
    with pytest.raises(T.TrainingDiverged) as err:
        trainer.run(handle_signals=False)
    message = str(err.value)
    assert "iteration" in message and "--lr" in message and "checkpoint.h5" in message and "\n" not in message
    after = load_checkpoint(tmp_path / "checkpoint.h5")
    assert after.iteration == before.iteration == 3
    for name in before.params:
        assert np.array_equal(before.params[name], after.params[name])


def test_nan_before_any_checkpoint(data_file, tmp_path):
    with pytest.raises(T.TrainingDiverged, match="no checkpoint was written yet.*--lr"):
        T.Trainer(config(data_file, tmp_path, iterations=30, val_every=100, lr=1e4)).run(handle_signals=False)


# ----------------------------------------------------------------------------- losses and learning

def test_deep_supervision_trains_every_head(data_file, tmp_path):
    trainer = T.Trainer(config(data_file, tmp_path, depth=4, tile=140, width=4, dropout=0.0, deep_supervision=True,
                               aux_weights=[0.25, 0.5], optimizer="adam", lr=3e-3, iterations=1,
                               augment=False))
    assert len(trainer.aux) == 2
    image, labels, weights = trainer.sampler.batch(1)
    first = trainer.loss(image, labels, weights)
    first.backward()
    assert all(p.grad is not None and np.abs(np.asarray(p.grad)).sum() > 0 for h in trainer.model.aux_heads for p in h.parameters())
    losses = [trainer.step() for _ in range(40)]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8]), losses


def test_aux_weights_must_match_the_levels(data_file, tmp_path):
    with pytest.raises(UserError, match="give 1 weights"):
        T.Trainer(config(data_file, tmp_path, deep_supervision=True, aux_weights=[1.0, 1.0]))
    with pytest.raises(UserError, match="--deep-supervision"):
        T.Trainer(config(data_file, tmp_path, aux_weights=[1.0]))


def test_a_small_net_learns(data_file, tmp_path):
    """The default recipe (SGD, momentum 0.99, default lr, dropout, augmentation) learns the cells."""
    trainer = T.Trainer(config(data_file, tmp_path, width=8, iterations=150, val_every=150))
    losses = []
    result = trainer.run(progress=lambda t, loss: losses.append(loss), handle_signals=False)
    assert np.mean(losses[-20:]) < 0.6 * np.mean(losses[:20]), (np.mean(losses[:20]), np.mean(losses[-20:]))
    with open(tmp_path / "metrics.csv", newline="") as f:
        last = list(csv.DictReader(f))[-1]
    assert float(last["val_pixel_error"]) < 0.1 and result.best_score < 0.5


# ----------------------------------------------------------------------------- bad input

def test_bad_inputs(data_file, tmp_path):
    with pytest.raises(UserError, match="no such file"):
        T.Trainer(config(tmp_path / "missing.h5", tmp_path / "r"))
    with pytest.raises(UserError, match="use 88 or 92"):
        T.Trainer(config(data_file, tmp_path / "r", tile=90))
    with pytest.raises(UserError, match="--iterations N or --minutes M"):
        T.Trainer(config(data_file, tmp_path / "r", iterations=None))
    with pytest.raises(UserError, match="--val-slices.*out of range"):
        T.Trainer(config(data_file, tmp_path / "r", val_slices="3-9"))
    with pytest.raises(UserError, match="--classes"):
        T.Trainer(config(data_file, tmp_path / "r", classes=1))
    assert not (tmp_path / "r").exists()          # nothing written for a run that never started


def test_tile_too_large_for_memory(data_file, tmp_path, monkeypatch):
    monkeypatch.setattr("minunet.training.memory.memory_budget", lambda device: 2 ** 20)
    with pytest.raises(UserError, match=r"--tile 92 .* GiB.*--width|--tile 92 .* GiB.*use --tile"):
        T.Trainer(config(data_file, tmp_path, tile=92))


def test_cuda_without_a_gpu():
    try:
        from minunet.kernels import cuda
        ok = cuda.available()[0]
    except (ImportError, AttributeError):
        ok = False
    if ok:
        pytest.skip("a GPU is usable here")
    with pytest.raises(UserError, match="--device cuda"):
        resolve_device("cuda")
    assert resolve_device("auto") == "cpu"


# ----------------------------------------------------------------------------- degenerate models

def test_a_constant_prediction_is_called_degenerate(data_file):
    """Calling every pixel one class scores exactly the baseline and is recognised as such; the
    truth itself is not."""
    from minunet.training.validation import Validation, degenerate_reason
    validation = Validation(data_file, [4], classes=2)
    baseline = validation.baseline()
    labels = validation.labels.astype(np.int64)
    constant = np.zeros((1, 2) + labels.shape[1:], np.float32)
    constant[:, 1] = 1.0
    scores = validation.score(constant)
    assert scores.majority_share == 1.0 and scores.key == pytest.approx(baseline.key)
    assert "one class" in degenerate_reason(scores, baseline)
    perfect = np.stack([labels == 0, labels == 1], axis=1).astype(np.float32)
    scores = validation.score(perfect)
    assert scores.rand_error < baseline.rand_error and degenerate_reason(scores, baseline) is None


def test_log_and_summary_say_when_the_model_learned_nothing(data_file, tmp_path, monkeypatch):
    from minunet.training.validation import Scores
    trainer = T.Trainer(config(data_file, tmp_path, iterations=3))
    baseline = trainer.validation.baseline()
    stuck = Scores(baseline.pixel_error, baseline.rand_error, baseline.key, 0.995, 0.5)
    monkeypatch.setattr(trainer, "validate", lambda: stuck)
    trainer.run(handle_signals=False)
    log = (tmp_path / "train.log").read_text()
    assert "warning: the model has not learned to separate the classes yet" in log and "--optimizer adam" in log
    assert "NO BETTER than that baseline" in trainer.summary() and "NO BETTER" in log
