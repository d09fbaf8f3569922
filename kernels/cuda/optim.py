"""Optimiser updates in place: one pass over each parameter tensor (memory-bound)."""
import math

from . import arrays
from .arrays import THREADS, blocks, cuda, launch


@cuda.jit
def _sgd(p, g, v, lr, momentum, wd):
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        vi = momentum * v[i] - lr * (g[i] + wd * p[i])
        v[i] = vi
        p[i] += vi


@cuda.jit
def _adam(p, g, m, v, lr, b1, c_b1, b2, c_b2, bias1, bias2, eps, wd):
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        gi = g[i] + wd * p[i]
        mi = b1 * m[i] + c_b1 * gi
        vi = b2 * v[i] + c_b2 * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] -= lr * (mi / bias1) / (math.sqrt(vi / bias2) + eps)


def _flat_inplace(*arrs):
    for a in arrs:
        if not a.flags.c_contiguous:
            raise ValueError("optimiser state must be C-contiguous to be updated in place")
    return [a.reshape(-1) for a in arrs]


def sgd_step(param, grad, velocity, lr, momentum, weight_decay):
    """v = momentum v - lr (g + weight_decay p);  p += v  (in place)."""
    arrays.require()
    p, v = _flat_inplace(param, velocity)
    g = arrays.contiguous(grad).reshape(-1)
    s = param.dtype.type
    if p.size:
        launch(_sgd, blocks(p.size), THREADS, p, g, v, s(lr), s(momentum), s(weight_decay))


def adam_step(param, grad, m, v, lr, beta1, beta2, eps, step, weight_decay):
    """Adam with L2 weight decay added to the gradient, in place; step counts from 1."""
    arrays.require()
    p, mf, vf = _flat_inplace(param, m, v)
    g = arrays.contiguous(grad).reshape(-1)
    s = param.dtype.type
    if p.size:
        launch(_adam, blocks(p.size), THREADS, p, g, mf, vf, s(lr), s(beta1), s(1 - beta1), s(beta2), s(1 - beta2),
               s(1 - beta1 ** step), s(1 - beta2 ** step), s(eps), s(weight_decay))
