"""``minunet data``: convert image/label stacks to HDF5, inspect a data file, make synthetic data."""
import time
from pathlib import Path

import click

from minunet.cli.progress import iterate
from minunet.errors import UserError


def _progress(iterable, label, length):
    """A long loop with its progress on stderr (a line redrawn on a terminal, lines in a log)."""
    yield from iterate(iterable, label, length)


@click.group()
def data():
    """Convert, inspect and synthesise training data (HDF5).

    \b
    Examples:
      minunet data convert train/image train/label -o isbi.h5
      minunet data convert train-volume.tif train-labels.tif -o isbi.h5
      minunet data convert test/ --no-labels -o test.h5
      minunet data info isbi.h5
      minunet data synth -o demo.h5
    """


@data.command()
@click.argument("images")
@click.argument("labels", required=False)
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="Output HDF5 file.")
@click.option("--classes", default=None, metavar="MAP",
              help="Label values -> class ids: '0:0,255:1', or the values of classes 0..K-1 in order "
                   "'0,128,255', or the number of classes 'K' when labels already hold ids. "
                   "Default: binary 0/255 (or 0/1) masks, 255 -> 1.")
@click.option("--names", default=None, metavar="A,B,..", help="Class names, e.g. 'membrane,cell'.")
@click.option("--no-labels", is_flag=True, help="Unlabeled images (e.g. test data): store /raw only.")
@click.option("--w0", default=10.0, show_default=True, type=float, help="Border weight w0 of the weight maps.")
@click.option("--sigma", default=5.0, show_default=True, type=float, help="Border width sigma (px).")
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
def convert(images, labels, out, classes, names, no_labels, w0, sigma, force):
    """Convert IMAGES (and LABELS) to a minunet HDF5 data file.

    IMAGES and LABELS are each a multi-page TIFF, a PNG/TIFF file, a folder of PNG/TIFF slices
    (natural order: 2.png before 10.png), a quoted glob ('slices/*.png') or file.h5:/dataset.
    Folders are paired by file stem (image 7.png with label 7.png or 7.tif); stacks by position.
    Weight maps (w0, sigma) are computed now, once. Colour images are refused unless all
    channels are equal. The file appears only when complete.

    \b
    Examples:
      minunet data convert ../shared/data/isbi2012/train/image ../shared/data/isbi2012/train/label -o isbi.h5
      minunet data convert volume.tif masks/ -o d.h5 --classes 0,50,100 --names bg,nucleus,cytoplasm
      minunet data convert ../shared/data/isbi2012/test --no-labels -o isbi-test.h5
    """
    from minunet.data import convert, datafile
    if labels is None and not no_labels:
        raise UserError("LABELS missing: give the label images, or --no-labels for unlabeled data")
    if labels is not None and no_labels:
        raise UserError(f"--no-labels given together with LABELS ({labels}); drop one of them")
    start = time.perf_counter()
    path = convert.convert(images, labels, out, classes=classes, class_names=names.split(",") if names else None,
                           w0=w0, sigma=sigma, force=force, progress=_progress)
    info = datafile.open_dataset(path)
    click.echo(f"wrote {path}: {info.n_slices} x {info.height} x {info.width} {info.dtype}"
               + (f", {info.n_classes} classes" if info.has_labels else ", no labels")
               + f" ({time.perf_counter() - start:.1f} s)")


@data.command()
@click.argument("file", type=click.Path())
def info(file):
    """Say what FILE is: a data file (shapes, classes, weights, sources), a checkpoint (its
    network and iteration), a prediction (shape and classes), a TIFF/PNG stack or a Zarr store.

    \b
    Examples:
      minunet data info isbi.h5
      minunet data info runs/isbi/best.h5
      minunet data info probs.zarr
    """
    from minunet.inference.describe import describe
    click.echo(describe(file))


@data.command()
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="Output HDF5 file.")
@click.option("--slices", default=30, show_default=True, type=click.IntRange(1), help="Number of slices.")
@click.option("--size", default=512, show_default=True, type=click.IntRange(16), help="Slice width and height (px).")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed (same seed, same data).")
@click.option("--w0", default=10.0, show_default=True, type=float, help="Border weight w0 of the weight maps.")
@click.option("--sigma", default=5.0, show_default=True, type=float, help="Border width sigma (px).")
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
def synth(out, slices, size, seed, w0, sigma, force):
    """Make a synthetic EM-like data set (Voronoi cells, membranes, texture, noise).

    Labels follow the ISBI layout (0 = membrane, 1 = cell), so everything that works on it
    works on converted ISBI data.

    \b
    Example:
      minunet data synth -o demo.h5 --slices 30 --size 512 --seed 0
    """
    import numpy as np

    from minunet.data.convert import save_arrays
    from minunet.data.synth import synth_slice
    from minunet.files.atomic import check_output_folder, h5_size_bound
    from minunet.files.space import check_free_space
    out = Path(out)
    if out.exists() and not force:
        raise UserError(f"{out}: output exists; use --force to overwrite it or choose another name")
    check_output_folder(out)                            # before the work, not after it
    check_free_space(out, h5_size_bound(slices * size * size * 6))
    start = time.perf_counter()
    pairs = [synth_slice(np.random.default_rng([seed, i]), size)
             for i in _progress(range(slices), "synthesising", slices)]
    raw, labels = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    save_arrays(out, raw, labels, n_classes=2, class_names=["membrane", "cell"], w0=w0, sigma=sigma,
                sources=[f"synth seed {seed} slice {i}" for i in range(slices)], force=force,
                progress=_progress)
    click.echo(f"wrote {out}: {slices} x {size} x {size} uint8, 2 classes ({time.perf_counter() - start:.1f} s)")
