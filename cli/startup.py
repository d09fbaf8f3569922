"""What a command says before slow first-time work, so that it never seems to hang."""


def announce_compilation(device, echo, quiet=False):
    """Say that the CPU kernels will be compiled, when Numba's on-disk cache of them is empty."""
    if quiet or device != "cpu":
        return
    from minunet.kernels.cpu.cache import COLD_COMPILE_S, cache_is_warm
    if not cache_is_warm():
        low, high = COLD_COMPILE_S
        echo(f"compiling CPU kernels (first run only, about {low}-{high} s; later runs load them from disk)")
