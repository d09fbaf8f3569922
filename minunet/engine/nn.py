"""Layers with parameters, and the small Module base class that finds them.

A :class:`Parameter` is a leaf tensor that requires a gradient. A :class:`Module` lists its
parameters in the order its attributes were set (recursing into sub-modules and lists of
them), which fixes the order of checkpoints and of the optimiser's state.
"""
import numpy as np

from minunet.engine import functional as F
from minunet.engine.autograd import Tensor
from minunet.kernels import get_backend


class Parameter(Tensor):
    """A trainable array: a leaf tensor with ``requires_grad=True``."""

    def __init__(self, data, device="cpu"):
        super().__init__(data, requires_grad=True, device=device)


class Module:
    """Base class: parameter discovery, train/eval mode, moving to a device."""

    training = True

    def named_parameters(self, prefix=""):
        """(dotted name, Parameter) pairs in definition order."""
        for name, value in vars(self).items():
            path = f"{prefix}{name}"
            if isinstance(value, Parameter):
                yield path, value
            elif isinstance(value, Module):
                yield from value.named_parameters(path + ".")
            elif isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    if isinstance(item, Module):
                        yield from item.named_parameters(f"{path}.{i}.")

    def parameters(self):
        """The parameters in definition order."""
        return [p for _, p in self.named_parameters()]

    def modules(self):
        """This module and all sub-modules, depth first."""
        yield self
        for value in vars(self).values():
            items = value if isinstance(value, (list, tuple)) else [value]
            for item in items:
                if isinstance(item, Module):
                    yield from item.modules()

    def train(self, mode=True):
        """Switch training behaviour (dropout) on or off for every sub-module."""
        for module in self.modules():
            module.training = mode
        return self

    def eval(self):
        """Inference mode: dropout becomes the identity."""
        return self.train(False)

    def zero_grad(self):
        """Forget accumulated gradients."""
        for p in self.parameters():
            p.grad = None

    def to(self, device):
        """Move every parameter's array to another backend, in place."""
        backend = get_backend(device)
        for p in self.parameters():
            p.data = backend.asarray(p.backend.to_numpy(p.data))
            p.device = device
            p.grad = None
        return self

    def num_parameters(self):
        """The number of trainable scalars."""
        return int(sum(np.prod(p.shape) for p in self.parameters()))


def he_normal(rng, shape, fan_in, dtype):
    """He initialisation: N(0, 2 / fan_in), as the paper prescribes (std sqrt(2/N))."""
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(dtype)


class Conv2d(Module):
    """Valid k x k convolution with bias; ``relu=True`` fuses the activation."""

    def __init__(self, in_channels, out_channels, kernel_size, rng, relu=False, device="cpu", dtype=np.float32):
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        backend = get_backend(device)
        self.weight = Parameter(backend.asarray(he_normal(rng, shape, in_channels * kernel_size ** 2, dtype)), device)
        self.bias = Parameter(backend.asarray(np.zeros(out_channels, dtype)), device)
        self.relu = relu

    def __call__(self, x):
        return F.conv2d(x, self.weight, self.bias, relu=self.relu)


class ConvTranspose2d(Module):
    """Stride-2 up-convolution with a k x k kernel (k = 2 in the paper's EM network, 4 for dental).

    He init uses the fan-in of one output pixel: C * (k/2)^2 inputs reach it at stride 2.
    """

    def __init__(self, in_channels, out_channels, kernel_size, rng, device="cpu", dtype=np.float32):
        shape = (in_channels, out_channels, kernel_size, kernel_size)
        fan_in = in_channels * max(kernel_size // 2, 1) ** 2
        backend = get_backend(device)
        self.weight = Parameter(backend.asarray(he_normal(rng, shape, fan_in, dtype)), device)
        self.bias = Parameter(backend.asarray(np.zeros(out_channels, dtype)), device)

    def __call__(self, x):
        return F.conv_transpose2d(x, self.weight, self.bias)
