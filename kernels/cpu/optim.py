"""Optimiser updates, in place, one fused pass over each parameter.

The scalars are cast to the parameter's dtype so that float32 updates stay in float32 vector
lanes. Parameters smaller than PARALLEL_MIN elements (biases, the first and last layers) are
updated by a serial loop: starting the thread pool costs more than their update.
"""
import math

import numpy as np
from numba import njit, prange

PARALLEL_MIN = 1 << 16


@njit(cache=True, inline="always")
def _sgd_at(i, p, g, v, lr, momentum, weight_decay):
    vi = momentum * v[i] - lr * (g[i] + weight_decay * p[i])
    v[i] = vi
    p[i] += vi


@njit(parallel=True, cache=True)
def _sgd_parallel(p, g, v, lr, momentum, weight_decay):
    for i in prange(p.size):
        _sgd_at(i, p, g, v, lr, momentum, weight_decay)


@njit(cache=True)
def _sgd_serial(p, g, v, lr, momentum, weight_decay):
    for i in range(p.size):
        _sgd_at(i, p, g, v, lr, momentum, weight_decay)


@njit(cache=True, inline="always")
def _adam_at(i, p, g, m, v, lr, beta1, beta2, eps, correction1, correction2, weight_decay):
    # beta1, beta2 are (beta, 1 - beta) pairs: "1 - beta" here would promote float32 to float64.
    gi = g[i] + weight_decay * p[i]
    m[i] = beta1[0] * m[i] + beta1[1] * gi
    v[i] = beta2[0] * v[i] + beta2[1] * gi * gi
    p[i] -= lr * (m[i] / correction1) / (math.sqrt(v[i] / correction2) + eps)


@njit(parallel=True, cache=True)
def _adam_parallel(p, g, m, v, lr, beta1, beta2, eps, correction1, correction2, weight_decay):
    for i in prange(p.size):
        _adam_at(i, p, g, m, v, lr, beta1, beta2, eps, correction1, correction2, weight_decay)


@njit(cache=True)
def _adam_serial(p, g, m, v, lr, beta1, beta2, eps, correction1, correction2, weight_decay):
    for i in range(p.size):
        _adam_at(i, p, g, m, v, lr, beta1, beta2, eps, correction1, correction2, weight_decay)


def _flat(a):
    """A 1-D view of a contiguous array (in-place updates must not go to a copy)."""
    if not a.flags.c_contiguous:
        raise ValueError("optimiser state must be C-contiguous to be updated in place")
    return a.reshape(-1)


def sgd_step(param, grad, velocity, lr, momentum, weight_decay):
    """SGD with heavy-ball momentum, in place: v = m v - lr (g + wd p); p += v."""
    scalar = param.dtype.type
    update = _sgd_parallel if param.size >= PARALLEL_MIN else _sgd_serial
    update(_flat(param), np.ascontiguousarray(grad, dtype=param.dtype).reshape(-1), _flat(velocity),
           scalar(lr), scalar(momentum), scalar(weight_decay))


def adam_step(param, grad, m, v, lr, beta1, beta2, eps, step, weight_decay):
    """Adam (L2 weight decay added to the gradient), in place; step counts from 1."""
    scalar = param.dtype.type
    b1, b2 = scalar(beta1), scalar(beta2)       # the corrections use the betas as rounded here
    update = _adam_parallel if param.size >= PARALLEL_MIN else _adam_serial
    update(_flat(param), np.ascontiguousarray(grad, dtype=param.dtype).reshape(-1), _flat(m), _flat(v),
           scalar(lr), (b1, scalar(1 - b1)), (b2, scalar(1 - b2)), scalar(eps),
           scalar(1.0 - float(b1) ** step), scalar(1.0 - float(b2) ** step), scalar(weight_decay))
