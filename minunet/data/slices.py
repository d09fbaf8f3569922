"""Slice selections: ``"24-29"``, ``"0,3,5-9"`` or ``"all"``, read and written in one place."""
import re

from minunet.errors import UserError


def parse_slices(text, n=None):
    """Parse a slice selection like ``"24-29"``, ``"0-23"``, ``"0,3,5-9"`` or ``"all"`` into a list.

    Ranges are inclusive (``24-29`` is 6 slices). With ``n`` (number of slices) every index is
    checked and ``"all"``/``None`` means ``range(n)``. Raises UserError on bad syntax or range.
    """
    if text is None or str(text).strip().lower() in ("", "all", ":"):
        if n is None:
            raise UserError("slice selection 'all' needs the number of slices")
        return list(range(n))
    if isinstance(text, (list, tuple, range)):
        out = [int(v) for v in text]
    else:
        out = []
        for part in str(text).replace(" ", "").split(","):
            m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
            if not m:
                raise UserError(f"slices '{text}': cannot read '{part}'; write slices like 24-29 or 0,3,5-9")
            lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
            if hi < lo:
                raise UserError(f"slices '{text}': range {part} runs backwards; write {hi}-{lo}")
            out.extend(range(lo, hi + 1))
    if not out:
        raise UserError(f"slices '{text}': the selection is empty")
    if n is not None:
        bad = [i for i in out if not 0 <= i < n]
        if bad:
            raise UserError(f"slices '{text}': slice {bad[0]} is out of range; the file has slices 0-{n - 1}")
    return out


def format_slices(indices):
    """Inverse of :func:`parse_slices`: ``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
    indices = sorted(set(int(i) for i in indices))
    parts, start = [], None
    for a, b in zip(indices, indices[1:] + [None]):
        start = a if start is None else start
        if b != a + 1:
            parts.append(str(a) if start == a else f"{start}-{a}")
            start = None
    return ",".join(parts)


def select_slices(text, n, option):
    """The slices ``text`` selects among ``n``, checked; a UserError names ``option`` otherwise."""
    try:
        return parse_slices(str(text), n)
    except UserError as err:
        raise UserError(f"{option}: {err}") from None
