"""The autograd engine: tensors that remember how they were made, and a reverse walk.

Modelled on micrograd's clarity and on the ``Function.forward/backward`` split of PyTorch and
Chainer. A :class:`Function` is one op node: ``forward`` computes on raw backend arrays and keeps
only what ``backward`` needs (``save_for_backward``); ``backward`` maps the output gradient to one
gradient per tensor input. :meth:`Tensor.backward` sorts the graph topologically without
recursion, walks it in reverse, accumulates gradients of tensors used more than once, and
frees each node's saved arrays and each intermediate gradient as soon as they are consumed.

The engine knows nothing of devices: a tensor names its backend ("cpu", "cuda", "reference"),
and ops ask that backend (``minunet.kernels``) for the kernels and the array module.
"""
import contextlib

import numpy as np

from minunet.kernels import get_backend

_grad_enabled = True


@contextlib.contextmanager
def no_grad():
    """Within this block ops record no graph (inference, optimiser updates)."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


def is_grad_enabled():
    """Whether ops currently record the graph for backward."""
    return _grad_enabled


class Tensor:
    """An array on a backend, with an optional gradient and the op node that produced it."""

    def __init__(self, data, requires_grad=False, device="cpu"):
        self.data = data
        self.requires_grad = requires_grad
        self.device = device
        self.grad = None
        self.creator = None          # the Function that produced this tensor, if recorded

    @property
    def backend(self):
        """The kernel module this tensor's array belongs to."""
        return get_backend(self.device)

    @property
    def shape(self):
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    def numpy(self):
        """The data as a NumPy array (copied from the device if needed)."""
        return self.backend.to_numpy(self.data)

    def item(self):
        """The value of a one-element tensor as a Python float."""
        return float(self.numpy().reshape(()))

    def to(self, device):
        """This tensor's data on another backend, as a new leaf tensor."""
        data = get_backend(device).asarray(self.numpy())
        return Tensor(data, requires_grad=self.requires_grad, device=device)

    def detach(self):
        """The same data, cut from the graph."""
        return Tensor(self.data, requires_grad=False, device=self.device)

    def __repr__(self):
        return f"Tensor(shape={self.shape}, dtype={self.dtype}, device={self.device!r})"

    def backward(self, grad=None):
        """Accumulate d(self)/d(leaf) into ``.grad`` of every leaf that requires a gradient."""
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require a gradient (made under no_grad?)")
        if grad is None:
            grad = self.backend.xp.ones_like(self.data)
        order = _topological_order(self)
        pending = {id(self): grad}
        for position in range(len(order) - 1, -1, -1):
            tensor, order[position] = order[position], None     # drop our reference early
            g = pending.pop(id(tensor), None)
            if g is None:
                continue
            node = tensor.creator
            if node is None:                                   # a leaf: keep its gradient
                tensor.grad = g if tensor.grad is None else tensor.backend.add(tensor.grad, g)
                continue
            input_grads = node.backward(g)
            for inp, ig in zip(node.inputs, input_grads):
                if ig is None or not inp.requires_grad:
                    continue
                previous = pending.get(id(inp))
                pending[id(inp)] = ig if previous is None else inp.backend.add(previous, ig)
            node.release()
            tensor.creator = None


def _topological_order(root):
    """Tensors that need a gradient, each after all the tensors it was computed from."""
    order, visited, stack = [], set(), [(root, False)]
    while stack:
        tensor, expanded = stack.pop()
        if expanded:
            order.append(tensor)
            continue
        if id(tensor) in visited:
            continue
        visited.add(id(tensor))
        stack.append((tensor, True))
        if tensor.creator is not None:
            for inp in tensor.creator.inputs:
                if inp.requires_grad and id(inp) not in visited:
                    stack.append((inp, False))
    return order


class Function:
    """One op: ``forward`` on arrays, ``backward`` from the output gradient to input gradients.

    Subclasses implement ``forward(self, *arrays, **params) -> array`` and
    ``backward(self, grad) -> tuple`` (one entry per tensor input, None where not needed).
    ``self.backend`` is the kernel module; ``self.needs_input_grad`` says which inputs want one.
    """

    def __init__(self, backend, needs_input_grad):
        self.backend = backend
        self.needs_input_grad = needs_input_grad
        self.saved = ()
        self.inputs = ()

    def save_for_backward(self, *items):
        """Keep what backward needs, and nothing more."""
        self.saved = items

    def release(self):
        """Free the saved arrays and the references to the inputs once backward has run."""
        self.saved = ()
        self.inputs = ()

    def forward(self, *arrays, **params):
        raise NotImplementedError

    def backward(self, grad):
        raise NotImplementedError

    @classmethod
    def apply(cls, *tensors, **params):
        """Run the op on tensors; record it in the graph if any input requires a gradient."""
        device = tensors[0].device
        for t in tensors:
            if t.device != device:
                raise ValueError(f"{cls.__name__}: inputs are on different devices ({t.device} vs {device})")
        needs = tuple(t.requires_grad for t in tensors)
        record = _grad_enabled and any(needs)
        node = cls(get_backend(device), needs)
        out = Tensor(node.forward(*(t.data for t in tensors), **params), requires_grad=record, device=device)
        if record:
            node.inputs = tensors
            out.creator = node
        return out


def tensor(array, requires_grad=False, device="cpu", dtype=np.float32):
    """A tensor on ``device`` from anything NumPy can turn into an array."""
    data = get_backend(device).asarray(np.asarray(array, dtype=dtype))
    return Tensor(data, requires_grad=requires_grad, device=device)
