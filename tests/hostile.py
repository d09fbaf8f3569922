"""Helpers of the hostile-file tests: crafted files, folder snapshots, runs under memory limits.

Every hostile case ends the same way: exit status 2, one line ``Error: ...`` naming the problem, no
traceback, no file created or changed (:func:`snapshot` before and after), and, for the cases
that once exhausted memory, all of it under an address-space limit (:func:`run_limited`).
"""
import hashlib
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

from minunet.files.hdf5 import ATTRS_SHA256, array_sha256, attributes_sha256, plain
from minunet.model.checkpoint import ROOT_ATTRS, save_checkpoint
from minunet.model.unet import UNet
from tests.cli_runner import assert_one_line_error, run

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 1 << 30                      # the address space of a memory case: far below what was once read


def snapshot(*folders):
    """{path: sha256} of every file under ``folders`` (hidden ones too)."""
    out = {}
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def refused(args, capsys, *fragments, folders=()):
    """Run ``minunet ARGS``: a one-line error containing ``fragments``, no traceback, nothing changed
    in ``folders``; returns the error line."""
    before = snapshot(*folders)
    code, _, err = run(args, capsys)
    assert "Traceback" not in err, err
    assert_one_line_error(code, err, *fragments)
    assert snapshot(*folders) == before, "files were created or changed"
    return err.strip()


def run_limited(args, cwd, limit=LIMIT, timeout=120, env=None):
    """``minunet ARGS`` in a subprocess whose address space is limited to ``limit`` bytes:
    (exit status, stderr)."""
    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    proc = subprocess.run([sys.executable, "-m", "minunet.cli.main", *map(str, args)], cwd=cwd, env=env,
                          preexec_fn=cap, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stderr


def assert_limited_refusal(code, err, *fragments):
    """A memory case ended as a one-line error (not a MemoryError, not a crash)."""
    assert "Traceback" not in err and "MemoryError" not in err, err
    assert_one_line_error(code, err, *fragments)


def tiny_model(path, **kw):
    """A small, valid checkpoint (depth 2, width 2, on the NumPy reference backend)."""
    settings = dict(depth=2, width=2, device="reference")
    settings.update(kw)
    save_checkpoint(path, UNet(**settings))
    return Path(path)


def reseal(path):
    """Recompute every checksum of a checkpoint after it was crafted, as an attacker could:
    so that the checks behind the checksums are the ones tested."""
    with h5py.File(path, "a") as f:
        def seal(name, obj):
            if not isinstance(obj, h5py.Dataset):
                return
            readable = obj.dtype.kind in "biufc" and not obj.external and not obj.is_virtual and obj.size < 2 ** 24
            obj.attrs["sha256"] = array_sha256(obj[()]) if readable else "0" * 64
        f.visititems(seal)
        if "optimizer" in f and isinstance(f.get("optimizer", getlink=True), h5py.HardLink):
            opt = f["optimizer"]
            if isinstance(opt, h5py.Group):
                opt.attrs[ATTRS_SHA256] = attributes_sha256({n: plain(opt.attrs[n]) for n in ["steps"] if n in opt.attrs})
        f.attrs[ATTRS_SHA256] = attributes_sha256({n: plain(f.attrs[n]) for n in ROOT_ATTRS if n in f.attrs})


def first_param(f):
    """The name (under /params) of a checkpoint's first parameter."""
    return sorted(f["params"].keys())[0]


def tiff_image(path, array):
    """A grayscale TIFF."""
    import tifffile
    tifffile.imwrite(path, np.asarray(array), photometric="minisblack")
    return Path(path)


def unshare_available():
    """Whether this machine lets a test mount a small file system in a private namespace."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-Urm", "sh", "-c", "mount -t tmpfs -o size=64k none /mnt && echo ok"],
                           capture_output=True, text=True)
    return probe.returncode == 0 and "ok" in probe.stdout


def in_namespace(setup, argv, timeout=180, env=None):
    """Run ``setup`` (shell: mounts) then ``python -c ARGV[0] ARGV[1:]`` in a private mount namespace."""
    script = f"{setup} && exec {sys.executable} " + " ".join(_quote(a) for a in argv)
    proc = subprocess.run(["unshare", "-Urm", "sh", "-c", script], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env or os.environ)
    return proc.returncode, proc.stderr


def _quote(text):
    return "'" + str(text).replace("'", "'\\''") + "'"
