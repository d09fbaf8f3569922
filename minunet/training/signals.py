"""Ctrl-C and SIGTERM during training: finish the step, write a checkpoint, then stop.

A second signal aborts at once with :class:`SecondSignal`, which carries the signal's number so
that the command exits with 128 + signum (130 for SIGINT, 143 for SIGTERM), as shells expect.
Python drops an exception raised inside a finaliser (``__del__``, which Numba's compiler runs
often), printing a traceback instead; such a SecondSignal is delivered again in the main thread.
"""
import _thread
import signal
import sys
import threading


class SecondSignal(KeyboardInterrupt):
    """A second SIGINT/SIGTERM: stop now, without a new checkpoint."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def install_handlers(trainer):
    """SIGINT/SIGTERM set trainer.stop_signal; a second one aborts at once (SecondSignal)."""
    def handler(signum, frame):
        if trainer.stop_signal is not None:
            raise SecondSignal(signum)
        trainer.stop_signal = signum
        if trainer.echo is not None:
            trainer.echo(f"\n{signal.Signals(signum).name}: finishing this step, then writing a checkpoint "
                         f"(send it again to abort at once)")
    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:                                   # not the main thread
        return previous
    previous["unraisablehook"] = sys.unraisablehook
    sys.unraisablehook = _redeliver_second_signal(sys.unraisablehook)
    return previous


def _redeliver_second_signal(hook):
    """An unraisable-exception hook that sends a SecondSignal lost in a finaliser to the main thread
    again (from another thread, once the finaliser has returned); anything else goes to ``hook``."""
    def unraisable(args):
        if isinstance(args.exc_value, SecondSignal):
            threading.Timer(0.001, _thread.interrupt_main, (args.exc_value.signum,)).start()
        else:
            hook(args)
    return unraisable


def restore_handlers(previous):
    """Put back the handlers (and the unraisable-exception hook) :func:`install_handlers` replaced."""
    previous = dict(previous)
    if "unraisablehook" in previous:
        sys.unraisablehook = previous.pop("unraisablehook")
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def stop_after_signal(trainer, start):
    """After SIGINT/SIGTERM: a checkpoint if this session trained (``start``: its first iteration),
    and a log line saying what there is to resume."""
    name = signal.Signals(trainer.stop_signal).name
    checkpoint = trainer.run_dir.checkpoint
    resume = f"continue with: minunet train --out {trainer.out} --resume"
    if trainer.iteration > start:
        trainer.save()
        trainer.log(f"stopped by {name} at iteration {trainer.iteration}; checkpoint written; {resume}")
    elif checkpoint.is_file():
        trainer.log(f"stopped by {name} before the first step; {checkpoint} still holds iteration "
                    f"{trainer.iteration}; {resume}")
    else:
        trainer.log(f"stopped by {name} before the first step; no checkpoint was written")
