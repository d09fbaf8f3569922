"""Ctrl-C and SIGTERM during training: finish the step, write a checkpoint, then stop.

A second signal aborts at once with :class:`SecondSignal`, which carries the signal's number so
that the command exits with 128 + signum (130 for SIGINT, 143 for SIGTERM), as shells expect.
"""
import signal


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
        pass
    return previous


def restore_handlers(previous):
    for sig, handler in previous.items():
        signal.signal(sig, handler)
