"""A run directory: the files a training run keeps, each written so that a crash loses nothing.

    config.json     every setting, the data file's sha256, the versions, the sessions
    checkpoint.h5   the latest state (weights, optimiser, sampler and dropout generators, iteration)
    best.h5         the state with the best validation score so far
    metrics.csv     iteration, elapsed_s, train_loss, val_pixel_error, val_rand_error
    curves.png      the loss and validation curves
    train.log       what happened, with times
    train.lock      locked (``flock``) by the training process writing here, and holding its PID

A run directory has one writer at a time: :meth:`RunDirectory.acquire` takes the lock (a second
training on the same folder is refused, naming the first one's PID) and removes the temporary
files a killed writer left behind.
"""
import csv
import json
import math
import time
from pathlib import Path

from minunet.errors import UserError
from minunet.files.atomic import atomic_path, check_folder_creatable, remove_stale_temporaries
from minunet.files.lock import FolderLock
from minunet.files.oserrors import write_error

METRIC_COLUMNS = ("iteration", "elapsed_s", "train_loss", "val_pixel_error", "val_rand_error")
RESULTS = ("metrics.csv", "best.h5", "curves.png")       # void when a run starts afresh


class RunDirectory:
    """The files of one run in ``path`` (created on first write)."""

    def __init__(self, path):
        self.path = Path(path)
        self.checkpoint = self.path / "checkpoint.h5"
        self.best = self.path / "best.h5"
        self.metrics = self.path / "metrics.csv"
        self.curves = self.path / "curves.png"
        self.config = self.path / "config.json"
        self.logfile = self.path / "train.log"
        self.lock = FolderLock(self.path, "train.lock")

    def check_writable(self):
        """UserError unless the folder exists and can be written, or can be created."""
        check_folder_creatable(self.path, "--out")

    def holds_a_run(self):
        """Whether the folder holds (or held) a run: a lock, a checkpoint or a config.json."""
        return any(p.exists() for p in (self.lock.path, self.checkpoint, self.config))

    def acquire(self):
        """Create the folder, lock it for this process and remove stale temporary files (what a
        killed writer left); returns their names. A UserError names the PID of another holder."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise write_error(self.path, err, "--out") from None
        self.lock.acquire("another training", "wait for it to finish, stop it, or choose another --out")
        return remove_stale_temporaries(self.path)

    def release(self):
        """Let another process use the folder."""
        self.lock.release()

    def log(self, message):
        """Append a line, with the time, to train.log (best effort: a full disk must not hide the
        error being logged; the same line goes to the terminal)."""
        try:
            with open(self.logfile, "a") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
        except OSError:
            pass

    def clear_results(self):
        """A new run in a folder without a checkpoint: results of an earlier failed start are void."""
        for name in RESULTS:
            (self.path / name).unlink(missing_ok=True)

    def read_config(self):
        """The stored config.json record ({} when there is none)."""
        if not self.config.is_file():
            return {}
        try:
            record = json.loads(self.config.read_text())
        except (OSError, ValueError) as err:
            raise UserError(f"{self.config}: unreadable ({err}); restore it, or start a new run") from None
        if not isinstance(record, dict):
            raise UserError(f"{self.config}: not a minunet run record; restore it, or start a new run")
        return record

    def write_config(self, record):
        """Replace config.json atomically."""
        with atomic_path(self.config, option=None) as tmp:
            tmp.write_text(json.dumps(record, indent=2) + "\n")

    def append_metrics(self, row):
        """Append one row (a dict keyed by METRIC_COLUMNS; None is an empty cell) to metrics.csv."""
        new = not self.metrics.is_file()
        try:
            with open(self.metrics, "a", newline="") as f:
                writer = csv.writer(f)
                if new:
                    writer.writerow(METRIC_COLUMNS)
                writer.writerow(["" if row.get(k) is None else row[k] for k in METRIC_COLUMNS])
        except OSError as err:
            raise write_error(self.metrics, err, None) from None

    def truncate_metrics(self, iteration):
        """Drop the metrics rows written after ``iteration`` (the checkpoint a run resumes from)."""
        if not self.metrics.is_file():
            return
        with open(self.metrics, newline="") as f:
            rows = list(csv.reader(f))
        kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= iteration]
        with atomic_path(self.metrics, option=None) as tmp, open(tmp, "w", newline="") as f:
            csv.writer(f).writerows(kept)

    def plot(self):
        """Redraw curves.png from metrics.csv."""
        plot_curves(self.metrics, self.curves)


def read_metrics(path):
    """metrics.csv as a dict of column -> list of floats (nan where empty)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: [float(r[k]) if r[k] not in ("", None) else math.nan for r in rows] for k in METRIC_COLUMNS}


def plot_curves(metrics_path, png_path):
    """Training loss and validation errors against iterations, as a PNG (matplotlib, Agg)."""
    import matplotlib  # heavy (pyplot ~0.5 s), only for the curves
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the backend is chosen
    m = read_metrics(metrics_path)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(m["iteration"], m["train_loss"], "o-", label="training loss")
    ax1.set_xlabel("iteration")
    ax1.set_ylabel("weighted cross-entropy (mean since last row)")
    ax1.legend()
    ax2.plot(m["iteration"], m["val_pixel_error"], "o-", label="pixel error")
    ax2.plot(m["iteration"], m["val_rand_error"], "s-", label="Rand error")
    ax2.set_xlabel("iteration")
    ax2.set_ylabel("validation error")
    ax2.legend()
    fig.tight_layout()
    try:
        with atomic_path(png_path, option=None) as tmp:
            fig.savefig(tmp, dpi=80, format="png")
    finally:
        plt.close(fig)
