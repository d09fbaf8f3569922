"""``minunet bench``: the benchmarks of ``minunet.benchmarks`` as click commands.

Each benchmark module keeps its own ``arguments()`` (an argparse parser, so that
``python -m minunet.benchmarks.NAME`` works alone) and ``main(argv)``; this module turns the
parser into a click command with the same options, defaults and help, and calls ``main``.
The yardsticks (PyTorch, ONNX Runtime, OpenVINO) are imported by the benchmarks themselves and
are never dependencies of minunet.
"""
import argparse
import importlib
import sys

import click

from minunet.errors import UserError

# command -> (module, one-line summary)
BENCHMARKS = {
    "kernels": ("kernels", "Every kernel's forward and backward against PyTorch, per layer shape."),
    "train-step": ("train_step", "A whole training step (and inference) against PyTorch: time and memory."),
    "predict": ("predict", "Prediction (a tile, an image, a stack) against PyTorch, ONNX Runtime, OpenVINO."),
    "data": ("data", "Weight maps and augmentation throughput against the training step."),
    "blockwise": ("blockwise", "Block-wise prediction of a volume larger than its memory budget."),
    "evaluate": ("evaluate", "Every metric of `minunet evaluate` on six 512x512 ISBI slices (target <= 10 s)."),
    "recipe": ("recipe", "Whether each training recipe learns: validation errors of short ISBI runs."),
}
YARDSTICKS = {"torch": "pip install torch==2.13.0 (a CPU build)", "onnxruntime": "pip install onnxruntime",
              "openvino": "pip install openvino"}


class LazyBenchmarks(click.Group):
    """Benchmark modules are imported only when their command runs or shows its help."""

    def list_commands(self, ctx):
        return list(BENCHMARKS)

    def get_command(self, ctx, name):
        if name not in BENCHMARKS:
            return None
        module_name, summary = BENCHMARKS[name]
        return _command(name, module_name, summary)

    def format_commands(self, ctx, formatter):
        with formatter.section("Benchmarks"):
            formatter.write_dl([(name, summary) for name, (_, summary) in BENCHMARKS.items()])


@click.group(cls=LazyBenchmarks, context_settings={"help_option_names": ["-h", "--help"]})
def bench():
    """Benchmark minunet against the yardsticks: median of several runs after warm-up, ratios
    measured in one run on the same machine; every target reported as met or missed.

    \b
    Examples:
      minunet bench kernels --width 16 --json kernels.json
      minunet bench train-step --width 64 --repeat 3
      minunet bench predict --json predict.json
      minunet bench evaluate --json evaluate.json
      minunet bench recipe --recipes default --seeds 0,1 --json recipe.json
    Add --help after a benchmark for its options.
    """


def _command(name, module_name, summary):
    module = importlib.import_module(f"minunet.benchmarks.{module_name}")
    parser = module.arguments()
    actions = [a for a in parser._actions if a.option_strings and a.dest != "help" and a.help != argparse.SUPPRESS]
    params = [_option(action) for action in actions]

    def callback(**values):
        argv = []
        for action in actions:
            if values.get(action.dest) is None:
                continue
            value, flag = values[action.dest], action.option_strings[-1]
            if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
                argv += [flag] if value else []
            elif isinstance(action, argparse._AppendAction):
                for item in value:
                    argv += [flag, str(item)]
            else:
                argv += [flag, str(value)]
        try:
            code = module.main(argv)
        except ImportError as err:
            missing = err.name or str(err)
            hint = YARDSTICKS.get(missing.split(".")[0], f"pip install {missing.split('.')[0]}")
            raise UserError(f"minunet bench {name}: needs {missing}, which minunet does not install: {hint}") from None
        if code:
            sys.exit(code)
    doc = (module.__doc__ or summary).strip()
    return click.Command(name, params=params, callback=callback, help=doc, short_help=summary,
                         context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})


def _option(action):
    """A click option equivalent to one argparse action."""
    kwargs = dict(help=action.help or "", show_default=action.default not in (None, False))
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return click.Option(action.option_strings, is_flag=True, default=False, help=action.help or "")
    if isinstance(action, argparse._AppendAction):
        return click.Option(action.option_strings, multiple=True, type=action.type or str, **kwargs)
    if action.choices:
        kind = click.Choice([str(c) for c in action.choices])
    else:
        kind = action.type or str
    return click.Option(action.option_strings, type=kind, default=action.default, required=action.required,
                        metavar=action.metavar, **kwargs)
