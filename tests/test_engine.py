"""The autograd engine: graph order, gradient accumulation, freeing, no_grad, deep graphs."""
import numpy as np
import pytest

from minunet.engine import functional as F
from minunet.engine.autograd import Tensor, no_grad


def leaf(array, device="reference"):
    return Tensor(np.asarray(array, dtype=np.float64), requires_grad=True, device=device)


@pytest.mark.parametrize("device", ["reference", "cpu"])
def test_tensor_used_twice_accumulates(rng, device):
    x = leaf(rng.standard_normal((2, 3)), device)
    y = F.add(F.relu(x), F.scale(x, 2.0))          # d/dx = 1 + 2 where x > 0, 2 elsewhere
    y.backward(np.ones((2, 3)))
    np.testing.assert_allclose(x.grad, np.where(x.data > 0, 3.0, 2.0))
    # Through the backend's sum (the skip connection's case): the gradients of both uses, summed.
    x = leaf(rng.standard_normal((1, 2, 6, 6)), device)
    g_relu, g_scale = rng.standard_normal((2, 1, 2, 6, 6))
    F.add(F.relu(x), F.scale(x, -0.5)).backward(g_relu)
    want = g_relu * (x.data > 0) - 0.5 * g_relu
    np.testing.assert_allclose(x.grad, want, rtol=1e-12, atol=1e-12)


def test_backward_twice_accumulates_into_leaves(rng):
    x = leaf(np.abs(rng.standard_normal(4)) + 1)
    F.scale(x, 5.0).backward(np.ones(4))
    F.scale(x, 5.0).backward(np.ones(4))
    np.testing.assert_allclose(x.grad, 10.0)


def test_deep_graph_does_not_recurse():
    x = leaf(np.ones(3))
    y = x
    for _ in range(20000):                          # far beyond Python's recursion limit
        y = F.scale(y, 1.0)
    y.backward(np.ones(3))
    np.testing.assert_allclose(x.grad, 1.0)


def test_graph_is_freed_after_backward(rng):
    x = leaf(rng.standard_normal((1, 1, 4, 4)))
    y = F.max_pool2d(x)
    node = y.creator
    y.backward(np.ones(y.shape))
    assert node.saved == () and node.inputs == () and y.creator is None


def test_no_grad_records_nothing(rng):
    x = leaf(rng.standard_normal((1, 1, 4, 4)))
    with no_grad():
        y = F.relu(x)
    assert y.creator is None and not y.requires_grad
    with pytest.raises(RuntimeError, match="does not require a gradient"):
        y.backward()


def test_inputs_without_grad_get_none(rng):
    x = Tensor(rng.standard_normal((1, 2, 5, 5)), device="reference")
    w = leaf(rng.standard_normal((3, 2, 3, 3)))
    b = leaf(np.zeros(3))
    y = F.conv2d(x, w, b)
    assert y.creator.needs_input_grad == (False, True, True)
    y.backward(np.ones(y.shape))
    assert x.grad is None and w.grad.shape == w.shape


def test_mixed_devices_refused(rng):
    a = Tensor(np.ones(2), device="reference")
    b = Tensor(np.ones(2), device="cpu")
    with pytest.raises(ValueError, match="different devices"):
        F.add(a, b)
