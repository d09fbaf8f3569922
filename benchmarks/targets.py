"""Targets that benchmarks report: every figure with a target says whether it was met."""


def verdict(value, target, higher_is_better=False):
    """ "met" or "missed" for a measured value against its target (None: not measured)."""
    if value is None:
        return "not measured"
    ok = value >= target if higher_is_better else value <= target
    return "met" if ok else "missed"


def target_line(name, value, target, unit="", higher_is_better=False, digits=3):
    """One line: the figure, the target and the verdict."""
    sign = ">=" if higher_is_better else "<="
    shown = "-" if value is None else f"{value:.{digits}g}"
    return f"{name}: {shown}{unit} (target {sign} {target:g}{unit}): {verdict(value, target, higher_is_better)}"
