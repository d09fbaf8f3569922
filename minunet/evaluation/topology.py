"""Digital topology of binary images: simple points, components and their counts (Numba).

A pixel is *simple* when flipping it changes no topology: no object split, merged, created or
deleted, no hole made or filled. The warping error (:mod:`minunet.evaluation.warping`) deforms the
truth by flipping simple points only.
"""
import numba
import numpy as np

# The 8 neighbours of a pixel, (dy, dx); bit k of a neighbourhood code = neighbour k is foreground.
NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
DY = np.array([n[0] for n in NEIGHBOURS], np.int64)
DX = np.array([n[1] for n in NEIGHBOURS], np.int64)
FOUR_NEIGHBOURS = np.array([1, 3, 4, 6], np.int64)      # indices of N, W, E, S in NEIGHBOURS


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
    8-connected component.
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


def ring_groups_table():
    """Lookup table over the 256 neighbourhood codes: 4-connected groups of foreground neighbours.

    The centre does not count: a code with one group keeps its foreground neighbours connected
    around the centre when the centre is removed.
    """
    four = lambda a, b: abs(a[0] - b[0]) + abs(a[1] - b[1]) == 1          # noqa: E731
    return np.array([len(_components([n for k, n in enumerate(NEIGHBOURS) if code >> k & 1], four))
                     for code in range(256)], np.int64)


SIMPLE = simple_point_table()
RING_GROUPS = ring_groups_table()


@numba.njit(cache=True, nogil=True)
def neighbourhood_code(img, y, x):
    """Neighbourhood code of (y, x) in a binary image; outside the image is background."""
    h, w = img.shape
    code = 0
    for k in range(8):
        v, u = y + DY[k], x + DX[k]
        if 0 <= v < h and 0 <= u < w and img[v, u]:
            code |= 1 << k
    return code


@numba.njit(cache=True, nogil=True)
def label_components(mask, eight):
    """Connected components of a 2D mask: (int64 labels 1.., 0 = background; count).

    eight: 8-connectivity, else 4-connectivity.
    """
    h, w = mask.shape
    labels = np.zeros((h, w), np.int64)
    queue = np.empty(h * w, np.int64)
    count = 0
    for y0 in range(h):
        for x0 in range(w):
            if not mask[y0, x0] or labels[y0, x0]:
                continue
            count += 1
            labels[y0, x0] = count
            queue[0] = y0 * w + x0
            head, tail = 0, 1
            while head < tail:
                y, x = queue[head] // w, queue[head] % w
                head += 1
                for k in range(8):
                    if not eight and DY[k] != 0 and DX[k] != 0:
                        continue
                    v, u = y + DY[k], x + DX[k]
                    if 0 <= v < h and 0 <= u < w and mask[v, u] and not labels[v, u]:
                        labels[v, u] = count
                        queue[tail] = v * w + u
                        tail += 1
    return labels, count


@numba.njit(cache=True, nogil=True)
def _root(parent, g):
    while parent[g] != g:
        g = parent[g]
    return g


@numba.njit(cache=True, nogil=True)
def disconnects(img, y, x, radius, seen, group, stamp, queue):
    """Whether removing foreground pixel (y, x) leaves its foreground 8-neighbours in two or more
    4-connected components, looking only inside the (2 radius + 1)^2 window around it (radius < 0:
    the whole image).

    The neighbours' groups (4-connected around the centre) flood the window together, breadth
    first; groups that meet merge, and the answer is known when one group has nowhere left to go
    (disconnected) or all have met, so a small dangling piece costs little. seen: an int64 image
    of visit stamps with `stamp` unused so far; group: an int64 image; queue: H*W scratch entries.
    """
    h, w = img.shape
    if RING_GROUPS[neighbourhood_code(img, y, x)] <= 1:
        return False                              # connected around the centre
    y0, y1, x0, x1 = 0, h - 1, 0, w - 1
    if radius >= 0:
        y0, y1 = max(0, y - radius), min(h - 1, y + radius)
        x0, x1 = max(0, x - radius), min(w - 1, x + radius)
    parent = np.arange(8)
    pending = np.zeros(8, np.int64)
    seen[y, x] = stamp                            # the removed pixel blocks the search
    sets, tail = 0, 0
    for k in range(8):                            # each foreground neighbour starts as its own set
        v, u = y + DY[k], x + DX[k]
        if 0 <= v < h and 0 <= u < w and img[v, u]:
            seen[v, u], group[v, u] = stamp, sets
            pending[sets] = 1
            queue[tail] = v * w + u
            tail += 1
            sets += 1
    head = 0
    while head < tail:
        cy, cx = queue[head] // w, queue[head] % w
        head += 1
        g = _root(parent, group[cy, cx])
        for k in FOUR_NEIGHBOURS:
            v, u = cy + DY[k], cx + DX[k]
            if not (y0 <= v <= y1 and x0 <= u <= x1 and img[v, u]):
                continue
            if seen[v, u] != stamp:
                seen[v, u], group[v, u] = stamp, g
                pending[g] += 1
                queue[tail] = v * w + u
                tail += 1
            else:
                other = _root(parent, group[v, u]) if (v != y or u != x) else g
                if other != g:                    # two groups meet
                    parent[other] = g
                    pending[g] += pending[other]
                    sets -= 1
                    if sets == 1:
                        return False
        pending[g] -= 1
        if pending[g] == 0:
            return True                           # this group cannot reach the others
    return True
