"""Operating-system errors (full disk, permissions, read-only file systems) as one user line.

A write that fails for a reason of the machine, not of minunet, is reported as a
:class:`~minunet.errors.UserError` naming the file, what the system said and what to do.
"""
import errno
import os
import re

from minunet.errors import UserError

_FIXES = {
    errno.ENOSPC: "free some space on that disk or write to another one",
    errno.EDQUOT: "your disk quota is used up: free some space or write elsewhere",
    errno.EFBIG: "the file is larger than this file system or `ulimit -f` allows: write elsewhere",
    errno.EROFS: "that file system is read-only: write to another folder",
    errno.EACCES: "check the permissions or write to another folder",
    errno.EPERM: "check the permissions or write to another folder",
    errno.EIO: "the disk reported an input/output error: check it, or write elsewhere",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
    errno.ENOENT: "the folder does not exist (any more): create it or choose another path",
}


def reason(err):
    """What the system said, in a few words ("no space left on device")."""
    code = getattr(err, "errno", None)
    if code is None and re.search(r"\d+ requested and \d+ written", str(err)):
        code = errno.ENOSPC                 # a short write (tifffile's words): the disk is full
    if code in errno.errorcode:
        text = os.strerror(code)            # h5py's messages run to several lines; this is one
    else:
        text = getattr(err, "strerror", None) or (str(err).splitlines() or [""])[0] or type(err).__name__
    return text[0].lower() + text[1:]


def where(option, path):
    """How a message names a file: ``-o out.tif`` when an option chose it, else the path alone."""
    return f"{option} {path}" if option else str(path)


def write_error(path, err, option="-o"):
    """A UserError for an OSError raised while writing ``path``."""
    code = getattr(err, "errno", None)
    if code is None and reason(err) == os.strerror(errno.ENOSPC).lower():
        code = errno.ENOSPC
    fix = _FIXES.get(code, "choose another location")
    return UserError(f"{where(option, path)}: cannot write ({reason(err)}); {fix}")
