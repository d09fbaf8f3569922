"""Entry point of the ``minunet`` command.

Subcommands live in their own modules and are imported only when invoked, so that
``minunet --help`` is instant and a subcommand's heavy imports (Numba, h5py, torch for
benchmarks) cost nothing to the others.
"""
import importlib
import sys

import click

from minunet.errors import UserError
from minunet.files.oserrors import reason
from minunet.kernels import BackendUnavailable

# name -> (module, attribute, one-line help shown by `minunet --help`)
SUBCOMMANDS = {
    "data": ("minunet.cli.data", "data", "Convert, inspect and synthesise training data (HDF5)."),
    "train": ("minunet.cli.train", "train", "Train a U-Net on an HDF5 data file."),
    "predict": ("minunet.cli.predict", "predict", "Segment images with a trained model (overlap-tile)."),
    "segment": ("minunet.cli.segment", "segment", "Objects from probabilities: a label image per slice."),
    "evaluate": ("minunet.cli.evaluate", "evaluate",
                 "Score predictions or segmentations: the ISBI 2012 metrics (Fiji's), IoU."),
    "export": ("minunet.cli.export", "export", "Export a model as ONNX or a bioimage.io package (Fiji, ilastik)."),
    "bench": ("minunet.cli.bench", "bench", "Benchmark kernels and training steps against PyTorch."),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx):
        return list(SUBCOMMANDS)

    def get_command(self, ctx, name):
        if name not in SUBCOMMANDS:
            return None
        module, attr, _ = SUBCOMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx, formatter):
        rows = [(name, help_) for name, (_, _, help_) in SUBCOMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="minunet")
def cli():
    """minunet: the U-Net of Ronneberger, Fischer and Brox (2015) on a from-scratch engine.

    \b
    A typical session:
      minunet data synth -o demo.h5              # or: minunet data convert IMAGES LABELS -o isbi.h5
      minunet train --data demo.h5 --out runs/demo
      minunet predict --model runs/demo/best.h5 IMAGE.tif -o probs.tif
      minunet segment probs.tif -o labels.tif    # objects, one id each
      minunet evaluate probs.tif LABELS
    """


def main(argv=None):
    """Run the command line; user errors print one line and exit with status 2."""
    try:
        cli.main(args=argv, prog_name="minunet", standalone_mode=False)
    except (UserError, BackendUnavailable) as err:
        click.echo(f"Error: {err}", err=True)
        sys.exit(2)
    except MemoryError:
        click.echo("Error: out of memory; free memory, or make the job smaller (a smaller --tile or --batch, "
                   "fewer slices, or block-wise prediction: docs/scaling.md)", err=True)
        sys.exit(2)
    except OSError as err:                # a full disk, a permission, a read-only file system: one line
        where = f"{err.filename}: " if getattr(err, "filename", None) else ""
        click.echo(f"Error: {where}{reason(err)}; check the disk and the permissions, or choose another path",
                   err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
