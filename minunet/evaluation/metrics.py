"""Segmentation metrics of the ISBI 2012 EM challenge, defined as Fiji's Trainable Segmentation.

The challenge scored submissions with the ``trainableSegmentation.metrics`` classes of Fiji
(Arganda-Carreras et al., Front. Neuroanat. 2015), and the U-Net paper's table quotes those
numbers, so the definitions here follow that code:

- a *prediction* is a stack of foreground (cell) probabilities, 0 = membrane, 1 = cell; a pixel is
  foreground at threshold theta iff its value is > theta; the sweep is theta = 0.0, 0.1, ..., 1.0
  built as Fiji builds it, by repeated addition of 0.1 (so the last value is 0.9999999999999999
  and a probability of exactly 1.0 is still foreground there);
- *truth* is a label stack whose pixels > 0 are foreground (cell) and 0 is membrane;
- segments are the 4-connected foreground components of each slice (``scipy.ndimage.label``);
- count-based scores sum their counts over the stack before dividing (pixel and Rand error);
  V_Rand and V_Info average per-slice scores, as Fiji's thinned scores do.

Public entry point for the training loop and ``minunet evaluate``: :func:`evaluate_stack`.
"""
import math

import numba
import numpy as np
from scipy import ndimage

from minunet.errors import UserError

ALL_METRICS = ("pixel", "rand", "warping", "vrand", "iou")
FOUR = ndimage.generate_binary_structure(2, 1)    # 4-connectivity, the challenge's segments
EIGHT = ndimage.generate_binary_structure(2, 2)


def fiji_thresholds(lo=0.0, hi=1.0, step=0.1):
    """Thresholds lo, lo+step, ... <= hi accumulated by repeated addition, exactly as Fiji's loops."""
    out, th = [], lo
    while th <= hi:
        out.append(th)
        th += step
    return tuple(out)


THRESHOLDS = fiji_thresholds()                 # 0.0 .. 1.0, 11 values: pixel, Rand, V_Rand, V_Info
WARP_THRESHOLDS = fiji_thresholds(0.0, 0.9)     # 0.0 .. 0.9, 10 values: splits and mergers


# ----------------------------------------------------------------------------- inputs

def as_stack(array, name="array"):
    """An (N, H, W) view of a 2D image or a 3D stack; other ranks are a UserError naming `name`."""
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or min(array.shape) == 0:
        raise UserError(f"{name}: expected a 2D image or an (N, H, W) stack, got shape {array.shape}")
    return array


def _values(array):
    """Sorted distinct values of an integer array (a bincount for 8-bit images: much faster)."""
    if array.dtype in (np.uint8, np.bool_):
        return np.flatnonzero(np.bincount(array.ravel().view(np.uint8), minlength=2))
    return np.unique(array)


def prepare(pred, truth, pred_name="prediction", truth_name="truth"):
    """Validated (probabilities, truth class ids) stacks of one shape, see the two functions below."""
    prob = pred_probabilities(pred, pred_name)
    truth = truth_classes(truth, truth_name)
    check_same_shape(prob, truth, pred_name, truth_name)
    return prob, truth


def truth_classes(truth, name="truth"):
    """Truth as integer class ids: 0/255 masks become 0/1, integral floats become ints.

    Why: ISBI PNG labels are 0/255 while ``minunet data convert`` writes 0/1 class ids; both mean
    0 = membrane, 1 = cell. Non-integral or negative values are a UserError naming `name`.
    """
    truth = as_stack(truth, name)
    if truth.dtype == bool:
        return truth.astype(np.uint8)
    if not np.issubdtype(truth.dtype, np.integer):
        if not np.all(np.isfinite(truth)) or np.any(truth != np.round(truth)):
            raise UserError(f"{name}: labels must be integer class ids (0 = membrane, >0 = cell), "
                            "got non-integral values; pass a label image, not probabilities")
        truth = truth.astype(np.int64)
    if truth.min() < 0:
        raise UserError(f"{name}: labels must be >= 0 (0 = membrane), got minimum {truth.min()}")
    values = _values(truth)
    if values.size <= 2 and set(values.tolist()) <= {0, 255} and values.max() == 255:
        return (truth == 255).astype(np.uint8)
    return truth


def pred_probabilities(pred, name="prediction"):
    """Prediction as float32 foreground probabilities in [0, 1].

    Floats must lie in [0, 1] (the ISBI submission format). Integer inputs are label maps of class
    ids (0/255 masks allowed): foreground is id > 0, so they become exact 0/1 probabilities. An
    integer image with many distinct values is most likely an 8-bit probability map and is
    refused, since reading it as class ids would score garbage.
    """
    pred = as_stack(pred, name)
    if pred.dtype == bool or np.issubdtype(pred.dtype, np.integer):
        values = _values(pred)
        if values.size > 64:
            bits = 8 * pred.dtype.itemsize
            raise UserError(f"{name}: integer image with {values.size} distinct values looks like "
                            f"{'an' if bits == 8 else 'a'} {bits}-bit probability map; save float probabilities "
                            "in [0, 1] or class ids")
        if values.min() < 0:
            raise UserError(f"{name}: class ids must be >= 0, got minimum {values.min()}")
        return (pred > 0).astype(np.float32)
    if not np.all(np.isfinite(pred)):
        raise UserError(f"{name}: contains NaN or infinite values")
    lo, hi = float(pred.min()), float(pred.max())
    if lo < 0.0 or hi > 1.0:
        raise UserError(f"{name}: probabilities must lie in [0, 1] (0 = membrane, 1 = cell), "
                        f"got range [{lo:g}, {hi:g}]")
    return pred.astype(np.float32, copy=False)


def pred_classes(pred, name="prediction"):
    """Prediction as integer class ids for IoU: label maps as given (0/255 -> 0/1), probabilities > 0.5."""
    pred = as_stack(pred, name)
    if pred.dtype == bool or np.issubdtype(pred.dtype, np.integer):
        return truth_classes(pred, name)
    return (pred_probabilities(pred, name) > 0.5).astype(np.uint8)


def check_same_shape(pred, truth, pred_name="prediction", truth_name="truth"):
    """UserError unless the two stacks have the same (N, H, W) shape."""
    if pred.shape != truth.shape:
        raise UserError(f"{pred_name} has shape {tuple(pred.shape)} (slices, height, width) but "
                        f"{truth_name} has {tuple(truth.shape)}; select matching slices (--slices)")


def above(prob, theta):
    """Foreground mask prob > theta, compared in float64 as Fiji does.

    Why: NumPy compares a float32 array with a Python float in float32, where Fiji's accumulated
    0.30000000000000004 becomes 0.3f and a probability of exactly 0.3f flips class.
    """
    return prob > np.float64(theta)


def _theta(th):
    """A threshold as reported: 0.30000000000000004 -> 0.3."""
    return round(float(th), 6)


def _nan_to_none(value):
    return None if isinstance(value, float) and math.isnan(value) else value


# ----------------------------------------------------------------------------- pixel error

def pixel_error(pred, truth, thresholds=THRESHOLDS):
    """ISBI pixel error: 1 - max over theta of the foreground F1, counts summed over the stack.

    pred: (N, H, W) probabilities; truth: (N, H, W) labels (> 0 = cell).
    Returns {"error", "theta", "f1"} with theta the best threshold.
    """
    prob, truth = prepare(pred, truth)
    return _pixel_error(prob, truth > 0, thresholds)


def _pixel_error(prob, fg, thresholds):
    positives = int(fg.sum())
    best_f, best_th = -1.0, thresholds[0]
    for th in thresholds:
        p = above(prob, th)
        tp = int(np.count_nonzero(p & fg))
        denom = int(p.sum()) + positives            # 2TP + FP + FN
        f1 = 2.0 * tp / denom if denom else 1.0     # nothing to find and nothing found
        if f1 > best_f:
            best_f, best_th = f1, th
    return {"error": 1.0 - best_f, "theta": _theta(best_th), "f1": best_f}


# ----------------------------------------------------------------------------- Rand error

def label4(mask):
    """4-connected components of a 2D mask as int32 labels (0 = background)."""
    return ndimage.label(mask, structure=FOUR, output=np.int32)[0]


def _joint_counts(t, p):
    """Nonzero contingency counts c_ij of two label images: (counts, i, j) as int64 arrays."""
    t = t.ravel().astype(np.int64)
    p = p.ravel().astype(np.int64)
    width = int(p.max(initial=0)) + 1
    keys, counts = np.unique(t * width + p, return_counts=True)
    return counts.astype(np.int64), keys // width, keys % width


def rand_pair_sums(truth_labels, pred_labels):
    """Foreground-restricted Rand pair counts of one slice with N^2 normalisation (Fiji's N2 stats).

    truth_labels, pred_labels: (H, W) segment ids, 0 = membrane. Pixels of truth membrane are
    ignored; predicted-membrane pixels inside truth cells count as singletons (each pairs only with
    itself). Counting ordered pairs with self-pairs (c_ij^2), returns (same_both, same_truth,
    same_pred): pairs in one segment of both, of truth, of the prediction. Precision is
    same_both / same_pred, recall same_both / same_truth.
    """
    inside = truth_labels > 0
    t, p = truth_labels[inside], pred_labels[inside]
    if t.size == 0:
        return 0, 0, 0
    counts, _, j = _joint_counts(t, p)
    singletons = int(counts[j == 0].sum())
    same_both = int((counts[j > 0] ** 2).sum()) + singletons
    sizes_t = np.bincount(t.astype(np.int64))
    sizes_p = np.bincount(p.astype(np.int64))[1:]
    same_truth = int((sizes_t.astype(np.int64) ** 2).sum())
    same_pred = int((sizes_p.astype(np.int64) ** 2).sum()) + singletons
    return same_both, same_truth, same_pred


def _fscore(both, truth, pred):
    """Harmonic mean of both/pred and both/truth (nan when truth has no pairs)."""
    if truth == 0 or pred == 0:
        return float("nan")
    return 2.0 * both / (truth + pred)


def rand_fscore(pred_fg, truth_labels):
    """Foreground-restricted Rand F-score of binary predicted foreground against truth segments.

    pred_fg: (N, H, W) bool; truth_labels: (N, H, W) truth segment ids per slice (0 = membrane).
    Pair counts are summed over the stack; returns (F, precision, recall), nan without truth cells.
    """
    sums = np.zeros(3, np.int64)
    for k in range(pred_fg.shape[0]):
        sums += rand_pair_sums(truth_labels[k], label4(pred_fg[k]))
    both, same_t, same_p = (int(v) for v in sums)
    if same_t == 0:
        return float("nan"), float("nan"), float("nan")
    return _fscore(both, same_t, same_p), both / same_p, both / same_t


def adapted_rand_pair_sums(truth_labels, pred_labels):
    """scikit-image's ``adapted_rand_error`` pair counts of one slice (for the variant).

    Differences from :func:`rand_pair_sums` (the challenge's definition): only pairs of distinct
    pixels count (c(c-1) rather than c^2), and predicted membrane inside truth cells is one more
    segment instead of singletons, so membrane predicted inside cells (thick or spurious) is
    punished more. Truth membrane is ignored in both; the F-score is the same harmonic mean
    (scikit-image swaps the names precision and recall). Returns (same_both, same_truth, same_pred).
    """
    inside = truth_labels > 0
    t, p = truth_labels[inside], pred_labels[inside]
    if t.size == 0:
        return 0, 0, 0
    counts, _, _ = _joint_counts(t, p)
    sizes_t = np.bincount(t.astype(np.int64)).astype(np.int64)
    sizes_p = np.bincount(p.astype(np.int64)).astype(np.int64)
    pairs = lambda c: int((c * (c - 1)).sum())       # noqa: E731  pairs of distinct pixels
    return pairs(counts), pairs(sizes_t), pairs(sizes_p)


def rand_error(pred, truth, thresholds=THRESHOLDS):
    """ISBI Rand error: 1 - max over theta of the foreground-restricted Rand F-score.

    Segments are 4-connected foreground components of truth and of the thresholded prediction;
    truth membrane is ignored, predicted membrane inside truth cells counts as singletons, pairs
    are counted as c_ij^2 and summed over the stack (Fiji's ``RandError`` N^2 statistics).
    Also returns the scikit-image ``adapted_rand_error`` variant (see
    :func:`adapted_rand_pair_sums`), minimised over the same thresholds on the same segments.
    Returns {"error", "theta", "precision", "recall", "adapted_error", "adapted_theta"}.
    """
    prob, truth = prepare(pred, truth)
    return _rand_error(prob, truth_segments(truth), thresholds)


def truth_segments(truth):
    """4-connected cell segments of each truth slice, (N, H, W) int32 (0 = membrane)."""
    return np.stack([label4(s > 0) for s in truth])


def _rand_error(prob, truth_lab, thresholds):
    best = (-1.0, thresholds[0], float("nan"), float("nan"))
    best_adapted = (-1.0, thresholds[0])
    for th in thresholds:
        sums, adapted = np.zeros(3, np.int64), np.zeros(3, np.int64)
        for k in range(prob.shape[0]):
            pred_lab = label4(above(prob[k], th))
            sums += rand_pair_sums(truth_lab[k], pred_lab)
            adapted += adapted_rand_pair_sums(truth_lab[k], pred_lab)
        both, same_t, same_p = (int(v) for v in sums)
        f = _fscore(both, same_t, same_p)
        if f > best[0]:
            best = (f, th, both / same_p, both / same_t)
        f_adapted = _fscore(*(int(v) for v in adapted))
        if f_adapted > best_adapted[0]:
            best_adapted = (f_adapted, th)
    if best[0] < 0:                                   # no truth cells anywhere: undefined
        nan = float("nan")
        return {"error": nan, "theta": None, "precision": nan, "recall": nan,
                "adapted_error": nan, "adapted_theta": None}
    return {"error": 1.0 - best[0], "theta": _theta(best[1]), "precision": best[2],
            "recall": best[3], "adapted_error": 1.0 - best_adapted[0],
            "adapted_theta": _theta(best_adapted[1])}


# ----------------------------------------------------------------------------- warping error

# The 8 neighbours of a pixel, (dy, dx), bit k of a neighbourhood code = neighbour k is foreground.
NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def _components(points, adjacent):
    """Connected components of a small point set under an adjacency predicate (list of sets)."""
    left, comps = set(points), []
    while left:
        stack, comp = [left.pop()], set()
        while stack:
            a = stack.pop()
            comp.add(a)
            near = {b for b in left if adjacent(a, b)}
            left -= near
            stack.extend(near)
        comps.append(comp)
    return comps


def simple_point_table():
    """Lookup table over the 256 neighbourhood codes: is the centre pixel simple?

    Definition (Jain et al. 2010, Bertrand & Malandain 1994, as Fiji's ``simple2DBertrand``): in
    the 3x3 neighbourhood minus the centre, the foreground pixels that touch a 4-neighbour of the
    centre form exactly one 4-connected component, and the background forms exactly one
    8-connected component. Flipping a simple pixel changes no topology (no split, merge, hole).
    """
    four = lambda a, b: abs(a[0] - b[0]) + abs(a[1] - b[1]) == 1          # noqa: E731
    eight = lambda a, b: max(abs(a[0] - b[0]), abs(a[1] - b[1])) == 1     # noqa: E731
    table = np.zeros(256, np.bool_)
    for code in range(256):
        fg = [n for k, n in enumerate(NEIGHBOURS) if code >> k & 1]
        bg = [n for k, n in enumerate(NEIGHBOURS) if not code >> k & 1]
        fg_touching = [c for c in _components(fg, four) if any(abs(y) + abs(x) == 1 for y, x in c)]
        table[code] = len(fg_touching) == 1 and len(_components(bg, eight)) == 1
    return table


SIMPLE = simple_point_table()
DY = np.array([n[0] for n in NEIGHBOURS], np.int64)
DX = np.array([n[1] for n in NEIGHBOURS], np.int64)


@numba.njit(cache=True)
def _code(img, y, x):
    """Neighbourhood code of (y, x) in a padded binary image (see NEIGHBOURS)."""
    code = 0
    for k in range(8):
        if img[y + DY[k], x + DX[k]]:
            code |= 1 << k
    return code


@numba.njit(cache=True)
def _warp_slice(truth, prob, theta, simple):
    """Simple-point warping of one binary truth slice towards prob > theta (Fiji's loop).

    Each pass lists the pixels where the warped truth and the thresholded prediction disagree,
    visits them most confident first (|prob - theta| descending, ties in row-major order) and
    flips each that is simple at that moment; passes repeat until one flips nothing. Outside the
    image counts as background (membrane).
    """
    h, w = truth.shape
    img = np.zeros((h + 2, w + 2), np.uint8)
    img[1:-1, 1:-1] = truth
    index = np.empty(h * w, np.int64)
    key = np.empty(h * w, np.float64)
    while True:
        m = 0
        for y in range(h):
            for x in range(w):
                if img[y + 1, x + 1] != (prob[y, x] > theta):
                    index[m] = y * w + x
                    key[m] = -abs(prob[y, x] - theta)
                    m += 1
        if m == 0:
            break
        order = np.argsort(key[:m], kind="mergesort")
        flips = 0
        for k in order:
            y = index[k] // w + 1
            x = index[k] % w + 1
            if simple[_code(img, y, x)]:
                img[y, x] = 1 - img[y, x]
                flips += 1
        if flips == 0:
            break
    return img[1:-1, 1:-1].copy()


@numba.njit(cache=True)
def _stays_connected(warped, y, x, seen, stamp, queue):
    """Whether the foreground 8-neighbours of (y, x) stay 4-connected when (y, x) is removed."""
    h, w = warped.shape
    first, targets = -1, 0
    for k in range(8):
        v, u = y + DY[k], x + DX[k]
        if 0 <= v < h and 0 <= u < w and warped[v, u]:
            targets += 1
            if first < 0:
                first = v * w + u
    if targets <= 1:
        return True
    seen[y, x] = stamp                            # the removed pixel blocks the search
    seen[first // w, first % w] = stamp
    queue[0] = first
    head, tail, found = 0, 1, 1
    while head < tail:
        i = queue[head]
        head += 1
        cy, cx = i // w, i % w
        for k in (1, 3, 4, 6):                    # 4-neighbours
            v, u = cy + DY[k], cx + DX[k]
            if 0 <= v < h and 0 <= u < w and warped[v, u] and seen[v, u] != stamp:
                seen[v, u] = stamp
                if max(abs(v - y), abs(u - x)) == 1:
                    found += 1
                    if found == targets:
                        return True
                queue[tail] = v * w + u
                tail += 1
    return False


MERGE, SPLIT, OTHER = 1, 2, 3


@numba.njit(cache=True)
def _classify(warped, target, comp):
    """Classify each remaining mismatch as MERGE, SPLIT or OTHER (Fiji's classifyMismatches2d).

    comp: 4-connected components of the warped truth. Looking at the segment ids around a
    mismatch: a membrane pixel next to two or more segments is a merge (the prediction joins
    them); a cell pixel next to two or more segments, or whose removal disconnects its segment,
    is a split; anything else (object or hole added or deleted) is OTHER.
    """
    h, w = warped.shape
    out = np.zeros((h, w), np.uint8)
    seen = np.zeros((h, w), np.int64)
    queue = np.empty(h * w, np.int64)
    stamp = 0
    for y in range(h):
        for x in range(w):
            if warped[y, x] == target[y, x]:
                continue
            a = b = -1                            # up to two distinct nonzero ids seen
            many = False
            for k in range(8):
                v, u = y + DY[k], x + DX[k]
                if 0 <= v < h and 0 <= u < w and comp[v, u] > 0:
                    c = comp[v, u]
                    if a < 0 or c == a:
                        a = c
                    elif b < 0 or c == b:
                        b = c
                    else:
                        many = True
            objects = 0 if a < 0 else (1 if b < 0 else 2)
            if many:
                objects = 3
            if objects >= 2:
                out[y, x] = SPLIT if warped[y, x] else MERGE
            elif objects == 1 and warped[y, x]:
                stamp += 1
                if _stays_connected(warped, y, x, seen, stamp, queue):
                    out[y, x] = OTHER
                else:
                    out[y, x] = SPLIT
            else:
                out[y, x] = OTHER
    return out


def warp_slice(truth_fg, prob, theta):
    """Warp a binary truth slice towards prob > theta by flipping simple points.

    Returns (warped, kinds): the warped truth (uint8 0/1) and, per pixel, 0 where it agrees with
    the prediction, else MERGE, SPLIT or OTHER (see :func:`_classify`).
    """
    truth_fg = np.ascontiguousarray(truth_fg, dtype=np.uint8)
    prob = np.ascontiguousarray(prob, dtype=np.float32)
    warped = _warp_slice(truth_fg, prob, float(theta), SIMPLE)
    kinds = _classify(warped, above(prob, theta).astype(np.uint8), label4(warped))
    return warped, kinds


def _warp_stats(fg, prob, theta):
    """Mismatch pixels, merge/split clusters and merge/split pixels over the stack at one theta."""
    stats = np.zeros(5, np.int64)    # mismatches, merges, splits, merge px, split px
    for k in range(fg.shape[0]):
        _, kinds = warp_slice(fg[k], prob[k], theta)
        merges, splits = kinds == MERGE, kinds == SPLIT
        stats += (np.count_nonzero(kinds), ndimage.label(merges, structure=EIGHT)[1],
                  ndimage.label(splits, structure=FOUR)[1], merges.sum(), splits.sum())
    return stats


def warping_error(pred, truth, theta=0.9, split_merge_thresholds=WARP_THRESHOLDS):
    """Warping error (Jain et al. 2010) with split and merge counts.

    The truth is warped towards the prediction thresholded at `theta` by flipping simple points
    (:func:`warp_slice`); the warping error is the fraction of pixels that still disagree, the
    topological errors. `theta=None` takes the minimum over the thresholds instead.

    Splits and merges: remaining mismatches classified as in Fiji; each 8-connected group of
    merge pixels counts one merge, each 4-connected group of split pixels one split. They are
    reported at the threshold among `split_merge_thresholds` that minimises Fiji's "minimum
    splits and mergers warping error" (split + merge pixels / all pixels), also returned.
    """
    prob, truth = prepare(pred, truth)
    return _warping_error(prob, (truth > 0).astype(np.uint8), theta, split_merge_thresholds)


def _warping_error(prob, fg, theta, split_merge_thresholds):
    total = fg.size
    per_theta = {th: _warp_stats(fg, prob, th) for th in split_merge_thresholds}
    if theta is None:
        theta = min(per_theta, key=lambda th: per_theta[th][0])
    near = [th for th in per_theta if abs(th - theta) < 1e-9]
    stats = per_theta[near[0]] if near else _warp_stats(fg, prob, theta)
    best = min(split_merge_thresholds, key=lambda th: per_theta[th][3] + per_theta[th][4])
    sm = per_theta[best]
    return {"error": int(stats[0]) / total, "theta": _theta(theta),
            "merges": int(sm[1]), "splits": int(sm[2]),
            "split_merge_error": int(sm[3] + sm[4]) / total, "split_merge_theta": _theta(best)}


# ----------------------------------------------------------------------------- V_Rand, V_Info

@numba.njit(cache=True)
def _flood(labels):
    """Grow labelled segments over the 0 pixels in breadth-first order, leaving 1-pixel lines.

    A 0 pixel reached from one segment joins it; one that touches two segments when it is
    reached stays 0, a watershed line. Flooding from the segments by distance is the watershed of
    the binary image, the thinning of Fiji's V_Rand / V_Info (``WatershedTransform2D``, 4-conn).
    """
    h, w = labels.shape
    out = labels.copy()
    queued = labels > 0
    queue = np.empty(h * w, np.int64)
    tail = 0
    for y in range(h):
        for x in range(w):
            if out[y, x] == 0:
                for k in (1, 3, 4, 6):
                    v, u = y + DY[k], x + DX[k]
                    if 0 <= v < h and 0 <= u < w and labels[v, u] > 0:
                        queue[tail] = y * w + x
                        tail += 1
                        queued[y, x] = True
                        break
    head = 0
    while head < tail:
        i = queue[head]
        head += 1
        y, x = i // w, i % w
        seg, clash = 0, False
        for k in (1, 3, 4, 6):
            v, u = y + DY[k], x + DX[k]
            if 0 <= v < h and 0 <= u < w and out[v, u] > 0:
                if seg == 0:
                    seg = out[v, u]
                elif out[v, u] != seg:
                    clash = True
        if seg == 0 or clash:
            continue
        out[y, x] = seg
        for k in (1, 3, 4, 6):
            v, u = y + DY[k], x + DX[k]
            if 0 <= v < h and 0 <= u < w and not queued[v, u]:
                queued[v, u] = True
                queue[tail] = v * w + u
                tail += 1
    return out


def thin_membranes(fg):
    """Segments of a binary slice after thinning its membranes to 1-pixel watershed lines.

    fg: (H, W) bool foreground. Returns int32 segment ids (0 = the thinned membrane). Why: V_Rand
    and V_Info were adopted by the challenge because they do not punish membranes predicted
    thicker than the annotation's.
    """
    return _flood(label4(fg))


def info_scores(truth_labels, pred_labels):
    """Foreground-restricted V_Rand and V_Info of one slice (Fiji's N^2 scores), or None.

    V_Rand is the Rand F-score of :func:`rand_pair_sums`; V_Info is the harmonic mean of the
    mutual information normalised by each entropy, I/H(truth) and I/H(prediction), with predicted
    membrane inside truth cells as singletons. Where exactly one entropy is zero the score is 0
    (as in Fiji); where both are (one cell, matched), 1. None when the slice has no truth cells.
    """
    inside = truth_labels > 0
    n = int(inside.sum())
    if n == 0:
        return None
    t, p = truth_labels[inside], pred_labels[inside]
    both, same_t, same_p = rand_pair_sums(truth_labels, pred_labels)
    v_rand = _fscore(both, same_t, same_p)
    counts, _, j = _joint_counts(t, p)
    xlogx = lambda c: float((c / n * np.log(c / n)).sum()) if c.size else 0.0     # noqa: E731
    singles = counts[j == 0].sum() / n * math.log(n)            # singletons: each 1/n
    sizes_t = np.bincount(t.astype(np.int64))
    sizes_p = np.bincount(p.astype(np.int64))[1:]
    sum_a = xlogx(sizes_t[sizes_t > 0])
    sum_b = xlogx(sizes_p[sizes_p > 0]) - singles
    sum_ab = xlogx(counts[j > 0]) - singles
    h_t, h_p = -sum_a, -sum_b
    mutual = sum_ab - sum_a - sum_b
    if h_t <= 1e-12 and h_p <= 1e-12:
        v_info = 1.0
    elif h_t <= 1e-12 or h_p <= 1e-12:
        v_info = 0.0
    else:
        prec, rec = mutual / h_t, mutual / h_p
        v_info = 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0
    return v_rand, v_info


def thinned_scores(pred, truth, thresholds=THRESHOLDS):
    """V_Rand and V_Info after thinning predicted membranes, each maximised over theta.

    The challenge's leaderboard measures since 2013 (Arganda-Carreras et al. 2015): at each
    theta the predicted membranes are thinned (:func:`thin_membranes`), per-slice scores
    (:func:`info_scores`) are averaged over slices with truth cells. Higher is better (1 = perfect).
    Returns {"v_rand", "v_rand_theta", "v_info", "v_info_theta"}.
    """
    prob, truth = prepare(pred, truth)
    return _thinned_scores(prob, truth_segments(truth), thresholds)


def _thinned_scores(prob, truth_lab, thresholds):
    best = {"v_rand": (-1.0, None), "v_info": (-1.0, None)}
    for th in thresholds:
        scores = [info_scores(truth_lab[k], thin_membranes(above(prob[k], th)))
                  for k in range(prob.shape[0])]
        scores = [s for s in scores if s is not None]
        if not scores:
            break
        for name, value in zip(("v_rand", "v_info"), np.mean(scores, axis=0)):
            if value > best[name][0]:
                best[name] = (float(value), th)
    out = {}
    for name, (value, th) in best.items():
        out[name] = value if th is not None else float("nan")
        out[name + "_theta"] = _theta(th) if th is not None else None
    return out


# ----------------------------------------------------------------------------- IoU

def iou_per_class(pred_labels, truth_labels, classes=None):
    """Intersection over union per class id, counts summed over the stack.

    pred_labels, truth_labels: integer class maps of one shape. classes: ids to score (default:
    every id present in either). The paper's measure for PhC-U373 and DIC-HeLa.
    Returns {class_id: IoU}, nan for a class absent from both.
    """
    pred_labels, truth_labels = np.asarray(pred_labels), np.asarray(truth_labels)
    if pred_labels.shape != truth_labels.shape:
        raise UserError(f"IoU: prediction shape {pred_labels.shape} != truth shape {truth_labels.shape}")
    if classes is None:
        classes = np.union1d(np.unique(pred_labels), np.unique(truth_labels)).tolist()
    out = {}
    for c in classes:
        p, t = pred_labels == c, truth_labels == c
        union = int(np.count_nonzero(p | t))
        out[int(c)] = int(np.count_nonzero(p & t)) / union if union else float("nan")
    return out


# ----------------------------------------------------------------------------- all together

def evaluate_stack(pred, truth, metrics=ALL_METRICS, warping_theta=0.9, thresholds=THRESHOLDS,
                   pred_name="prediction", truth_name="truth"):
    """Every requested metric of a predicted stack against its truth, as a flat JSON-ready dict.

    pred: (N, H, W) or (H, W) foreground probabilities in [0, 1] (or integer class ids);
    truth: same shape, class ids (0 = membrane, > 0 = cell; 0/255 masks accepted).
    metrics: any of "pixel", "rand", "warping", "vrand", "iou". Training validation should use
    ("pixel", "rand"): the warping error sweeps ten thresholds and is the slowest.
    warping_theta: threshold of the warping error (None: minimised over 0.0..0.9).
    Errors are in [0, 1], lower is better; v_rand, v_info and IoU are scores, higher is better.
    Undefined values (no truth cells) are None. Input problems raise UserError naming
    `pred_name` / `truth_name`.
    """
    unknown = set(metrics) - set(ALL_METRICS)
    if unknown:
        raise UserError(f"unknown metric(s) {', '.join(sorted(unknown))}; "
                        f"choose from {', '.join(ALL_METRICS)}")
    raw_pred = as_stack(pred, pred_name)
    prob, truth = prepare(raw_pred, truth, pred_name, truth_name)
    segments = truth_segments(truth) if {"rand", "vrand"} & set(metrics) else None
    out = {"slices": int(prob.shape[0]), "height": int(prob.shape[1]), "width": int(prob.shape[2])}
    if "pixel" in metrics:
        r = _pixel_error(prob, truth > 0, thresholds)
        out.update(pixel_error=r["error"], pixel_error_theta=r["theta"])
    if "rand" in metrics:
        r = _rand_error(prob, segments, thresholds)
        out.update(rand_error=r["error"], rand_error_theta=r["theta"],
                   adapted_rand_error=r["adapted_error"], adapted_rand_error_theta=r["adapted_theta"])
    if "warping" in metrics:
        r = _warping_error(prob, (truth > 0).astype(np.uint8), warping_theta, WARP_THRESHOLDS)
        out.update(warping_error=r["error"], warping_theta=r["theta"], splits=r["splits"],
                   merges=r["merges"], split_merge_error=r["split_merge_error"],
                   split_merge_theta=r["split_merge_theta"])
    if "vrand" in metrics:
        out.update(_thinned_scores(prob, segments, thresholds))
    if "iou" in metrics:
        classes = pred_classes(raw_pred, pred_name)
        ious = iou_per_class(classes, truth)
        for c, v in ious.items():
            out[f"iou_{c}"] = v
        valid = [v for v in ious.values() if not math.isnan(v)]
        out["mean_iou"] = float(np.mean(valid)) if valid else float("nan")
    return {k: _nan_to_none(v) for k, v in out.items()}
