"""Where the ISBI 2012 data lies: the one rule that tests, benchmarks and docs follow.

``MINUNET_ISBI_DIR`` names the folder (the one holding ``train/image``, ``train/label`` and
``test``); without it, ``../shared/data/isbi2012`` beside the source checkout, then beside the
current folder.
"""
import os
from pathlib import Path

ENV = "MINUNET_ISBI_DIR"
_CHECKOUT = Path(__file__).resolve().parents[2]


def isbi_dir():
    """The ISBI 2012 folder to use, whether or not it exists (callers check and skip or explain)."""
    given = os.environ.get(ENV)
    if given:
        return Path(given).expanduser()
    for base in (_CHECKOUT, Path.cwd()):
        candidate = base.parent / "shared" / "data" / "isbi2012"
        if candidate.is_dir():
            return candidate
    return _CHECKOUT.parent / "shared" / "data" / "isbi2012"
