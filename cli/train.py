"""`minunet train`: train a U-Net on an HDF5 data file (see minunet.training.trainer for the loop)."""
import sys
import time
from pathlib import Path

import click

from minunet.errors import UserError

CPU_WIDTH, GPU_WIDTH = 16, 64              # default --width by device
CPU_MINUTES, GPU_ITERATIONS = 40, 20000    # default budget by device, when neither is given


def _floats(ctx, param, value):
    if value is None:
        return None
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: give comma-separated numbers, e.g. 0.25,0.5,0.5") from None


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--data", type=click.Path(dir_okay=False), help="HDF5 data file (/raw, /labels, /weights), "
              "e.g. from `minunet data convert` or `minunet data synth`.")
@click.option("--out", type=click.Path(file_okay=False), help="Run directory [default: runs/DATA-DATE-TIME].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "reference"]), default="auto",
              show_default=True, help="auto: cuda when a GPU is usable, else cpu (reference: slow NumPy, tests).")
@click.option("--iterations", type=click.IntRange(min=1), help="Train up to this iteration (the run's total).")
@click.option("--minutes", type=click.FloatRange(min=0, min_open=True),
              help=f"Wall-time budget of the whole run [default when no budget is given: "
                   f"{CPU_MINUTES} min on the CPU, {GPU_ITERATIONS} iterations on a GPU].")
@click.option("--width", type=click.IntRange(min=1),
              help=f"Channels of the first level [default: {GPU_WIDTH} (the paper) on a GPU, {CPU_WIDTH} on the CPU].")
@click.option("--depth", type=click.IntRange(min=2), default=5, show_default=True, help="Levels (5: four poolings).")
@click.option("--tile", type=click.IntRange(min=1), default=572, show_default=True,
              help="Input tile size (572 gives a 388 output in the paper's network).")
@click.option("--classes", type=click.IntRange(min=2), help="Classes [default: the data file's n_classes].")
@click.option("--up-kernel", type=click.Choice(["2", "4"]), default="2", show_default=True,
              help="Up-convolution kernel: 2 (EM network) or 4 (dental network).")
@click.option("--pad", type=click.Choice(["mirror", "zero"]), default="mirror", show_default=True,
              help="How tiles are padded at the image border (zero: the dental network).")
@click.option("--deep-supervision", is_flag=True, help="Extra softmax losses on the coarse expanding levels.")
@click.option("--aux-weights", callback=_floats,
              help="Loss weight of each coarse level, deepest first, comma-separated [default: 0.5 each].")
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default="adam", show_default=True,
              help="adam: Adam, which learns in minutes; sgd: the paper's SGD with momentum, far slower to "
                   "start at --width 16 (docs/training.md).")
@click.option("--lr", type=float, help="Learning rate [default: 0.0003 for adam, 0.001 for sgd].")
@click.option("--momentum", type=click.FloatRange(0, 1, max_open=True), default=0.99, show_default=True,
              help="SGD momentum (the paper's 0.99; not used by adam).")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=0.0, show_default=True, help="L2 weight decay.")
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=0.5, show_default=True,
              help="Dropout at the end of the contracting path.")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Tiles per step (the paper: one large tile).")
@click.option("--no-augment", is_flag=True, help="No elastic deformation, flips or rotations.")
@click.option("--train-slices", help="Slices to train on, e.g. 0-23 [default: all but the validation slices].")
@click.option("--val-slices", help="Held-out slices, e.g. 24-29, or none [default: the last fifth of the slices].")
@click.option("--val-every", type=click.IntRange(min=1), default=500, show_default=True,
              help="Validate (and checkpoint) every K iterations.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds initialisation, dropout and sampling.")
@click.option("--workers", type=click.IntRange(min=0), default=1, show_default=True,
              help="Processes preparing the next augmented tiles during a step (0: none; same tiles either way).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its checkpoint.h5.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or log lines on the terminal.")
@click.pass_context
def train(ctx, **opts):
    """Train a U-Net with the paper's recipe on an HDF5 data file.

    \b
    The paper's recipe: one large tile per step, He initialisation, dropout, elastic augmentation,
    the file's border weight maps, weighted softmax cross-entropy; with Adam (lr 3e-4) in place of
    the paper's SGD with momentum 0.99, which does not get going at --width 16 in the CPU budget
    (--optimizer sgd to use it; why: docs/training.md). On the CPU the defaults are the paper's
    network at a quarter of the width (--width 16) and a 40-minute budget; on a GPU the paper's
    width 64 and 20000 iterations.

    \b
    The run directory gets config.json, checkpoint.h5 (latest), best.h5 (best validation Rand
    error), metrics.csv, curves.png and train.log. Ctrl-C (or SIGTERM) finishes the current step,
    writes a checkpoint and exits; --resume continues bitwise where it stopped.

    \b
    Examples:
      minunet train --data isbi.h5 --out runs/isbi --train-slices 0-23 --val-slices 24-29
      minunet train --data isbi.h5 --out runs/isbi-sgd --optimizer sgd --iterations 5000
      minunet train --out runs/isbi --resume --minutes 60
      minunet train --data dental.h5 --classes 7 --up-kernel 4 --pad zero --deep-supervision
    """
    from minunet.training import trainer as T

    quiet = opts["quiet"] or not sys.stderr.isatty()
    echo = None if opts["quiet"] else (lambda line: _echo(line))
    given = {"augment" if k == "no_augment" else k for k in opts
             if ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE}
    settings = _settings(opts)

    if opts["resume"]:
        if not opts["out"]:
            raise UserError("--resume needs --out RUN_DIR (the run directory to continue)")
        overrides = {k: v for k, v in settings.items() if k in given}
        if "device" in overrides:
            overrides["device"] = T.check_device(overrides["device"])
        config = T.resume_config(opts["out"], **overrides)
    else:
        if not opts["data"]:
            raise UserError("--data FILE.h5 is required (make one with `minunet data synth -o demo.h5`)")
        device = T.check_device(opts["device"])
        on_gpu = device == "cuda"
        if opts["width"] is None:
            settings["width"] = GPU_WIDTH if on_gpu else CPU_WIDTH
        if opts["iterations"] is None and opts["minutes"] is None:
            if on_gpu:
                settings["iterations"] = GPU_ITERATIONS
            else:
                settings["minutes"] = CPU_MINUTES
        out = opts["out"] or f"runs/{Path(opts['data']).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        config = T.TrainConfig(**dict(settings, data=str(Path(opts["data"]).resolve()), device=device, out=out))

    trainer = T.Trainer(config, resume=opts["resume"], echo=echo)
    bar = None if quiet else ProgressBar()
    try:
        result = trainer.run(progress=bar)
    except KeyboardInterrupt:             # a second Ctrl-C: no new checkpoint
        if bar is not None:
            bar.clear()
        click.echo(f"Aborted; {trainer.out / 'checkpoint.h5'} holds the last checkpoint. "
                   f"Continue with: minunet train --out {trainer.out} --resume", err=True)
        sys.exit(130)
    finally:
        trainer.close()
    if bar is not None:
        bar.clear()
    if result.reason == "signal":
        if opts["quiet"]:       # otherwise the log line has said it
            click.echo(f"Stopped at iteration {result.iteration}; checkpoint written to {trainer.out / 'checkpoint.h5'}. "
                       f"Continue with: minunet train --out {trainer.out} --resume", err=True)
        sys.exit(128 + result.signum)
    if not opts["quiet"]:
        click.echo(f"Done: {trainer.out} (best.h5: validation Rand error {T._fmt(result.best_rand_error)} "
                   f"at iteration {result.best_iteration})")


def _settings(opts):
    """The TrainConfig fields from the command-line options."""
    return dict(data=opts["data"], device=opts["device"], iterations=opts["iterations"], minutes=opts["minutes"],
                width=opts["width"], depth=opts["depth"], tile=opts["tile"], classes=opts["classes"],
                up_kernel=int(opts["up_kernel"]), pad=opts["pad"], deep_supervision=opts["deep_supervision"],
                aux_weights=opts["aux_weights"], optimizer=opts["optimizer"], lr=opts["lr"],
                momentum=opts["momentum"], weight_decay=opts["weight_decay"], dropout=opts["dropout"],
                batch=opts["batch"], augment=not opts["no_augment"], train_slices=opts["train_slices"],
                val_slices=opts["val_slices"], val_every=opts["val_every"], seed=opts["seed"],
                workers=opts["workers"])


_bar_visible = False


def _echo(line):
    """A log line on stderr, above the progress bar."""
    global _bar_visible
    if _bar_visible:
        sys.stderr.write("\r\033[K")
        _bar_visible = False
    click.echo(line, err=True)


class ProgressBar:
    """One terminal line: iteration, loss (running mean), it/s, ETA; redrawn at most 10 times a second."""

    def __init__(self, width=24):
        self.width, self.last_draw, self.loss = width, 0.0, None
        self.start, self.start_iteration = None, None

    def __call__(self, trainer, loss):
        global _bar_visible
        now = time.monotonic()
        if self.start is None:
            self.start, self.start_iteration = now, trainer.iteration - 1
        self.loss = loss if self.loss is None else 0.95 * self.loss + 0.05 * loss
        if now - self.last_draw < 0.1:
            return
        self.last_draw = now
        c = trainer.config
        rate = (trainer.iteration - self.start_iteration) / max(now - self.start, 1e-9)
        fractions, etas = [], []
        if c.iterations:
            fractions.append(trainer.iteration / c.iterations)
            etas.append((c.iterations - trainer.iteration) / max(rate, 1e-9))
        if c.minutes:
            fractions.append(trainer.elapsed() / (60 * c.minutes))
            etas.append(60 * c.minutes - trainer.elapsed())
        fraction, eta = min(max(fractions), 1.0), max(min(etas), 0.0)
        filled = int(round(fraction * self.width))
        total = f"/{c.iterations}" if c.iterations else ""
        sys.stderr.write(f"\r\033[K[{'#' * filled}{'.' * (self.width - filled)}] it {trainer.iteration}{total}  "
                         f"loss {self.loss:.4f}  {rate:.2f} it/s  ETA {_clock(eta)}")
        sys.stderr.flush()
        _bar_visible = True

    def clear(self):
        global _bar_visible
        if _bar_visible:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
            _bar_visible = False


def _clock(seconds):
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"
