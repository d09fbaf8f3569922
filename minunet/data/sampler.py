"""Random training tiles from a minunet data file, with the paper's augmentation.

Tiles are read lazily from the file (one crop per sample, never the whole stack), so stacks
larger than memory work; worker processes can prepare the next tiles while a step runs.
"""
import concurrent.futures as cf
import contextlib
import math
import multiprocessing as mp
import os
import signal
import threading
import time

import h5py
import numpy as np

from minunet.data import augment as aug
from minunet.data.datafile import check_finite, check_labels, normalize, open_dataset
from minunet.data.padding import check_pad, pad_crop
from minunet.data.slices import parse_slices
from minunet.errors import UserError
from minunet.files.hdf5 import translate_errors

_CACHE_BYTES = 64 * 2**20          # HDF5 chunk cache per open file: repeated tiles hit memory
_CROP_SLACK = (2, 3)               # source pixels read beyond a warp's extent: the bicubic support


class TileSampler:
    """Random training tiles from a minunet data file, with the paper's augmentation.

    ``TileSampler(path, slices, in_size, out_size, augment=True, pad="mirror", seed=0, workers=0, rank=0)``

    - ``slices``: indices to draw from (list, or a string for :func:`parse_slices`, None = all).
    - ``in_size``/``out_size``: the network's input and output tile (the margin
      ``(in_size - out_size) / 2`` is context); the caller computes them (minunet.model.geometry).
    - ``augment``: True (paper defaults), False (plain crops) or an
      :class:`minunet.data.augment.AugmentConfig`.
    - ``pad``: ``"mirror"`` or ``"zero"``: what the input tile sees beyond the slice border.
    - ``workers``: background processes that prepare the next samples while the caller trains
      (0: samples are made on demand). Results are identical either way.
    - ``rank``: the data-parallel rank drawing (minunet.training.distributed): each rank draws its
      own stream of samples; rank 0's is the one a single process draws.

    Each sample picks a slice, then an output window position uniformly among those inside the
    slice (a window larger than the slice is centred on it), so every labeled pixel can appear in
    an output window; the input tile's context beyond the border is mirrored or zero. Where a
    rotated or deformed window reaches beyond the border, ``pad="mirror"`` mirrors labels and
    weights with the image (a reflected image is still a valid example); with ``pad="zero"``
    those output pixels get weight 0 (there is no image to learn from).

    ``sample()`` -> ``(image (1,in,in) float32 normalised, labels (out,out) uint8, weights
    (out,out) float32)``; ``batch(n)`` stacks n samples (``(n,1,in,in)``, ``(n,out,out)`` x2).
    Sample k is drawn from its own generator seeded by ``(seed, k)`` (``(seed, k, rank)`` for
    ranks other than 0), so ``state()`` is just
    ``{"seed": seed, "drawn": k}`` (JSON-able) and ``set_state`` resumes exactly, with or without
    workers. ``wait_s`` accumulates the time callers spent waiting for samples.
    Reads crops lazily from HDF5 (the file stays open; ``close()`` or use as a context manager).
    """

    def __init__(self, path, slices, in_size, out_size, augment=True, pad="mirror", seed=0, workers=0, rank=0):
        self.info = open_dataset(path)
        if not self.info.has_labels:
            raise UserError(f"{path}: no /labels (converted with --no-labels); convert it with labels to train")
        check_pad(pad, "pad")
        in_size, out_size = int(in_size), int(out_size)
        if out_size < 1 or in_size < out_size or (in_size - out_size) % 2:
            raise UserError(f"tile sizes in {in_size} / out {out_size}: the input tile must be at least the "
                            "output tile and larger by an even number of pixels")
        self.slices = parse_slices(list(slices) if isinstance(slices, range) else slices, self.info.n_slices)
        self.in_size, self.out_size, self.pad = in_size, out_size, pad
        if augment is True:
            augment = aug.AugmentConfig()
        elif not augment:
            augment = aug.AugmentConfig.off()
        self.config = augment
        self.seed, self.drawn, self.wait_s, self.rank = int(seed), 0, 0.0, int(rank)
        self._args = (str(self.info.path), self.slices, in_size, out_size, augment, pad, self.seed)
        self._file = h5py.File(self.info.path, "r", rdcc_nbytes=_CACHE_BYTES)
        self._raw, self._labels = self._file["raw"], self._file["labels"]
        self._weights = self._file["weights"] if self.info.has_weights else None
        self._gamma_ok = self._raw.dtype != np.float32
        self.workers, self._pool, self._pending = int(workers), None, {}

    def close(self):
        """Stop the workers and close the HDF5 file."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool, self._pending = None, {}
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def state(self):
        """``{"seed": s, "drawn": k}``: the next sample is the k-th of seed s."""
        return {"seed": self.seed, "drawn": self.drawn}

    def set_state(self, state):
        """Restore a :meth:`state` (resume gives the very tiles a run would have drawn)."""
        try:
            self.seed, self.drawn = int(state["seed"]), int(state["drawn"])
        except (KeyError, TypeError, ValueError):
            raise UserError(f"the saved sampler state {str(state)[:60]} is not {{seed, drawn}}; the training "
                            "state in this checkpoint is damaged: start a new run") from None
        self._args = self._args[:-1] + (self.seed,)
        if self._pool is not None:
            for fut in self._pending.values():
                fut.cancel()
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool, self._pending = None, {}

    def _crop(self, ds, i, coords, pad):
        """Read the source region the map ``coords`` (2, h, w) needs; returns (array, origin)."""
        before, after = _CROP_SLACK
        y0 = int(math.floor(coords[0].min())) - before
        x0 = int(math.floor(coords[1].min())) - before
        y1 = int(math.ceil(coords[0].max())) + after
        x1 = int(math.ceil(coords[1].max())) + after
        array = pad_crop(lambda a, b, c, d: ds[i, a:b, c:d], ds.shape[1:], y0, y1, x0, x1, pad)
        return array, np.array([y0, x0], np.float64)[:, None, None]

    def sample_at(self, k):
        """The k-th sample of this sampler's seed (a pure function of seed, k and the rank).

        A damaged chunk, or values no data file minunet writes holds (NaN, class ids beyond the
        file's classes, negative weights), is a one-line UserError naming the file and slice.
        """
        with translate_errors(self.info.path, "data file"):
            return self._sample_at(k)

    def _sample_at(self, k):
        rng = np.random.default_rng([self.seed, k] if self.rank == 0 else [self.seed, k, self.rank])
        cfg = self.config
        i = self.slices[rng.integers(len(self.slices))]
        h, w = self.info.height, self.info.width
        # the output window lies inside the slice when it fits (else it is centred on the slice)
        oy = rng.integers(0, h - self.out_size + 1) if h >= self.out_size else (h - self.out_size) // 2
        ox = rng.integers(0, w - self.out_size + 1) if w >= self.out_size else (w - self.out_size) // 2
        margin = (self.in_size - self.out_size) // 2
        centre = np.array([oy - margin, ox - margin], np.float64) + (self.in_size - 1) / 2.0
        coords = aug.random_coords(rng, self.in_size, cfg) + centre[:, None, None]
        out_coords = aug.center_crop(coords, self.out_size)
        plain = cfg == aug.AugmentConfig.off()        # integer coordinates: exact copies, no filtering

        raw, origin = self._crop(self._raw, i, coords, self.pad)
        where = f"{self.info.path}: slice {i}"
        check_finite(raw, f"{where} of /raw", "reconvert the data from images without them")
        image = normalize(raw)
        tile = aug.warp(image, coords - origin, 0 if plain else 3)
        lab, origin = self._crop(self._labels, i, out_coords, "mirror")
        check_labels(lab, self.info.n_classes, where)
        labels = aug.warp(lab, out_coords - origin, 0)
        if self._weights is not None:
            wts, origin = self._crop(self._weights, i, out_coords, "mirror")
            if not (np.isfinite(wts).all() and (wts >= 0).all()):
                raise UserError(f"{where}: /weights holds NaN, infinite or negative values; reconvert the data")
            weights = aug.warp(wts, out_coords - origin, 0 if plain else 1)
        else:
            weights = np.ones(labels.shape, np.float32)
        if self.pad == "zero":
            outside = ((out_coords[0] < -0.5) | (out_coords[0] > h - 0.5) |
                       (out_coords[1] < -0.5) | (out_coords[1] > w - 0.5))
            weights[outside] = 0.0
        if cfg.brightness or cfg.contrast or cfg.gamma:
            tile = aug.gray_values(tile, rng, cfg, gamma_ok=self._gamma_ok)
        return (tile[None].astype(np.float32, copy=False), labels.astype(np.uint8, copy=False),
                weights.astype(np.float32, copy=False))

    def _fetch(self, k):
        """Sample k from the worker pool, keeping 2 x workers samples in flight ahead of it."""
        starting = self._pool is None
        if starting:
            self._pool = cf.ProcessPoolExecutor(self.workers, mp.get_context("spawn"),
                                                initializer=_worker_init,
                                                initargs=(os.getpid(), self.rank) + self._args)
        with _stop_signals_ignored(starting):          # the first submissions start the workers
            for j in range(k, k + 2 * self.workers + 1):
                if j not in self._pending:
                    self._pending[j] = self._pool.submit(_worker_sample, j)
        return self._pending.pop(k).result()

    def sample(self):
        """The next training sample: (image (1,in,in), labels (out,out), weights (out,out))."""
        start = time.perf_counter()
        out = self._fetch(self.drawn) if self.workers > 0 else self.sample_at(self.drawn)
        self.wait_s += time.perf_counter() - start
        self.drawn += 1
        return out

    def batch(self, n):
        """n samples stacked: images (n,1,in,in) float32, labels (n,out,out) uint8, weights float32."""
        samples = [self.sample() for _ in range(n)]
        return tuple(np.stack(parts) for parts in zip(*samples))


_WORKER = None
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _stop_signals_ignored(active=True):
    """SIGINT and SIGTERM ignored in the block, so that processes started in it inherit that from birth.

    Ctrl-C reaches the terminal's whole process group, and mpiexec passes SIGINT and SIGTERM to
    each rank's group: the training process, not its workers, decides how to stop (finish the
    step, write a checkpoint), and a worker still starting up must not die of them either.
    """
    previous = {}
    if active:
        try:
            previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in _STOP_SIGNALS}
        except ValueError:                  # not the main thread: nothing to change
            pass
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _worker_init(parent, rank, *args):
    """Each worker process opens its own sampler (its own HDF5 handle). It ignores SIGINT and
    SIGTERM (its training process decides how to stop) and exits by itself when that process is
    gone: after a SIGKILL nobody else would stop it."""
    global _WORKER
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    _WORKER = TileSampler(*args, rank=rank)


def _exit_with_parent(parent, every_s=0.25):
    """Exit this process as soon as ``parent`` is no longer its parent (it died; we were adopted)."""
    while os.getppid() == parent:
        time.sleep(every_s)
    os._exit(0)


def _worker_sample(k):
    return _WORKER.sample_at(k)
