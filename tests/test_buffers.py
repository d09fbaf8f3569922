"""The CPU backend's buffer cache: reuse only what nothing refers to any more."""
import numpy as np
import pytest

from minunet.kernels.cpu import buffers

BIG = buffers.MIN_BYTES // 4          # float32 elements of the smallest cached array


@pytest.fixture(autouse=True)
def empty_cache(monkeypatch):
    """A clean cache whose arenas are 8 MB (the tests reason about addresses inside them)."""
    monkeypatch.setattr(buffers, "ARENA_BYTES", 8 * buffers.MIN_BYTES)
    buffers.clear()
    yield
    buffers.clear()


def test_freed_buffer_is_handed_out_again():
    a = buffers.empty((2, BIG), np.float32)
    address = a.ctypes.data
    del a
    b = buffers.empty((BIG, 2), np.float32)          # same bytes, another shape
    assert b.ctypes.data == address
    assert b.shape == (BIG, 2) and b.flags.c_contiguous


def test_buffer_with_a_live_view_is_never_reused():
    a = buffers.empty((4, BIG), np.float32)
    views = [a[1:], a.reshape(-1)[::2], a.T, a.view(np.int32)]
    del a
    for _ in range(3):
        b = buffers.empty((4, BIG), np.float32)
        assert not any(np.may_share_memory(b, v) for v in views)
        views.append(b)                               # keep b alive too


def test_random_allocation_sequences_never_alias(rng):
    live = []
    for _ in range(300):
        if live and rng.random() < 0.45:
            live.pop(int(rng.integers(len(live))))
        else:
            rows = int(rng.integers(1, 4))
            a = buffers.empty((rows, BIG), np.float32) if rng.random() < 0.8 else buffers.zeros((rows, BIG), np.float64)
            if rng.random() < 0.5:
                a = a[:, 1:]                          # keep only a view
            live.append(a)
        for i in range(len(live)):
            for j in range(i):
                assert not np.may_share_memory(live[i], live[j])


def test_zeros_are_zero_even_on_reuse():
    a = buffers.empty((3, BIG), np.float32)
    a.fill(7)
    del a
    assert not buffers.zeros((3, BIG), np.float32).any()


def test_small_arrays_bypass_the_cache():
    a = buffers.empty((3, 5), np.float32)
    assert a.shape == (3, 5)
    assert buffers.cached_bytes() == (0, 0)


def test_freed_memory_is_split_and_merged():
    a = buffers.empty((4, BIG), np.float32)
    base = a.ctypes.data
    del a
    x, y = buffers.empty((BIG,), np.float32), buffers.empty((BIG,), np.float32)
    assert {x.ctypes.data, y.ctypes.data} == {base, base + x.nbytes}       # two pieces of one arena
    assert buffers.cached_bytes() == (2 * x.nbytes, 6 * x.nbytes)
    del x, y
    z = buffers.empty((4, BIG), np.float32)                                  # merged again
    assert z.ctypes.data == base


def test_smallest_free_piece_that_fits_is_used():
    large, _keep1 = buffers.empty((BIG * 12 // 10,), np.float32), buffers.empty((BIG,), np.float32)
    small, _keep2 = buffers.empty((BIG * 11 // 10,), np.float32), buffers.empty((BIG,), np.float32)
    holes = large.ctypes.data, small.ctypes.data
    del large, small                                  # holes of 1.2 and 1.1 MB, and the arena's tail
    a = buffers.empty((BIG,), np.float32)
    assert a.ctypes.data == holes[1]
    b = buffers.empty((BIG // 2, 2), np.float32)
    assert b.ctypes.data == holes[0] and b.shape == (BIG // 2, 2)
    c = buffers.empty((BIG * 2,), np.float32)         # only the tail fits
    assert c.ctypes.data not in holes


def test_limit_drops_unused_arenas_and_never_exceeds(monkeypatch):
    monkeypatch.setattr(buffers, "limit_bytes", 3 * buffers.MIN_BYTES)
    a = buffers.empty((2, BIG), np.float32)
    base = a.ctypes.data
    del a
    one = buffers.empty((1, BIG), np.float32)                                # a piece of the 2 MB arena
    assert one.ctypes.data == base
    over = buffers.empty((3, BIG), np.float32)            # 2 MB free is too small, a new arena too big
    assert buffers.cached_bytes() == (one.nbytes, 2 * one.nbytes)           # so: a plain array
    del one, over
    again = buffers.empty((3, BIG), np.float32)            # the whole arena is free again
    assert buffers.cached_bytes() == (again.nbytes, 0)
    monkeypatch.setattr(buffers, "limit_bytes", 4 * buffers.MIN_BYTES)
    del again
    bigger = buffers.empty((4, BIG), np.float32)           # the idle 3 MB arena is dropped for a 4 MB one
    assert buffers.cached_bytes() == (bigger.nbytes, 0)
