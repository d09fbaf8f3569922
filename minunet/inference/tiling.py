"""Overlap-tile prediction (Ronneberger et al. 2015, Fig. 2): segment images of any size.

The image is covered by square *output* tiles of the network's output size; each *input* tile is
its output tile plus the network's context (``Geometry.margin`` pixels on each side, 92 for the
paper's network). Where that context leaves the image it is extrapolated by mirroring
(``pad="mirror"``, the paper's choice) or with zeros (``pad="zero"``, as for the dental data).

Mirroring reflects about the border pixel without repeating it (NumPy's ``"reflect"`` mode:
``... c b | a b c ... | b a ...``), so no duplicated row or column appears at the border; beyond one
image width it keeps reflecting (period 2(n-1)), so images smaller than the margin work too.
Images smaller than one output tile are predicted with one tile (when the tile is chosen
automatically, the one that needs the least work, :func:`fit_tile`).

Stitching is exact, with no blending: every convolution is valid (unpadded), so a tile's output
is the same arithmetic as the corresponding part of one pass over the whole extended image,
provided the tile's pooling windows line up with that pass's. That needs tiles to start at
multiples of 2^(depth-1) (16 for the paper's network), so tiles step by the output size rounded
down to such a multiple (384 for a 388 output: neighbouring tiles overlap by 4 pixels, whose values
agree). It also needs the extension to reach every pixel the last tiles read, which can lie more
than ``margin`` beyond the image: the image is extended to whole tiles, by mirroring or zeros, and
the result cropped. The stitched prediction then equals the network applied once to the whole
extended image (to float32 rounding; ``tests/test_tiling.py``).

The core, :func:`predict_valid`, takes an image that already carries its context (``margin``
pixels on top and left, up to :func:`context_size` on bottom and right): block-wise prediction of
large volumes can hand it a block with a halo cut from the neighbouring blocks (blocks starting at
multiples of 2^(depth-1) then agree exactly with the in-memory result). :func:`predict_image`
adds the context by mirroring or zeros first, and does test-time augmentation. Everything runs
under ``no_grad()`` and prints nothing; pass ``progress(done, total)`` to follow the tiles.
"""
import numpy as np

from minunet.data.padding import check_pad, extend
from minunet.engine import functional as F
from minunet.engine.autograd import Tensor, no_grad
from minunet.errors import UserError
from minunet.kernels import get_backend
from minunet.model import geometry
from minunet.model.memory import activation_bytes, memory_budget

SAFETY = 1.5             # the memory estimate's head-room for kernel workspaces and fragmentation
MAX_TILE = 1024          # choose_tile's largest input tile: bigger tiles save little overlap
TTA_VERSIONS = (1, 4, 8)  # test-time averaging: the image, its rotations, rotations and flips


# ---------------------------------------------------------------------- tile size

def choose_tile(model, device=None, memory_budget_bytes=None, batch=1, tile=None, max_tile=MAX_TILE):
    """The largest valid input tile whose activations for ``batch`` tiles fit the memory budget.

    With ``tile`` given, that size is checked instead (UserError naming the nearest valid sizes).
    The estimate is :func:`activation_bytes` times ``SAFETY``; the budget defaults to
    :func:`memory_budget` of the model's device. Never larger than ``max_tile``; never smaller
    than the smallest valid tile.
    """
    if tile is not None:
        return model.geometry(int(tile)).input_size
    budget = memory_budget(device or model.device) if memory_budget_bytes is None else memory_budget_bytes
    sizes = geometry.valid_sizes(1, max_tile, model.depth, model.up_kernel)
    if not sizes:
        raise UserError(f"no valid tile up to {max_tile} for a depth-{model.depth} U-Net")
    best = sizes[0]
    for size in sizes:
        geo = geometry.trace(size, model.depth, model.up_kernel)
        need = SAFETY * activation_bytes(geo, model.width, model.in_channels, model.classes,
                                         model.up_kernel, batch)
        if need <= budget:
            best = size
    return best


def fit_tile(model, max_tile, height, width):
    """The valid tile up to ``max_tile`` that predicts a height x width image with the fewest input
    pixels (tiles x tile^2, the work), preferring the larger tile on ties: one small tile for a small
    image, a single 700 tile rather than four 572 tiles for a 512x512 slice."""
    best, best_cost = None, None
    for size in geometry.valid_sizes(1, max_tile, model.depth, model.up_kernel):
        out, stride = model.geometry(size).output_size, tile_stride(model, size)
        if stride == 0 and max(height, width) > out:
            continue
        cost = count_tiles(model, size, height, width) * size ** 2
        if best_cost is None or cost <= best_cost:
            best, best_cost = size, cost
    return best if best is not None else max_tile


# ---------------------------------------------------------------------- prediction

def tile_stride(model, tile):
    """The step between output tiles: the output size rounded down to a multiple of 2^(depth-1).

    Pooling windows of a tile line up with those of a pass over the whole image only when the tile
    starts at a multiple of 2^(depth-1) (the deepest pooling's grid); for depth >= 4 the output size
    is 4 more than such a multiple (388 = 384 + 4), so neighbouring tiles overlap by those pixels.
    """
    align = geometry.alignment(model.depth)
    return model.geometry(tile).output_size // align * align


def tile_starts(length, stride, out):
    """Start offsets (output coordinates) of the tiles covering ``length`` pixels on one axis."""
    if length <= out:
        return [0]
    return list(range(0, length - out + stride, stride)) if stride else []


def context_size(length, tile, stride, out):
    """Context pixels along an axis that tiles covering ``length`` output pixels read."""
    return tile_starts(length, stride, out)[-1] + tile


def tta_versions(tta):
    """How many versions of an image test-time averaging predicts: 1, 4 or 8 (True means 8)."""
    if isinstance(tta, bool) or tta is None:
        return 8 if tta else 1
    if tta not in TTA_VERSIONS:
        raise UserError(f"tta {tta!r}: average over 1, 4 (rotations) or 8 (rotations and flips) versions")
    return int(tta)


def count_tiles(model, tile, height, width, tta=1):
    """How many network tiles predicting a height x width image takes (times the TTA versions)."""
    out, stride = model.geometry(tile).output_size, tile_stride(model, tile)
    return len(tile_starts(height, stride, out)) * len(tile_starts(width, stride, out)) * tta_versions(tta)


def check_stride(model, tile, height, width):
    """UserError when a height x width image needs several tiles of an output too small to step by."""
    out, stride = model.geometry(tile).output_size, tile_stride(model, tile)
    if stride == 0 and max(height, width) > out:
        smallest = geometry.input_size_for(geometry.alignment(model.depth), model.depth, model.up_kernel)
        raise UserError(f"tile size {tile} gives a {out}-pixel output, too small to stitch exactly "
                        f"(tiles must step by multiples of {geometry.alignment(model.depth)}); use a tile of at "
                        f"least {smallest}")


def as_chw(image, in_channels):
    """The image as float32 (C, H, W); (H, W) is accepted for single-channel models."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        image = image[None]
    if image.ndim != 3 or image.shape[0] != in_channels:
        raise UserError(f"image of shape {image.shape} does not fit a model with {in_channels} input "
                        f"channel(s); pass (H, W) or ({in_channels}, H, W)")
    return image


class _Eval:
    """Run a model in eval mode (no dropout) and restore its mode afterwards."""

    def __init__(self, model):
        self.model, self.was_training = model, getattr(model, "training", False)

    def __enter__(self):
        self.model.eval()

    def __exit__(self, *exc):
        if self.was_training:
            self.model.train()


def predict_valid(model, context, tile, shape, batch=4, report=None):
    """Class probabilities (K, H, W) float32 of an image that carries its own context.

    The core of the overlap-tile strategy, usable block by block. Output pixel (i, j) sits at
    ``context[:, i + margin, j + margin]``; ``context`` must hold every tile's input, i.e. at least
    :func:`context_size` pixels along each axis (the image plus ``margin`` on top and left, and on
    bottom and right whatever the last tiles reach: at least ``margin``). Tiles start at
    multiples of :func:`tile_stride`, so the result equals the network applied to the whole context.

    Args:
        model: a UNet (dropout is off during prediction; its mode is restored afterwards).
        context: (C, H', W') float32. tile: a valid input tile size. shape: (H, W) of the output.
        batch: tiles per forward pass. report: called with the number of tiles after each batch.
    """
    return np.ascontiguousarray(_predict_contexts(model, [context], tile, shape, batch, report)[0])


def _predict_contexts(model, contexts, tile, shape, batch, report):
    """(N, K, H, W) probabilities of N same-sized images with their contexts (see predict_valid),
    ``batch`` tiles per forward pass across the images: a stack of slices of one tile each still
    fills every batch."""
    h, w = shape
    out, stride = model.geometry(tile).output_size, tile_stride(model, tile)
    check_stride(model, tile, h, w)
    rows, cols = tile_starts(h, stride, out), tile_starts(w, stride, out)
    need = (context_size(h, tile, stride, out), context_size(w, tile, stride, out))
    for context in contexts:
        if context.shape[1] < need[0] or context.shape[2] < need[1]:
            raise ValueError(f"context {context.shape[1:]} is smaller than the {need} the tiles read")
    corners = [(i, y, x) for i in range(len(contexts)) for y in rows for x in cols]
    backend = get_backend(model.device)
    probs = np.empty((len(contexts), model.classes, rows[-1] + out, cols[-1] + out), dtype=np.float32)
    with no_grad(), _Eval(model):
        for start in range(0, len(corners), batch):
            chunk = corners[start:start + batch]
            tiles = np.stack([contexts[i][:, y:y + tile, x:x + tile] for i, y, x in chunk])
            scores = model(Tensor(backend.asarray(tiles), device=model.device))
            if isinstance(scores, tuple):             # deep supervision: (logits, auxiliary scores)
                scores = scores[0]
            p = F.softmax(scores).numpy()
            for (i, y, x), tile_probs in zip(chunk, p):  # overlaps (stride < out) hold equal values
                probs[i, :, y:y + out, x:x + out] = tile_probs
            if report is not None:
                report(len(chunk))
    return probs[:, :, :h, :w]


def _with_context(model, image, tile, pad):
    """The image (C, H, W) extended by the context its tiles read (mirrored or zeros)."""
    geo = model.geometry(tile)
    _, h, w = image.shape
    stride, out = tile_stride(model, tile), geo.output_size
    after = (context_size(h, tile, stride, out) - h - geo.margin, context_size(w, tile, stride, out) - w - geo.margin)
    return extend(image, geo.margin, after, pad)


def _symmetries(versions=8):
    """The first `versions` symmetries of the square as (forward, inverse) pairs on (C, H, W)
    arrays: the identity, then the rotations by 90, 180, 270 degrees, then the same after a flip."""
    def make(k, flip):
        def forward(a):
            return np.rot90(np.flip(a, axis=2) if flip else a, k, axes=(1, 2))

        def inverse(a):
            a = np.rot90(a, -k, axes=(1, 2))
            return np.flip(a, axis=2) if flip else a
        return forward, inverse
    return [make(k, flip) for flip in (False, True) for k in range(4)][:versions]


def predict_image(model, image, tile=None, pad="mirror", batch=4, tta=1, progress=None, done=0, total=None):
    """Class probabilities (K, H, W) float32 of one image by the overlap-tile strategy.

    Args:
        model: a UNet; its ``device`` runs the tiles.
        image: (H, W) or (C, H, W) float32, normalised as for training.
        tile: input tile size; None chooses, among the tiles that fit memory (:func:`choose_tile`),
            the one that needs the least work for this image (:func:`fit_tile`).
            An invalid size raises UserError naming the nearest valid ones.
        pad: "mirror" (reflect without repeating the border pixel) or "zero" beyond the border.
        batch: tiles per forward pass.
        tta: test-time averaging: the mean probabilities of 1, 4 (the rotations) or 8 (rotations
            and flips) versions of the image, each predicted and turned back (that many times
            the work). True means 8.
        progress: ``progress(done, total)`` in tiles after each batch; None prints nothing.
        done, total: offsets of that count when it spans several images (predict_stack).
    """
    image = as_chw(image, model.in_channels)
    check_pad(pad, "pad")
    _, h, w = image.shape
    if tile is None:
        tile = fit_tile(model, choose_tile(model, batch=batch), h, w)
    model.geometry(tile)
    check_stride(model, tile, h, w)
    total = count_tiles(model, tile, h, w, tta) if total is None else total
    count = [done]

    def report(n):
        count[0] += n
        if progress is not None:
            progress(count[0], total)

    versions = tta_versions(tta)
    probs = None
    for forward, inverse in (_symmetries(versions) if versions > 1 else [(None, None)]):
        view = image if forward is None else np.ascontiguousarray(forward(image))
        p = predict_valid(model, _with_context(model, view, tile, pad), tile, view.shape[1:], batch, report)
        p = p if inverse is None else inverse(p)
        probs = p if probs is None else probs + p
    if versions > 1:
        probs /= versions
    return np.ascontiguousarray(probs, dtype=np.float32)


def predict_stack(model, stack, tile=None, pad="mirror", batch=4, tta=1, progress=None):
    """Class probabilities (N, K, H, W) float32 of a stack (N, H, W) or (N, C, H, W), slice by slice.

    ``progress(done, total)`` counts tiles over the whole stack. Other arguments as
    :func:`predict_image`; the tile is chosen once for the stack.
    """
    stack = np.asarray(stack, dtype=np.float32)
    if stack.ndim == 3 and model.in_channels == 1:
        stack = stack[:, None]
    if stack.ndim != 4:
        raise UserError(f"stack of shape {stack.shape} is not (N, H, W) or (N, C, H, W)")
    n, _, h, w = stack.shape
    if tile is None:
        tile = fit_tile(model, choose_tile(model, batch=batch), h, w)
    per_slice = count_tiles(model, tile, h, w, tta)
    result = np.empty((n, model.classes, h, w), dtype=np.float32)
    if tta_versions(tta) > 1:
        for i in range(n):
            result[i] = predict_image(model, stack[i], tile, pad, batch, tta, progress,
                                      done=i * per_slice, total=n * per_slice)
        return result
    model.geometry(tile)
    check_stride(model, tile, h, w)
    count = [0]

    def report(k):
        count[0] += k
        if progress is not None:
            progress(count[0], n * per_slice)

    # Slices in groups that fill whole batches (4 slices of one tile each for batch 4): fuller
    # forward passes, and only a group's contexts in memory at a time.
    group = max(1, -(-batch // per_slice))
    for i0 in range(0, n, group):
        contexts = [_with_context(model, as_chw(s, model.in_channels), tile, pad) for s in stack[i0:i0 + group]]
        result[i0:i0 + group] = _predict_contexts(model, contexts, tile, (h, w), batch, report)
    return result
