"""Numerical gradient checks: every op and every input, on the float64 reference backend.

Each check builds the op through the engine (so Function.apply, the saved state and the reverse
walk are exercised), back-propagates a random output gradient R, and compares the result with
central finite differences of sum(op(inputs) * R), element by element. Relative error < 1e-6.
Shapes are drawn at random each run: odd sizes, one channel and many, batch > 1.
"""
import numpy as np
import pytest

from minunet.engine import functional as F
from minunet.engine.autograd import Tensor
from minunet.model.unet import UNet

pytestmark = pytest.mark.gradcheck
EPS = 1e-6
TOL = 1e-6


def relative_error(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(a), np.linalg.norm(b), 1e-300)


KINK = 1e-5          # one-sided slopes further apart than this (relative): a kink inside the step


def gradcheck(fn, arrays, rng, check=None, sample=None, at_kinks=False, eps=EPS, tol=TOL):
    """Analytic (engine) vs central-difference gradients of sum(fn(*tensors) * R) for each input.

    Every element is checked, or ``sample`` randomly chosen elements per input for big graphs.
    With ``at_kinks``, an element whose +-EPS step crosses a kink of the function (a ReLU whose
    input changes sign, a max-pool whose argmax changes; in a whole network some always do) is
    checked against the one-sided slope nearer to the engine's, since the engine takes the
    derivative of one side there and the central difference is of neither: a wrong gradient
    matches neither side. (Max-pool windows of ReLU zeros are ties that any step breaks, so in a
    small network most first-layer weights sit on kinks.)
    """
    tensors = [Tensor(a.copy(), requires_grad=True, device="reference") for a in arrays]
    out = fn(*tensors)
    r = rng.standard_normal(out.shape)
    out.backward(r.copy())
    centre = np.sum(out.data * r)
    noise = 10 * np.finfo(np.float64).eps * np.sum(np.abs(out.data * r)) / eps   # round-off of a one-sided slope
    for index in (range(len(arrays)) if check is None else check):
        base = [a.copy() for a in arrays]
        numeric = np.zeros_like(arrays[index]).reshape(-1)
        analytic = tensors[index].grad.reshape(-1)
        flat = base[index].reshape(-1)
        elements = range(flat.size) if sample is None else rng.choice(flat.size, min(sample, flat.size), False)
        for k in elements:
            saved = flat[k]
            flat[k] = saved + eps
            plus = np.sum(fn(*[Tensor(a, device="reference") for a in base]).data * r)
            flat[k] = saved - eps
            minus = np.sum(fn(*[Tensor(a, device="reference") for a in base]).data * r)
            flat[k] = saved
            numeric[k] = (plus - minus) / (2 * eps)
            right, left = (plus - centre) / eps, (centre - minus) / eps
            if at_kinks and abs(right - left) > KINK * max(abs(right), abs(left)) + noise:
                numeric[k] = min((right, left), key=lambda slope: abs(slope - analytic[k]))
        chosen = list(elements)
        err = relative_error(analytic[chosen], numeric[chosen])
        assert err < tol, f"input {index}: relative error {err:.2e}"


def away_from_zero(rng, shape, gap=0.05):
    """Normal values pushed away from 0, so ReLU's kink is never inside a finite difference."""
    x = rng.standard_normal(shape)
    return np.where(x >= 0, x + gap, x - gap)


@pytest.mark.parametrize("kernel", [3, 1])
def test_conv2d(rng, kernel):
    n, c, k = rng.integers(1, 3), rng.choice([1, 3]), rng.choice([1, 2, 5])
    h, w = rng.integers(kernel, kernel + 5, size=2)
    x = rng.standard_normal((n, c, h, w))
    wt = rng.standard_normal((k, c, kernel, kernel))
    b = rng.standard_normal(k)
    gradcheck(lambda x, w, b: F.conv2d(x, w, b), [x, wt, b], rng)


def test_conv2d_fused_relu(rng):
    x = rng.standard_normal((2, 2, 6, 5))
    wt = rng.standard_normal((3, 2, 3, 3))
    b = rng.standard_normal(3)
    while np.min(np.abs(F.conv2d(*[Tensor(a, device="reference") for a in (x, wt, b)]).data)) < 1e-3:
        x = rng.standard_normal(x.shape)            # keep every output away from ReLU's kink
    gradcheck(lambda x, w, b: F.conv2d(x, w, b, relu=True), [x, wt, b], rng)


def test_max_pool2d(rng):
    n, c = rng.integers(1, 3), rng.integers(1, 4)
    h, w = rng.integers(2, 9, size=2)                 # odd sizes drop a row/column
    x = rng.permutation(np.linspace(-1, 1, n * c * h * w)).reshape(n, c, h, w)   # no ties
    gradcheck(F.max_pool2d, [x], rng)


@pytest.mark.parametrize("kernel", [2, 4])
def test_conv_transpose2d(rng, kernel):
    n, c, k = rng.integers(1, 3), rng.choice([1, 3]), rng.choice([1, 2])
    h, w = rng.integers(1, 4, size=2)
    x = rng.standard_normal((n, c, h, w))
    wt = rng.standard_normal((c, k, kernel, kernel))
    b = rng.standard_normal(k)
    gradcheck(F.conv_transpose2d, [x, wt, b], rng)


def test_crop_concat(rng):
    n, cs, cu = rng.integers(1, 3), rng.integers(1, 3), rng.integers(1, 3)
    hu, wu = rng.integers(1, 5, size=2)
    mh, mw = 2 * rng.integers(0, 3, size=2)
    skip = rng.standard_normal((n, cs, hu + mh, wu + mw))
    up = rng.standard_normal((n, cu, hu, wu))
    gradcheck(F.crop_concat, [skip, up], rng)


def test_relu(rng):
    gradcheck(F.relu, [away_from_zero(rng, (2, 3, 4, 5))], rng)


def test_dropout(rng):
    seed = int(rng.integers(2 ** 62))
    gradcheck(lambda x: F.dropout(x, 0.3, seed), [rng.standard_normal((2, 3, 5, 4))], rng)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_softmax_cross_entropy(rng, reduction):
    n, k, h, w = rng.integers(1, 3), rng.integers(2, 5), rng.integers(1, 5), rng.integers(1, 5)
    logits = rng.standard_normal((n, k, h, w)) * 3
    labels = rng.integers(0, k, (n, h, w)).astype(np.uint8)
    labels[rng.random((n, h, w)) < 0.2] = 255                      # some ignored pixels
    weights = rng.uniform(0.5, 10, (n, h, w))
    gradcheck(lambda z: F.softmax_cross_entropy(z, labels, weights, reduction=reduction), [logits], rng)


def test_softmax_cross_entropy_is_stable_at_large_logits(rng):
    logits = rng.standard_normal((1, 3, 4, 4)) * 1e4
    labels = rng.integers(0, 3, (1, 4, 4))
    t = Tensor(logits, requires_grad=True, device="reference")
    loss = F.softmax_cross_entropy(t, labels, None, reduction="sum")
    loss.backward()
    assert np.isfinite(loss.item()) and np.all(np.isfinite(t.grad))
    # log p_l = (z_l - max) - log sum exp(z - max): every exponent <= 0, so nothing overflows.
    # (Approximating log-sum-exp by the max alone failed when a pixel's two largest logits were
    # within ~7 of each other: seed-dependent, 5e-9 relative.)
    shifted = logits - logits.max(1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    expected = -np.sum(np.take_along_axis(log_p, labels[:, None], 1))
    assert loss.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("up_kernel,deep", [(2, False), (4, True)])
def test_whole_unet(rng, up_kernel, deep):
    """The whole graph, including a loss reaching tensors by several paths (deep supervision)."""
    from minunet.model import geometry
    size = geometry.valid_sizes(1, 100, depth=3, up_kernel=up_kernel)[0]
    model = UNet(depth=3, width=2, classes=3, up_kernel=up_kernel, dropout=0.5, deep_supervision=deep,
                 device="reference", seed=int(rng.integers(1000)), dtype=np.float64)
    params = model.parameters()
    chosen = [0, 1, len(params) // 2, len(params) - 2]              # first conv, a middle one, the head
    x = rng.standard_normal((2, 1, size, size))
    drop_seed = int(rng.integers(2 ** 62))

    def loss(x):
        model.dropout_rng = np.random.default_rng(drop_seed)      # the same mask at every evaluation
        out = model(x)
        logits, aux = out if deep else (out, [])
        labels = (np.arange(np.prod(logits.shape[2:])).reshape(logits.shape[2:]) % 3)[None].repeat(2, 0)
        total = F.softmax_cross_entropy(logits, labels, None)
        for a in aux:
            lab = np.zeros((2,) + a.shape[2:], dtype=np.int64)
            total = F.add(total, F.scale(F.softmax_cross_entropy(a, lab, None), 0.5))
        return total

    arrays = [x] + [params[i].data.copy() for i in chosen]
    fn = lambda x, *ws: _with_params(model, chosen, ws, lambda: loss(x))  # noqa: E731
    # A smaller step crosses fewer kinks; its round-off (1e-16 of a loss near 1, over 1e-7) is ~1e-9,
    # up to 1e-6 of the smallest gradients here, hence 1e-5: a wrong gradient is off by far more.
    gradcheck(fn, arrays, rng, sample=40, at_kinks=True, eps=1e-7, tol=1e-5)


def _with_params(model, chosen, ws, run):
    """Run the model with some parameters replaced by (possibly gradient-tracked) tensors."""
    params = model.parameters()
    saved, owners = {}, {}
    for holder in model.modules():
        for name, value in vars(holder).items():
            if isinstance(value, Tensor):
                owners[id(value)] = (holder, name)
    for i, w in zip(chosen, ws):
        holder, name = owners[id(params[i])]
        saved[(id(holder), name)] = (holder, name, getattr(holder, name))
        setattr(holder, name, w)
    try:
        return run()
    finally:
        for holder, name, value in saved.values():
            setattr(holder, name, value)
