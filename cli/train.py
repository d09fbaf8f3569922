"""`minunet train`: train a U-Net on an HDF5 data file (see minunet.training.trainer for the loop)."""
import signal
import sys
import time
from pathlib import Path

import click

from minunet.cli.progress import Progress, clock
from minunet.cli.startup import announce_compilation
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
    Several processes train one model in lockstep when an MPI launcher starts them (pip install
    'minunet[mpi]'): `mpiexec -n K minunet train ...` or a cluster's `srun`. Each rank draws its own
    tiles (the effective batch is K x --batch), the gradients are summed every step, rank 0 writes
    the run directory; the ranks on one machine share its cores. MINUNET_COMM_TIMEOUT (seconds,
    default 600) ends the run when a rank stops answering. See docs/scaling.md.

    \b
    Examples:
      minunet train --data isbi.h5 --out runs/isbi --train-slices 0-23 --val-slices 24-29
      minunet train --data isbi.h5 --out runs/isbi-sgd --optimizer sgd --iterations 5000
      minunet train --out runs/isbi --resume --minutes 60
      minunet train --data dental.h5 --classes 7 --up-kernel 4 --pad zero --deep-supervision
      mpiexec -n 4 minunet train --data isbi.h5 --out runs/isbi4 --width 64 --iterations 5000
    """
    from minunet.training import distributed
    comm = distributed.connect()       # before Numba loads: the ranks of `mpiexec -n K` share the CPUs
    from minunet.training.trainer import Trainer

    with comm.agreement():             # on several ranks rank 0 decides the settings; an error ends every rank
        config = _config(ctx, opts) if comm.is_root else None
    config = comm.share_config(config)
    opts["quiet"] = opts["quiet"] or not comm.is_root
    progress = Progress("iteration", quiet=opts["quiet"])
    comm = comm.for_device(config.device)     # NCCL for --device cuda on several ranks
    with comm.agreement():
        trainer = Trainer(config, resume=opts["resume"], echo=None if opts["quiet"] else progress.echo, comm=comm)
    announce_compilation(trainer.config.device, progress.echo, opts["quiet"])
    try:
        result = trainer.run(progress=TrainProgress(progress))
    except KeyboardInterrupt as err:      # a second Ctrl-C or SIGTERM: no new checkpoint
        progress.close()
        if comm.is_root:
            click.echo(f"Aborted; {_last_checkpoint(trainer)}", err=True)
        sys.exit(128 + getattr(err, "signum", signal.SIGINT))
    except UserError:                     # the same on every rank (a diverged loss): rank 0 says it
        if comm.is_root:
            raise
        sys.exit(2)
    finally:
        progress.close()
        trainer.close()
    if result.reason == "signal":
        if opts["quiet"] and comm.is_root:       # otherwise the log line has said it
            click.echo(f"Stopped at iteration {result.iteration}; {_last_checkpoint(trainer)}", err=True)
        sys.exit(128 + result.signum)
    if not opts["quiet"]:
        best = f"best.h5: {trainer.summary()}" if trainer.run_dir.best.is_file() else trainer.summary()
        click.echo(f"Done: {trainer.out} ({best})")


def _config(ctx, opts):
    """The run's TrainConfig from the command line (a new run, or the stored one to --resume)."""
    from minunet.engine.devices import resolve_device
    from minunet.training.config import TrainConfig, resume_config

    given = {"augment" if k == "no_augment" else k for k in opts
             if ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE}
    settings = _settings(opts)

    if opts["resume"]:
        if not opts["out"]:
            raise UserError("--resume needs --out RUN_DIR (the run directory to continue)")
        overrides = {k: v for k, v in settings.items() if k in given}
        if "device" in overrides:
            overrides["device"] = resolve_device(overrides["device"])
        config = resume_config(opts["out"], **overrides)
    else:
        if not opts["data"]:
            raise UserError("--data FILE.h5 is required (make one with `minunet data synth -o demo.h5`)")
        device = resolve_device(opts["device"])
        on_gpu = device == "cuda"
        if opts["width"] is None:
            settings["width"] = GPU_WIDTH if on_gpu else CPU_WIDTH
        if opts["iterations"] is None and opts["minutes"] is None:
            if on_gpu:
                settings["iterations"] = GPU_ITERATIONS
            else:
                settings["minutes"] = CPU_MINUTES
        out = opts["out"] or f"runs/{Path(opts['data']).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        config = TrainConfig(**dict(settings, data=str(Path(opts["data"]).resolve()), device=device, out=out))
    return config


def _last_checkpoint(trainer):
    """Where the last checkpoint is, or that there is none yet."""
    path = trainer.run_dir.checkpoint
    if path.is_file():
        return f"{path} holds the last checkpoint. Continue with: minunet train --out {trainer.out} --resume"
    return "no checkpoint was written yet, so there is nothing to resume: start the run again"


class TrainProgress:
    """The progress line of a training run: iteration, running loss, iterations per second, time left."""

    def __init__(self, progress):
        self.progress, self.loss = progress, None
        self.start = self.start_iteration = None

    def __call__(self, trainer, loss):
        now = time.monotonic()
        if self.start is None:                    # rates count from the end of the first step
            self.start, self.start_iteration = now, trainer.iteration
        self.loss = loss if self.loss is None else 0.95 * self.loss + 0.05 * loss
        steps, seconds = trainer.iteration - self.start_iteration, now - self.start
        detail = f"loss {self.loss:.4f}"
        if steps and seconds > 0:
            detail += f"  {steps / seconds:.2f} it/s"
        c = trainer.config
        if c.minutes:
            detail += f"  time left {clock(max(60 * c.minutes - trainer.elapsed(), 0))}"
        self.progress.update(trainer.iteration, c.iterations, detail)


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
