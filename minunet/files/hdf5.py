"""The one door through which minunet reads HDF5: checkpoints, data files and HDF5 inputs.

A model or data file may come from a stranger, or be damaged. Everything read goes through an
:class:`H5Reader`, which checks an object before reading it:

- objects are reached through hard links only: soft links (a loop), external links (another
  file) and committed types are refused;
- a dataset is read only after its storage is checked: no external raw storage (bytes of another
  file, such as ``/etc/hostname``), no virtual dataset, only HDF5's own filters in minunet's own
  files, chunks of bounded size, a real numeric dtype; callers check names, shapes and dtypes
  against what the file's own description implies before they read (memory bounded by the job);
- attributes are read by name only, bounded in size, typed, and JSON ones parsed and validated;
- arrays can carry a SHA-256 (``sha256`` attribute) and a group's attributes an ``attrs_sha256``,
  verified on reading, so that damage is named, not loaded;
- every HDF5 error on the way (a truncated file, a corrupt header, a failed chunk checksum) is one
  line saying the file is damaged or incomplete.
"""
import contextlib
import hashlib
import json
import re
from pathlib import Path

import numpy as np

from minunet.errors import UserError
from minunet.files.oserrors import reason
from minunet.files.space import gib

SIGNATURE = b"\x89HDF\r\n\x1a\n"
BUILTIN_FILTERS = {1: "gzip", 2: "shuffle", 3: "fletcher32", 32000: "lzf"}
MAX_ATTRIBUTE_BYTES = 16 << 20        # every attribute minunet writes is far smaller
MAX_CHUNK_BYTES = 256 << 20           # one chunk is decompressed whole, whatever is read of it
ATTRS_SHA256 = "attrs_sha256"
_MISSING = object()


def array_sha256(array):
    """SHA-256 (hex) of an array's bytes in C order (the stored dtype, as read)."""
    a = np.ascontiguousarray(array)
    return hashlib.sha256(a.reshape(-1).view(np.uint8)).hexdigest()


def attributes_sha256(values):
    """SHA-256 (hex) of a dict of plain attribute values, as canonical JSON."""
    text = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def plain(value):
    """An HDF5 attribute value as plain Python: bytes -> str, arrays -> lists, NumPy scalars -> numbers."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()] if value.ndim else plain(value.item())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def seal_attributes(obj, names):
    """Store ``attrs_sha256`` over the attributes ``names`` of ``obj`` (those present), as written."""
    obj.attrs[ATTRS_SHA256] = attributes_sha256({n: plain(obj.attrs[n]) for n in names if n in obj.attrs})


def _has_signature(path, size):
    """Whether the HDF5 signature is where the format puts it (0, 512, 1024, 2048, ...)."""
    with open(path, "rb") as f:
        offset = 0
        while offset + len(SIGNATURE) <= size:
            f.seek(offset)
            if f.read(len(SIGNATURE)) == SIGNATURE:
                return True
            offset = 512 if offset == 0 else 2 * offset
    return False


def _hdf5_reason(err):
    """The useful part of an h5py error: its first line, without h5py's 'Unable to synchronously'."""
    text = (str(err).splitlines() or [type(err).__name__])[0]
    return re.sub(r"^Unable to (synchronously )?", "cannot ", text)[:200]


def damaged(path, kind, err):
    """The UserError for an HDF5 error while reading ``path``: incomplete when cut short, else damaged."""
    text = str(err)
    cut = re.search(r"eof = (\d+).*stored_eof = (\d+)", text, re.S)
    if cut:
        return UserError(f"{path}: incomplete {kind}: the file ends after {int(cut.group(1)):,} of the "
                         f"{int(cut.group(2)):,} bytes it declares (an interrupted copy or download?); copy it again")
    return UserError(f"{path}: damaged {kind} ({_hdf5_reason(err)}); restore it from a backup or write it again")


@contextlib.contextmanager
def open_h5(path, kind, fix):
    """An :class:`H5Reader` on ``path`` opened read-only; closed after the block.

    ``kind`` names the file in messages ("checkpoint", "data file"); ``fix`` says what to do when
    the file is not one minunet can read. Not HDF5, cut short, damaged: one-line UserErrors; HDF5
    errors inside the block too.
    """
    import h5py  # lazy: `minunet predict --help` imports this module
    path = Path(path)
    if not path.is_file():
        what = "is not a regular file" if path.exists() else "does not exist"
        raise UserError(f"{path}: {what}; {fix}")
    try:
        signed = _has_signature(path, path.stat().st_size)
    except OSError as err:
        raise UserError(f"{path}: cannot read ({reason(err)}); check its permissions") from None
    if not signed:
        raise UserError(f"{path}: not an HDF5 file, so not a minunet {kind}; {fix}")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise damaged(path, kind, err) from None
    with f, translate_errors(path, kind):
        yield H5Reader(f, path, kind, fix)


@contextlib.contextmanager
def translate_errors(path, kind):
    """HDF5 errors raised in the block (a bad chunk, a corrupt header) as a one-line UserError."""
    try:
        yield
    except UserError:
        raise
    except (OSError, RuntimeError) as err:
        raise damaged(path, kind, err) from None
    except KeyError as err:                     # h5py's way of saying an object header is unreadable
        if "Unable to" not in str(err):
            raise
        raise damaged(path, kind, err) from None


class H5Reader:
    """Checked access to an open h5py.File (see the module docstring); every refusal names the file."""

    def __init__(self, f, path, kind, fix):
        self.file, self.path, self.kind, self.fix = f, Path(path), kind, fix

    def fail(self, what, fix=None):
        """Raise the UserError ``PATH: what; fix``."""
        raise UserError(f"{self.path}: {what}; {fix or self.fix}")

    # ------------------------------------------------------------------ objects

    def get(self, name, want, required=True):
        """The object at ``name`` ("/params/x"), reached through hard links only, of type ``want``
        (h5py.Group or h5py.Dataset); None if absent and not ``required``."""
        import h5py  # lazy: `minunet predict --help` imports this module
        obj, walked = self.file, ""
        for part in [p for p in name.split("/") if p]:
            link = obj.get(part, getlink=True)
            walked += "/" + part
            if link is None:
                if required:
                    self.fail(f"{walked} is missing")
                return None
            if isinstance(link, h5py.ExternalLink):
                self.fail(f"{walked} is a link to another file ({str(link.filename)[:80]}); minunet does not follow "
                          "links out of a file")
            if not isinstance(link, h5py.HardLink):
                self.fail(f"{walked} is a soft link; minunet does not follow links inside its files")
            obj = obj[part]
            if not isinstance(obj, (h5py.Group, h5py.Dataset)):
                self.fail(f"{walked} is a {type(obj).__name__}, not a group or dataset")
        if not isinstance(obj, want):
            expected = "group" if want is h5py.Group else "dataset"
            self.fail(f"{name} is not a {expected}")
        return obj

    def members(self, group, limit):
        """The names in ``group`` (checked to be at most ``limit`` before they are listed)."""
        count = len(group)
        if count > limit:
            self.fail(f"{group.name} holds {count} entries, more than the {limit} expected")
        return list(group.keys())

    def dataset(self, name, shape=None, dtypes=None, required=True, minunet_file=True):
        """A dataset whose storage, dtype and (optionally) exact ``shape`` and ``dtypes`` are checked.

        ``minunet_file``: only HDF5's own filters (a file minunet wrote); user inputs may use others.
        Nothing is read yet.
        """
        import h5py  # lazy: `minunet predict --help` imports this module
        ds = self.get(name, h5py.Dataset, required)
        if ds is None:
            return None
        if ds.is_virtual:
            self.fail(f"{name} is a virtual dataset (made of other files' data); minunet reads no other file")
        if ds.external:
            self.fail(f"{name} keeps its data in another file ({str(ds.external[0][0])[:80]}); minunet reads no other file")
        dtype = ds.dtype
        if dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in "biuf":
            self.fail(f"{name} holds {dtype} values, not real numbers")
        if dtypes is not None and dtype not in [np.dtype(d) for d in dtypes]:
            self.fail(f"{name} holds {dtype} values; expected {' or '.join(str(np.dtype(d)) for d in dtypes)}")
        if shape is not None and tuple(ds.shape) != tuple(shape):
            self.fail(f"{name} has shape {tuple(ds.shape)}; expected {tuple(shape)}")
        if ds.chunks is not None and int(np.prod(ds.chunks)) * dtype.itemsize > MAX_CHUNK_BYTES:
            self.fail(f"{name} is stored in chunks of {gib(int(np.prod(ds.chunks)) * dtype.itemsize)}, "
                      f"more than the {gib(MAX_CHUNK_BYTES)} minunet decompresses at once")
        if minunet_file:
            plist = ds.id.get_create_plist()
            for i in range(plist.get_nfilters()):
                code = plist.get_filter(i)[0]
                if code not in BUILTIN_FILTERS:
                    self.fail(f"{name} is compressed with HDF5 filter {code}, which minunet does not write")
        return ds

    def read(self, ds, sha256=None):
        """A checked dataset's whole content; verified against ``sha256`` when given."""
        array = ds[()]
        if sha256 is not None and array_sha256(array) != sha256:
            raise UserError(f"{self.path}: damaged {self.kind}: {ds.name} does not match its checksum; "
                            "restore the file from a backup or write it again")
        return array

    # ------------------------------------------------------------------ attributes

    def attr(self, obj, name, default=_MISSING):
        """Attribute ``name`` of ``obj`` as plain Python (str, number, list), its size and type
        checked before it is read; ``default`` when absent (else a UserError)."""
        import h5py  # lazy: `minunet predict --help` imports this module
        if name not in obj.attrs:
            if default is _MISSING:
                self.fail(f"attribute '{name}' of {obj.name} is missing")
            return default
        aid = h5py.h5a.open(obj.id, name.encode())
        dtype = aid.dtype
        size = int(np.prod(aid.shape or (), dtype=np.float64)) * dtype.itemsize
        if size > MAX_ATTRIBUTE_BYTES:
            self.fail(f"attribute '{name}' of {obj.name} holds {gib(size)}, far more than minunet writes")
        if h5py.check_string_dtype(dtype) is None and (dtype.fields is not None or dtype.kind not in "biuf"):
            self.fail(f"attribute '{name}' of {obj.name} holds {dtype} values")
        try:
            return plain(obj.attrs[name])
        except UnicodeDecodeError:
            self.fail(f"attribute '{name}' of {obj.name} is not UTF-8 text")

    def json_attr(self, obj, name, expect=dict, default=_MISSING):
        """A JSON attribute, parsed, of type ``expect``."""
        text = self.attr(obj, name, default)
        if text is default and default is not _MISSING:
            return default
        if not isinstance(text, str):
            self.fail(f"attribute '{name}' is {type(text).__name__}, not JSON text")
        try:
            value = json.loads(text)
        except ValueError as err:
            self.fail(f"attribute '{name}' is not valid JSON ({str(getattr(err, 'msg', err))[:80]})")
        except RecursionError:
            self.fail(f"attribute '{name}' nests its JSON too deeply")
        if not isinstance(value, expect):
            self.fail(f"attribute '{name}' holds a JSON {type(value).__name__}, not a {expect.__name__}")
        return value

    def verify_attributes(self, obj, names):
        """Check ``attrs_sha256`` of ``obj`` (when it has one) over the attributes ``names``."""
        stored = self.attr(obj, ATTRS_SHA256, None)
        if stored is None:
            return False
        values = {n: self.attr(obj, n) for n in names if n in obj.attrs}
        if attributes_sha256(values) != stored:
            owner = "its attributes" if obj.name == "/" else f"the attributes of {obj.name}"
            raise UserError(f"{self.path}: damaged {self.kind}: {owner} do not match their checksum; restore "
                            "the file from a backup or write it again")
        return True


def row_blocks(ds, index, max_bytes=16 << 20):
    """Slice ``index`` of an (N, H, W) dataset in blocks of rows of at most ``max_bytes`` (memory
    bounded whatever the slice's size)."""
    rows = max(1, max_bytes // max(1, ds.shape[2] * ds.dtype.itemsize))
    for start in range(0, ds.shape[1], rows):
        yield ds[index, start:start + rows]
