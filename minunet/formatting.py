"""Numbers as people read them in logs and summaries, formatted the same way everywhere."""


def fmt(value, digits=4):
    """A number with ``digits`` significant digits, or "-" for a missing value (None)."""
    return "-" if value is None else f"{value:.{digits}g}"
