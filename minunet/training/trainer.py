"""Training: the paper's recipe in a run directory, with safe checkpoints and exact resume.

The recipe of Ronneberger et al. (2015): a batch of one large tile, He initialisation and dropout
(both in :class:`minunet.model.unet.UNet`), elastic augmentation and the border weight maps of the
data file (both in :class:`minunet.data.sampler.TileSampler`), the weighted softmax cross-entropy,
and SGD with momentum or Adam (docs/training.md says which is the default, and why). With deep
supervision (the paper's dental network) each coarse expanding level adds its own weighted loss.

On the CPU, N iterations, a stop and a resume to N + M give bitwise the weights of N + M
iterations in one go: everything random is drawn from generators saved in the checkpoint.
"""
import dataclasses
import math
import sys
import time
from pathlib import Path

import numpy as np

from minunet.data.sampler import TileSampler
from minunet.engine import functional as F
from minunet.engine.autograd import Tensor
from minunet.engine.devices import resolve_device, to_device
from minunet.engine.optim import SGD, Adam
from minunet.errors import UserError
from minunet.formatting import fmt
from minunet.model import geometry
from minunet.model.checkpoint import generator_state, load_checkpoint, load_weights, restore_generator, save_checkpoint
from minunet.model.unet import UNet
from minunet.training.config import DEFAULT_LR, TrainResult
from minunet.training.distributed import SingleProcess
from minunet.training.memory import check_memory
from minunet.training.provenance import file_sha256, jsonable, versions
from minunet.training.setup import aux_levels, open_training_data
from minunet.training.signals import install_handlers, restore_handlers, stop_after_signal
from minunet.training.supervision import IGNORE, coarse_targets
from minunet.training.validation import ADVICE, BASELINE_MARGIN, Validation, degenerate_reason

SAMPLER_STREAM = 2               # the sampler's seed: SeedSequence([seed, SAMPLER_STREAM]) of the run's seed
LOSS_ROWS_PER_VALIDATION = 10    # metrics.csv gets a training-loss row this many times per validation


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class Trainer:
    """One training run in a run directory: build, step, validate, checkpoint, resume.

    Args:
        config: a :class:`TrainConfig` (to resume, the stored one: see :func:`resume_config`).
        resume: continue from ``config.out/checkpoint.h5``.
        echo: called with each log line (besides train.log); None prints nothing.
        sampler: a training-tile sampler (``batch(n)``, ``state()``, ``set_state()``) to use
            instead of :class:`minunet.data.sampler.TileSampler` (tests).
        comm: this process's rank among data-parallel ranks (:mod:`minunet.training.distributed`);
            None for one process. Only rank 0 reads and writes the run directory.
    """

    def __init__(self, config, resume=False, echo=None, sampler=None, comm=None):
        self.echo = echo
        self.comm = comm or SingleProcess()
        self.out = Path(config.out)
        self.run_dir = self.comm.run_directory(self.out)
        self.run_dir.check_writable()
        if self.run_dir.holds_a_run():
            self.run_dir.acquire()          # one writer per run directory, before reading what it holds
        try:
            self._setup(config, resume, sampler)
        except BaseException:
            self.close()
            raise

    def _setup(self, config, resume, sampler):
        config = self._prepare_directory(config, resume) if self.comm.is_root else dataclasses.replace(config)
        config.device = resolve_device(config.device)
        if config.iterations is None and config.minutes is None:
            raise UserError("give a budget: --iterations N or --minutes M")
        if config.optimizer not in DEFAULT_LR:
            raise UserError(f"--optimizer {config.optimizer}: unknown; use sgd or adam")
        if config.lr is None:
            config.lr = DEFAULT_LR[config.optimizer]
        if not config.lr > 0 or not math.isfinite(config.lr):
            raise UserError(f"--lr {config.lr}: the learning rate must be a positive number")
        if config.val_every < 1:
            raise UserError(f"--val-every {config.val_every}: must be at least 1")
        self.config = config

        self.data_info, self.train_slices, self.val_slices = open_training_data(config)
        self.n_slices, self.classes = self.data_info.n_slices, config.classes
        self.geometry = _geometry(config)

        self.model = UNet(depth=config.depth, width=config.width, in_channels=1, classes=self.classes,
                          up_kernel=config.up_kernel, dropout=config.dropout,
                          deep_supervision=config.deep_supervision, device=config.device, seed=config.seed)
        check_memory(config, self.geometry, self.model)
        params = self.model.parameters()
        if config.optimizer == "sgd":
            self.optimizer = SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
        else:
            self.optimizer = Adam(params, lr=config.lr, weight_decay=config.weight_decay)
        self.aux = aux_levels(config, self.geometry)
        sampler_seed = int(np.random.SeedSequence([config.seed, SAMPLER_STREAM]).generate_state(1)[0])
        self.sampler = sampler or TileSampler(config.data, self.train_slices, self.geometry.input_size,
                                              self.geometry.output_size, augment=config.augment,
                                              pad=config.pad, seed=sampler_seed, workers=config.workers,
                                              rank=self.comm.rank)
        self.iteration, self.elapsed_before = 0, 0.0
        self.loss_sum, self.loss_count = 0.0, 0
        self.best_score, self.best_iteration = None, None
        self.stop_signal = None
        self.degenerate = None
        self.loss_every = max(1, config.val_every // LOSS_ROWS_PER_VALIDATION)
        self._validation = None
        self._record = None
        if self.comm.is_root:               # the other ranks get rank 0's state in run(), and write nothing
            if resume:
                self._load_state(self.out / "checkpoint.h5")
            self.run_dir.acquire()
            if not resume:
                self.run_dir.clear_results()
            self._record = self._config_record(resume)       # written with the session's first checkpoint

    # ------------------------------------------------------------------ setup

    def _prepare_directory(self, config, resume):
        ckpt = self.out / "checkpoint.h5"
        if resume and not ckpt.is_file():
            raise UserError(f"--resume: {self.out} holds no checkpoint.h5 to continue; start a new run without --resume")
        if not resume and ckpt.exists():
            raise UserError(f"{self.out} already holds a run (checkpoint.h5); add --resume to continue it "
                            f"or choose another --out")
        return dataclasses.replace(config)

    def _config_record(self, resume):
        """config.json's new content; written by :meth:`save` once this session has a checkpoint, so
        that settings that failed (a --resume --lr that diverges at once) never replace good ones."""
        record = self.run_dir.read_config() if resume else {}
        sha = file_sha256(self.config.data)
        if resume and record.get("data_sha256") not in (None, sha):
            raise UserError(f"--resume: {self.config.data} changed since the run started (sha256 differs); "
                            f"resume with the original file or start a new run")
        sessions = record.get("sessions", [])
        sessions.append({"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "iteration": self.iteration,
                         "argv": sys.argv[1:], "ranks": self.comm.size})
        record.update(settings=self.config.to_json(), ranks=self.comm.size, data_sha256=sha, versions=versions(),
                      model=self.model.config(), parameters=self.model.num_parameters(),
                      geometry=dataclasses.asdict(self.geometry), train_slices=self.train_slices,
                      val_slices=self.val_slices, sessions=sessions)
        return record

    def log(self, message):
        """A line in train.log (with the time) and, unless quiet, on the terminal."""
        self.run_dir.log(message)
        if self.echo is not None:
            self.echo(message)

    # ------------------------------------------------------------------ state

    def state_extra(self):
        return {"config": self.config.to_json(), "elapsed_s": self.elapsed(), "loss_sum": self.loss_sum,
                "loss_count": self.loss_count, "best_score": self.best_score,
                "best_iteration": self.best_iteration, "ranks": self.comm.size}

    def save(self, path=None):
        """Write a full checkpoint (default: checkpoint.h5); refuses non-finite weights."""
        if not self.comm.is_root:
            return
        path = Path(path or self.out / "checkpoint.h5")
        if not _finite_params(self.model):
            raise TrainingDiverged(f"the weights became NaN or infinite by iteration {self.iteration}: "
                                   + self._diverged_advice())
        rng = {"dropout": generator_state(self.model.dropout_rng), "sampler": jsonable(self.sampler.state())}
        if self._record is not None and path == self.run_dir.checkpoint:
            self.run_dir.write_config(self._record)      # first: a checkpoint never lacks its config.json
            self._record = None
        save_checkpoint(path, self.model, self.optimizer, self.iteration, rng=rng, extra=self.state_extra())
        self._last_save = time.monotonic()

    def _diverged_advice(self):
        """The likely cause of a NaN/Inf and what to do, naming the last good checkpoint."""
        lr, lower = self.config.lr, self.config.lr / 10
        cause = f"the learning rate (--lr {lr:g}) is probably too high for this data"
        ckpt = self.out / "checkpoint.h5"
        if ckpt.is_file():
            iteration = load_checkpoint(ckpt, training_state=False).iteration
            return (f"{cause}; {ckpt} keeps the last good state (iteration {iteration}): continue it with "
                    f"`minunet train --out {self.out} --resume --lr {lower:g}`")
        return f"{cause}; no checkpoint was written yet: start again with a lower --lr (e.g. --lr {lower:g})"

    def _load_state(self, path):
        ckpt = load_checkpoint(path)
        load_weights(self.model, ckpt, path)
        kind = ckpt.optimizer.get("kind")
        if kind != self.config.optimizer:
            raise UserError(f"{path}: the run used --optimizer {kind}, not {self.config.optimizer}")
        self.optimizer.load_state(ckpt.optimizer_state)
        self.model.dropout_rng = restore_generator(ckpt.rng["dropout"])
        self.sampler.set_state(ckpt.rng["sampler"])
        self.iteration = ckpt.iteration
        extra = ckpt.extra
        self.elapsed_before = float(extra.get("elapsed_s", 0.0))
        self.loss_sum, self.loss_count = float(extra.get("loss_sum", 0.0)), int(extra.get("loss_count", 0))
        self.best_score = extra.get("best_score", extra.get("best_rand_error"))
        self.best_iteration = extra.get("best_iteration")
        self.resumed_ranks = int(extra.get("ranks", 1))
        self.run_dir.truncate_metrics(self.iteration)

    # ------------------------------------------------------------------ one step

    def elapsed(self):
        """Seconds of wall time spent on this run, over every session."""
        return self.elapsed_before + (time.monotonic() - self._t0 if hasattr(self, "_t0") else 0.0)

    def loss(self, image, labels, weights):
        """The training loss tensor for a batch: weighted softmax CE (plus weighted aux losses).

        On several ranks each term is scaled by this rank's share of the term's pixels, so that
        the ranks' gradients sum to the gradient of the whole batch's loss.
        """
        device = self.config.device
        targets = [(labels, weights, 1.0)] + [(*coarse_targets(labels, weights, idx), w) for idx, w in self.aux]
        shares = self.comm.loss_shares([lab for lab, _, _ in targets], ignore=IGNORE)
        x = Tensor(to_device(image, device), device=device)
        out = self.model(x)
        logits, aux = (out if self.config.deep_supervision else (out, []))
        total = None
        for scores, (lab, wgt, w), share in zip([logits] + list(aux), targets, shares):
            term = F.softmax_cross_entropy(scores, to_device(lab, device), to_device(wgt, device), ignore=IGNORE)
            if w * share != 1.0:
                term = F.scale(term, w * share)
            total = term if total is None else F.add(total, term)
        return total

    def step(self):
        """One optimiser step on a fresh batch; returns the loss (raises TrainingDiverged on NaN/Inf)."""
        image, labels, weights = self.sampler.batch(self.config.batch)
        self.model.train()
        loss = self.loss(image, labels, weights)
        self.optimizer.zero_grad()
        loss.backward()
        value = self.comm.sum_gradients(self, loss.item())      # and the loss, over the ranks
        if not math.isfinite(value):
            raise TrainingDiverged(f"the loss became {value} at iteration {self.iteration + 1}: "
                                   + self._diverged_advice())
        self.optimizer.step()
        self.iteration += 1
        self.loss_sum += value
        self.loss_count += 1
        return value

    def close(self):
        """Stop the sampling workers, close the data file and unlock the run directory."""
        close = getattr(getattr(self, "sampler", None), "close", None)
        if close is not None:
            close()
        self.run_dir.release()

    # ------------------------------------------------------------------ validation

    @property
    def validation(self):
        """The validation slices and their scoring (loaded on first use), or None without any."""
        if self._validation is None and self.val_slices and self.comm.is_root:
            self._validation = Validation(self.config.data, self.val_slices, self.classes, self.config.pad,
                                          self.config.batch)
        return self._validation

    def validate(self):
        """The :class:`Scores` of the model on the validation slices (overlap-tile prediction);
        TrainingDiverged instead when the weights or the predictions are no longer finite."""
        if not _finite_params(self.model):
            raise TrainingDiverged(f"the weights became NaN or infinite by iteration {self.iteration}: "
                                   + self._diverged_advice())
        probs = self.validation.probabilities(self.model, self.config.tile)
        if not np.isfinite(probs).all():
            raise TrainingDiverged(f"the predictions became NaN or infinite by iteration {self.iteration} "
                                   "(the weights grew too large): " + self._diverged_advice())
        return self.validation.score(probs)

    # ------------------------------------------------------------------ the loop

    def done(self):
        """Why the run's budget is spent (None while it is not)."""
        c = self.config
        if c.iterations is not None and self.iteration >= c.iterations:
            return "iterations"
        if c.minutes is not None and self.comm.agree(self.elapsed() >= 60 * c.minutes):    # rank 0's clock
            return "minutes"
        return None

    def run(self, progress=None, handle_signals=True):
        """Train until the budget is spent or a signal asks to stop.

        progress: called after each step as progress(trainer, loss). With ``handle_signals``,
        SIGINT and SIGTERM let the current step finish, then a checkpoint is written and the
        result says which signal stopped the run (exit status 128 + signum by convention).
        """
        self.comm.synchronise(self)
        self._t0 = time.monotonic()
        self._last_save = self._t0
        self.run_dir.acquire()                 # held from here until the run ends
        previous = install_handlers(self.comm.signal_sink(self)) if handle_signals else {}
        c = self.config
        self.log(f"{'resuming' if self.iteration else 'training'} at iteration {self.iteration}: "
                 f"{self.model.num_parameters():,} parameters, depth {c.depth}, width {c.width}, "
                 f"tile {self.geometry.input_size} -> {self.geometry.output_size}, {c.optimizer} lr {c.lr:g}, "
                 f"device {c.device}, train slices {c.train_slices}, val slices {c.val_slices}")
        history, start = [], self.iteration
        try:
            reason = self.done()
            if reason is not None:
                self.log(f"nothing to do: the {reason} budget is already spent; give a larger --{reason}")
            while reason is None and self.stop_signal is None:
                loss = self.step()
                if progress is not None:
                    progress(self, loss)
                reason = self.done()
                if self.iteration % c.val_every == 0 or reason is not None:
                    history.append(self.record(validate=True))
                    self.save()
                elif self.iteration % self.loss_every == 0:
                    self.record(validate=False)
                elif time.monotonic() - self._last_save > 60 * c.checkpoint_minutes:
                    self.save()
            if self.stop_signal is not None and reason is None:
                reason = "signal"
                stop_after_signal(self, start)
            elif history:
                self.log(f"finished at iteration {self.iteration} ({reason} budget spent) after "
                         f"{self.elapsed():.0f} s; {self.summary()}")
        except UserError as err:
            if not isinstance(err, TrainingDiverged) and self.run_dir.checkpoint.is_file():
                err = UserError(f"{err}; then continue with: minunet train --out {self.out} --resume")
            self.log(f"stopped: {err}")
            raise err from None
        finally:
            restore_handlers(previous)
            self.run_dir.release()
        return TrainResult(self.iteration, reason, self.stop_signal, self.best_score, self.best_iteration, history)

    def record(self, validate=True):
        """Append a metrics row (the mean training loss since the last row, and the validation
        scores when ``validate``), keep best.h5, redraw the curves; returns the row."""
        scores = self.validate() if validate and self.validation is not None else None
        row = {"iteration": self.iteration, "elapsed_s": round(self.elapsed(), 3),
               "train_loss": self.loss_sum / self.loss_count if self.loss_count else None,
               "val_pixel_error": scores and scores.pixel_error, "val_rand_error": scores and scores.rand_error}
        self.loss_sum, self.loss_count = 0.0, 0
        self.run_dir.append_metrics(row)
        if scores is None:
            return row
        self._judge(scores, row["train_loss"])
        try:
            self.run_dir.plot()
        except Exception as err:                        # a plot must never stop training
            self.log(f"could not draw curves.png: {err}")
        return row

    def _judge(self, scores, train_loss):
        """Log a validation, keep the best model, and say so when the model is degenerate."""
        message = (f"iteration {self.iteration}: train loss {fmt(train_loss)}, "
                   f"val pixel error {fmt(scores.pixel_error)}, val Rand error {fmt(scores.rand_error)}")
        if self.best_score is None or scores.key < self.best_score:
            self.best_score, self.best_iteration = scores.key, self.iteration
            self.save(self.run_dir.best)
            message += " (best so far: best.h5)"
        self.log(message)
        reason = degenerate_reason(scores, self.validation.baseline())
        self.degenerate = reason
        if reason is not None:
            self.log(f"warning: the model has not learned to separate the classes yet: {reason}; {ADVICE}")

    def summary(self):
        """The best validation against the trivial baseline of the same slices, in one line."""
        if self.best_score is None:
            return "no validation was run (no validation slices)"
        baseline = self.validation.baseline()
        line = (f"best validation {self.validation.key_name} {fmt(self.best_score)} at iteration "
                f"{self.best_iteration}; calling every pixel one class scores {fmt(baseline.key)}")
        if self.best_score >= baseline.key - BASELINE_MARGIN:
            line += f": NO BETTER than that baseline; {ADVICE}"
        return line


def _geometry(config):
    try:
        return geometry.check_tile(config.tile, config.depth, config.up_kernel)
    except UserError as err:
        raise UserError(f"--tile: {err}") from None


def _finite_params(model):
    return all(np.isfinite(p.numpy()).all() for p in model.parameters())
