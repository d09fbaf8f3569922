"""Ctrl-C and SIGTERM during training: finish the step, write a checkpoint, then stop."""
import signal


def install_handlers(trainer):
    """SIGINT/SIGTERM set trainer.stop_signal; a second one aborts at once."""
    def handler(signum, frame):
        if trainer.stop_signal is not None:
            raise KeyboardInterrupt
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
