"""Large kernel outputs reused across training steps: a small caching allocator for NumPy arrays.

Why: every training step allocates the same large arrays again (activations, gradients, the
padded and widened copies of gy). Allocations that large come from fresh ``mmap`` pages, so the
operating system faults in and zeroes every page again, every step (about 29,000 page faults and
0.7-1.9 s of system time per width-64 step here). Handing the same memory out again removes that
cost. (PyTorch's CPU allocator does not cache, so its step pays the same price unless the
process's ``malloc`` is tuned; docs/performance.md gives both figures.)

How: the cache owns one large byte array (an "arena"; more if it fills up) and hands out pieces
of it, best fit, splitting a free piece and merging neighbours when pieces are freed, so memory
freed by one layer serves the next layer's differently sized arrays. The arena reserves address
space only: pages use memory once written, so the resident memory is what the pieces in use
have touched. (Caching whole buffers by exact size instead held 1.8x the live memory of a
width-64 step, and separate exact-size arenas 1.7x: freed pieces could not merge.) Each piece handed out is an array made with
``np.frombuffer`` on a ``memoryview`` of the arena; every view, reshape or slice of it refers to
that array (NumPy stops its base chain at the memoryview), so the piece is free again exactly when
the cache holds the only reference to it, and its reference count says so. No release call is
needed, and nothing can be handed out again while any view of it is alive, whoever holds it.

Only arrays of at least ``MIN_BYTES`` are served (small ones are cheap to allocate). At most
``limit_bytes`` of arenas are kept: when a new arena would exceed it, arenas with nothing in use
are dropped, least recently used first, and if that is not enough the request gets a plain
``np.empty``.
"""
import math
import os
import sys
import threading

import numpy as np

MIN_BYTES = 1 << 20
ALIGN = 64             # bytes: every piece starts on a cache line
ARENA_BYTES = 2 << 30  # address space of a new arena at least; only written pages use memory
limit_bytes = int(os.environ.get("MINUNET_CPU_CACHE_MB", "4096")) << 20

_lock = threading.Lock()
_arenas = []           # [_Arena]
_tick = 0


class _Arena:
    """One byte array and its pieces, in address order: [offset, size, holder or None (free)]."""

    def __init__(self, nbytes):
        self.array = np.empty(nbytes, np.uint8)
        self.pieces = [[0, nbytes, None]]
        self.last_use = 0

    @property
    def nbytes(self):
        return self.array.nbytes

    def reclaim(self):
        """Mark pieces nothing refers to any more as free, and merge free neighbours."""
        used = [p for p in self.pieces if p[2] is not None]
        freed = False
        for piece, free in zip(used, _free_flags([p[2] for p in used])):
            if free:
                piece[2] = None
                freed = True
        if not freed:
            return
        merged = []
        for piece in self.pieces:
            if merged and merged[-1][2] is None and piece[2] is None:
                merged[-1][1] += piece[1]
            else:
                merged.append(piece)
        self.pieces = merged

    def in_use(self):
        return any(p[2] is not None for p in self.pieces)

    def take(self, index, nbytes):
        """Hand out the first ``nbytes`` of free piece ``index`` as a byte array; the rest stays free."""
        piece = self.pieces[index]
        size = -(-nbytes // ALIGN) * ALIGN
        if piece[1] > size:
            self.pieces.insert(index + 1, [piece[0] + size, piece[1] - size, None])
            piece[1] = size
        holder = np.frombuffer(self.array.data[piece[0]:piece[0] + size], np.uint8)
        piece[2] = holder
        return holder[:nbytes]


def _free_flags(holders):
    """For each array in ``holders``: whether only the cache refers to it.

    Every reference-count test goes through this one loop; ``_calibrate`` measures, with the
    same code, the count of a piece that nothing outside the cache refers to (its piece record,
    the ``holders`` list, the loop variable, the call's argument).
    """
    flags = []
    for holder in holders:
        flags.append(sys.getrefcount(holder) <= _FREE_REFCOUNT)
    return flags


def _calibrate():
    piece = [0, 1, np.frombuffer(np.empty(1, np.uint8).data, np.uint8)]
    holders = [piece[2]]
    for holder in holders:
        return sys.getrefcount(holder)


_FREE_REFCOUNT = _calibrate()


def empty(shape, dtype):
    """An uninitialised C-contiguous array, from the cache's free memory when it has a piece that fits."""
    global _tick
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < MIN_BYTES or limit_bytes <= 0:
        return np.empty(shape, dtype)
    with _lock:
        _tick += 1
        arena, index = _best_fit(nbytes)
        if arena is None:
            arena_bytes = max(nbytes, min(ARENA_BYTES, limit_bytes))
            if not _trim(limit_bytes - arena_bytes):
                return np.empty(shape, dtype)
            arena, index = _Arena(arena_bytes), 0
            _arenas.append(arena)
        arena.last_use = _tick
        return arena.take(index, nbytes).view(dtype).reshape(shape)


def _best_fit(nbytes):
    """(arena, piece index) of the smallest free piece of at least ``nbytes``; (None, None) if none."""
    best, best_size = (None, None), None
    for arena in _arenas:
        arena.reclaim()
        for index, piece in enumerate(arena.pieces):
            if piece[2] is None and piece[1] >= nbytes and (best_size is None or piece[1] < best_size):
                best, best_size = (arena, index), piece[1]
    return best


def zeros(shape, dtype):
    """A zero-filled C-contiguous array, from the cache when a piece fits."""
    a = empty(shape, dtype)
    a.fill(0)
    return a


def empty_like(a):
    """``empty(a.shape, a.dtype)``."""
    return empty(a.shape, a.dtype)


def _trim(budget):
    """Drop arenas with nothing in use, least recently used first, until at most ``budget`` bytes remain.

    Returns whether that was reached (arenas in use cannot be dropped).
    """
    total = sum(a.nbytes for a in _arenas)
    for arena in sorted(_arenas, key=lambda a: a.last_use):
        if total <= budget:
            break
        arena.reclaim()
        if not arena.in_use():
            _arenas.remove(arena)
            total -= arena.nbytes
    return total <= budget


def clear():
    """Drop every arena with nothing in use."""
    with _lock:
        _trim(0)


def cached_bytes():
    """(bytes in use, bytes free) of the memory the cache owns."""
    with _lock:
        used = free = 0
        for arena in _arenas:
            arena.reclaim()
            for _, size, holder in arena.pieces:
                if holder is None:
                    free += size
                else:
                    used += size
        return used, free
