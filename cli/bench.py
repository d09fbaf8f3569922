"""``minunet bench``: run the benchmarks of ``benchmarks/`` from the command line.

Each subcommand forwards its options to the benchmark script's own ``main(argv)``, so
``minunet bench kernels --device cpu --json k.json`` is ``python benchmarks/kernels.py --device cpu
--json k.json``. The benchmarks compare with PyTorch, which they import themselves (never a
dependency of minunet); they live in the source checkout, not in an installed wheel.
"""
import importlib
import sys

import click

SCRIPTS = {
    "kernels": ("kernels", "every kernel's forward and backward against PyTorch, per layer shape"),
    "train-step": ("train_step", "a whole training step (and inference) against PyTorch, time and memory"),
    "predict": ("predict", "overlap-tile prediction of a 512x512 image against PyTorch"),
    "data": ("data", "weight-map computation and augmentation throughput"),
    "recipe": ("recipe", "whether each training recipe learns: validation errors of short ISBI runs"),
}
FORWARD = dict(ignore_unknown_options=True, allow_extra_args=True, help_option_names=[])


def _run(script, args):
    module = importlib.import_module(f"minunet.benchmarks.{script}")
    code = module.main(list(args))
    if code:
        sys.exit(code)


@click.group()
def bench():
    """Benchmark minunet against PyTorch (median of several runs after warm-up).

    \b
    Examples:
      minunet bench kernels --device cpu --json kernels.json
      minunet bench train-step --width 64 --tile 572 --json step.json
      minunet bench predict --json predict.json
      minunet bench recipe --recipes default --seeds 0,1 --json recipe.json
    Add --help after a subcommand for its options.
    """


def _make(name, script, summary):
    @click.pass_context
    def command(ctx):
        _run(script, ctx.args)
    command.__doc__ = f"{summary[0].upper()}{summary[1:]}. Options: see `minunet bench {name} --help`."
    bench.command(name, context_settings=FORWARD)(command)


for _name, (_script, _summary) in SCRIPTS.items():
    _make(_name, _script, _summary)
