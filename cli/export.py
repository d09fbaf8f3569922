"""``minunet export``: a trained model as an ONNX graph or a bioimage.io model package.

The checkpoint is read by :func:`minunet.model.checkpoint.load_model`, the loader ``minunet predict``
uses, so a file from a stranger meets the same checks before anything is exported. The graph is
built by :mod:`minunet.export.onnx_graph`, the package by :mod:`minunet.export.bioimageio`; every
check that can fail runs before the work, and outputs are written atomically.
"""
from pathlib import Path

import click

from minunet.errors import UserError


def check_output(path, suffix, force, option="-o"):
    """Refuse a wrong suffix, an existing file without --force and a missing folder, before any work."""
    if path.suffix.lower() != suffix:
        raise UserError(f"{option} {path}: name the output NAME{suffix}")
    if path.is_dir():
        raise UserError(f"{option} {path}: is a folder; name an output file such as {path / ('model' + suffix)}")
    if path.exists() and not force:
        raise UserError(f"{option} {path}: output exists; pass --force to overwrite it or choose another name")
    if not path.parent.is_dir():
        raise UserError(f"{option} {path}: output folder {path.parent} does not exist; create it first")


def package_info(model, checkpoint, name, description, authors, maintainers, license_):
    """The user-stated fields of the package, with defaults read off the model."""
    from minunet.export.model_card import training_record
    if name is None:
        name = f"U-Net depth {model.depth} width {model.width} {model.classes} classes (minunet)"
    if description is None:
        data = training_record(checkpoint).get("data_file")
        description = (f"{model.classes}-class semantic segmentation of {model.in_channels}-channel 2-D images "
                       f"by a U-Net trained with minunet" + (f" on {data}" if data else "") + ".")
    return dict(name=name, description=description, authors=list(authors), maintainers=list(maintainers),
                license=license_)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model_path", metavar="MODEL")
@click.option("--output-file", "-o", "output_file", required=True, metavar="FILE",
              help="NAME.onnx, or NAME.zip with --bioimageio.")
@click.option("--bioimageio", is_flag=True,
              help="Write a bioimage.io model package (zip) instead of a bare ONNX file; needs --sample, "
                   "--author and --license.")
@click.option("--output", type=click.Choice(["probabilities", "logits"]), default="probabilities", show_default=True,
              help="What the graph returns: softmax class probabilities (as minunet predict) or raw class scores.")
@click.option("--opset", type=int, default=17, show_default=True,
              help="ONNX opset to declare: from 17 (widely supported) to the newest the installed onnx knows.")
@click.option("--sample", metavar="IMAGE",
              help="bioimage.io: an image like those the model segments (any input minunet predict reads; "
                   "one page per channel for multi-channel models). Its centre becomes the test input and cover.")
@click.option("--name", default=None, help="bioimage.io: model name (default: from the architecture).")
@click.option("--description", default=None, help="bioimage.io: one-sentence description (default: from the model).")
@click.option("--author", "authors", multiple=True, metavar="NAME",
              help="bioimage.io, required: an author's name (repeat for several).")
@click.option("--maintainer", "maintainers", multiple=True, metavar="GITHUB_USER",
              help="bioimage.io: a maintainer's GitHub user name (repeatable); the zoo asks for one.")
@click.option("--license", "license_", default=None, metavar="SPDX",
              help="bioimage.io, required: the weights' license as an SPDX id (e.g. CC-BY-4.0, MIT).")
@click.option("--force", "--overwrite", "force", is_flag=True, help="Overwrite FILE if it exists.")
def export(model_path, output_file, bioimageio, output, opset, sample, name, description, authors, maintainers,
           license_, force):
    """Export a trained MODEL (a checkpoint from minunet train) for use outside minunet.

    \b
    As ONNX (runs in onnxruntime, OpenCV, deepImageJ, ilastik, ...):
      minunet export runs/isbi/best.h5 -o isbi-unet.onnx
    As a bioimage.io package (opens in Fiji/deepImageJ, ilastik, Icy, bioimageio.core):
      minunet export runs/isbi/best.h5 --bioimageio --sample ../shared/data/isbi2012/test/0.png \\
          --author "Jane Doe" --license CC-BY-4.0 -o isbi-unet.zip

    The graph takes float32 (batch, channels, height, width) scaled to [0, 1] as in training and
    returns (batch, classes, height - 2 offset, width - 2 offset). Height and width are free but
    must each be a valid tile size, min + step * n; min, step and the offset are stored in the
    model's metadata (and printed here). Deep-supervision heads are left out. The package adds the
    preprocessing for the sample's pixel type, test tensors computed by minunet itself, a cover and a
    README; check it with `bioimageio test FILE`. See docs/interop.md.
    """
    from minunet.export import onnx_graph
    from minunet.model.checkpoint import load_model

    path = Path(output_file)
    check_output(path, ".zip" if bioimageio else ".onnx", force)
    if not bioimageio:
        given = [flag for flag, value in (("--sample", sample), ("--name", name), ("--description", description),
                                          ("--author", authors), ("--maintainer", maintainers),
                                          ("--license", license_)) if value]
        if given:
            raise UserError(f"{given[0]}: only for a bioimage.io package; add --bioimageio and name the output .zip")
    else:
        if sample is None:
            raise UserError("--bioimageio needs --sample IMAGE: an image like those the model segments "
                            "(its centre becomes the package's test input and cover)")
        from minunet.export.bioimageio import check_people
        check_people(authors, license_)
    onnx_graph.require_onnx()
    model, checkpoint = load_model(model_path, device="cpu")
    rule = onnx_graph.tile_rule(model.depth, model.up_kernel)
    if bioimageio:
        _export_package(model, checkpoint, path, sample, output, opset, force,
                        package_info(model, checkpoint, name, description, authors, maintainers, license_))
    else:
        onnx_graph.save(onnx_graph.build(model, output, opset), path, force)
        click.echo(f"wrote {path}: opset {opset}, output {output}", err=True)
    click.echo(f"valid input sizes {rule.minimum} + {rule.step} * n (e.g. {', '.join(map(str, rule.sizes(3)))}); "
               f"output {rule.offset} pixels smaller on every side", err=True)


def _export_package(model, checkpoint, path, sample, output, opset, force, info):
    """Read the sample, build the package and write it; one line per file written."""
    from minunet.data.imageio import read_stack
    from minunet.export import bioimageio
    files = bioimageio.build_package(model, checkpoint, read_stack(sample), info, output, opset, f"--sample {sample}")
    bioimageio.write_zip(path, files, force)
    click.echo(f"wrote {path}: bioimage.io model ({', '.join(files)}); check it with: bioimageio test {path}",
               err=True)
    if not info["maintainers"]:
        click.echo("note: the bioimage.io zoo asks for a maintainer before upload: add --maintainer GITHUB_USER",
                   err=True)
