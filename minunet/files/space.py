"""How much memory and disk a job may use, checked before the work instead of failing half-way.

Every reader compares what a file *declares* (shapes, dtypes) with :func:`available_memory` before
it decodes anything, and every large write compares its size with :func:`free_bytes` of the
folder it writes into, so that a hostile or merely huge input is refused in one line and a full
disk is found before a file is half-written.
"""
import os
import resource

from minunet.errors import UserError
from minunet.files.oserrors import where


def gib(nbytes):
    """Bytes as a short human figure: 0.3 GiB, 12 MiB, 800 bytes."""
    if nbytes >= 2 ** 30 / 10:
        return f"{nbytes / 2 ** 30:.1f} GiB"
    if nbytes >= 2 ** 20:
        return f"{nbytes / 2 ** 20:.0f} MiB"
    if nbytes >= 2 ** 10:
        return f"{nbytes / 2 ** 10:.0f} KiB"
    return f"{int(nbytes)} bytes"


def _meminfo():
    """MemAvailable of the host (bytes), or None where /proc/meminfo cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        return info.get("MemAvailable", info.get("MemFree"))
    except (OSError, ValueError, IndexError):
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (OSError, ValueError):
            return None


def _cgroup_headroom():
    """What the process's cgroup (v2) still allows, counting its page cache as reclaimable; None
    without a limit."""
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read())
        with open("/sys/fs/cgroup/memory.stat") as f:
            cache = next((int(line.split()[1]) for line in f if line.startswith("file ")), 0)
        return max(int(limit) - used + cache, 0)
    except (OSError, ValueError, IndexError):
        return None


def _address_space_headroom():
    """What RLIMIT_AS still allows this process to map, or None without a limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        with open("/proc/self/status") as f:
            size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    except (OSError, StopIteration, ValueError):
        size = 0
    return max(soft - size, 0)


def available_memory():
    """Bytes this process can still allocate: the least of the host's available memory, the
    cgroup's headroom and the address-space limit (``ulimit -v``)."""
    limits = [v for v in (_meminfo(), _cgroup_headroom(), _address_space_headroom()) if v is not None]
    return min(limits) if limits else 4 << 30


def check_memory(nbytes, subject, fix, share=0.8):
    """UserError unless ``nbytes`` fit in ``share`` of :func:`available_memory`.

    ``subject`` says what needs the memory ("INPUT: a 20000 x 20000 image"), ``fix`` what to do.
    """
    budget = int(share * available_memory())
    if nbytes > budget:
        raise UserError(f"{subject} needs about {gib(nbytes)} of memory but only {gib(budget)} can be "
                        f"used; {fix}")


def free_bytes(folder):
    """Bytes an unprivileged writer can still put into ``folder``'s file system (None if unknown)."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize


def check_free_space(path, nbytes, option="-o"):
    """UserError when the file system that will hold ``path`` has less than ``nbytes`` free."""
    folder = os.path.dirname(os.path.abspath(path))
    free = free_bytes(folder)
    if free is not None and nbytes > free:
        raise UserError(f"{where(option, path)}: needs about {gib(nbytes)} but only {gib(free)} are free on that disk; "
                        "free some space or write to another disk")
