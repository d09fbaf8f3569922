"""A file HDF5 can always finish writing: space reserved first, a failed write kept, not raised.

After a failed write (a full disk) the HDF5 library can crash in its close, in the middle of
``h5py``'s clean-up or at interpreter exit. minunet therefore writes HDF5 through h5py's
file-object driver into a :class:`ReservedFile`: the space the file will need is allocated
(``posix_fallocate``) before HDF5 writes a byte, so a full disk is found at the start; should a
write fail all the same (an estimate too small), the error is kept and later writes are dropped,
HDF5 closes normally, and the caller raises the kept error and deletes the file.
"""
import errno
import io
import os

_OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class ReservedFile(io.RawIOBase):
    """``path`` opened for h5py's file-object driver, with ``reserve`` bytes allocated after what
    it holds (``keep=True`` keeps its content; otherwise it is emptied)."""

    def __init__(self, path, reserve=0, keep=False):
        super().__init__()
        self.fd = os.open(path, os.O_RDWR | (0 if keep else os.O_TRUNC))
        self.pos, self.end, self.error = 0, os.fstat(self.fd).st_size, None
        if reserve > 0:
            try:
                os.posix_fallocate(self.fd, self.end, int(reserve))
            except OSError as err:
                if err.errno in _OUT_OF_SPACE:
                    os.close(self.fd)
                    raise
                # file systems without preallocation: the writes below still never fail HDF5

    def readable(self):
        return True

    def writable(self):
        return True

    def seekable(self):
        return True

    def seek(self, offset, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.end}[whence]
        self.pos = base + offset
        return self.pos

    def tell(self):
        return self.pos

    def readinto(self, buffer):
        view = memoryview(buffer).cast("B")
        data = os.pread(self.fd, min(len(view), max(self.end - self.pos, 0)), self.pos)
        view[:len(data)] = data
        self.pos += len(data)
        return len(data)

    def write(self, buffer):
        view = memoryview(buffer).cast("B")
        if self.error is None:
            try:
                done = 0
                while done < len(view):
                    done += os.pwrite(self.fd, view[done:], self.pos + done)
            except OSError as err:
                self.error = err                 # kept for finish(); HDF5 is told all went well
        self.pos += len(view)
        self.end = max(self.end, self.pos)
        return len(view)

    def truncate(self, size=None):
        self.end = self.pos if size is None else int(size)
        return self.end

    def flush(self):
        pass

    def finish(self):
        """Cut the file to what HDF5 wrote (the unused reservation goes), sync it, close it;
        returns the first write error (None when every write went to disk)."""
        try:
            if self.error is None:
                os.ftruncate(self.fd, self.end)
                os.fsync(self.fd)
        except OSError as err:
            self.error = err
        finally:
            os.close(self.fd)
            super().close()
        return self.error
