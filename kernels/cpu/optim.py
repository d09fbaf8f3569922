"""Optimiser updates, in place, one fused pass over each parameter."""
import math

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def _sgd(p, g, v, lr, momentum, weight_decay):
    for i in prange(p.size):
        v[i] = momentum * v[i] - lr * (g[i] + weight_decay * p[i])
        p[i] += v[i]


@njit(parallel=True, cache=True)
def _adam(p, g, m, v, lr, beta1, beta2, eps, correction1, correction2, weight_decay):
    for i in prange(p.size):
        gi = g[i] + weight_decay * p[i]
        m[i] = beta1 * m[i] + (1 - beta1) * gi
        v[i] = beta2 * v[i] + (1 - beta2) * gi * gi
        p[i] -= lr * (m[i] / correction1) / (math.sqrt(v[i] / correction2) + eps)


def _flat(a):
    """A 1-D view of a contiguous array (in-place updates must not go to a copy)."""
    if not a.flags.c_contiguous:
        raise ValueError("optimiser state must be C-contiguous to be updated in place")
    return a.reshape(-1)


def sgd_step(param, grad, velocity, lr, momentum, weight_decay):
    """SGD with heavy-ball momentum, in place: v = m v - lr (g + wd p); p += v."""
    _sgd(_flat(param), np.ascontiguousarray(grad, dtype=param.dtype).reshape(-1), _flat(velocity),
         float(lr), float(momentum), float(weight_decay))


def adam_step(param, grad, m, v, lr, beta1, beta2, eps, step, weight_decay):
    """Adam (L2 weight decay added to the gradient), in place; step counts from 1."""
    _adam(_flat(param), np.ascontiguousarray(grad, dtype=param.dtype).reshape(-1), _flat(m), _flat(v),
          float(lr), float(beta1), float(beta2), float(eps),
          1.0 - float(beta1) ** step, 1.0 - float(beta2) ** step, float(weight_decay))
