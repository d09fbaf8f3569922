"""An exclusive lock on a folder, so that two processes never write into one run directory.

``fcntl.flock`` on a lock file in the folder: the kernel releases it when its holder exits, even
after SIGKILL, so a lock never outlives its process and needs no clean-up. The file holds the
holder's PID, which the refusal names.
"""
import errno
import fcntl
import os
from pathlib import Path

from minunet.errors import UserError

_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class FolderLock:
    """``FolderLock(folder).acquire(what)`` holds ``folder/name`` until :meth:`release`."""

    def __init__(self, folder, name):
        self.path = Path(folder) / name
        self.fd = None

    def acquire(self, what, advice):
        """Take the lock, or a UserError naming the PID that holds it (``what`` is doing it,
        ``advice`` what to do). On file systems without locks (some network mounts) it is a no-op."""
        if self.fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(f"{self.path.parent}: {what} (PID {holder}) is already using this folder; "
                            f"{advice}") from None
        except OSError as err:
            if err.errno not in _NO_LOCKS:
                os.close(fd)
                raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self):
        """Let the next process in (the lock file stays: removing it would race with a new holder)."""
        if self.fd is not None:
            os.close(self.fd)             # closing the last descriptor releases the flock
            self.fd = None

    __del__ = release
