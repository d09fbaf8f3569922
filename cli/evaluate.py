"""``minunet evaluate PRED TRUTH``: score a predicted stack with the ISBI 2012 challenge's metrics.

The definitions live in :mod:`minunet.evaluation` (entry point :func:`minunet.evaluation.stack.evaluate_stack`);
this module reads the two stacks, selects slices, prints a table and optionally writes the numbers as JSON.
"""
import json
import math
import re
import time
from pathlib import Path

import click

from minunet.errors import UserError
from minunet.evaluation.inputs import KINDS
from minunet.files.specs import parse_spec

METRICS = ("pixel", "rand", "warping", "vrand", "iou")

# The U-Net paper's ISBI 2012 test-set result (Ronneberger et al. 2015, Table 1), for context.
PAPER = "u-net, ISBI 2012 test set (paper): warping 0.000353, Rand 0.0382, pixel 0.0611"


def parse_slices(text):
    """Slice indices from "24-29,3": 0-based, ranges inclusive, in the order given (the shared
    syntax of minunet.data.slices), each named once."""
    from minunet.data.slices import parse_slices as parse
    try:
        indices = parse(text)
    except UserError as err:
        raise UserError(f"--slices: {err}") from None
    if len(set(indices)) != len(indices):
        raise UserError(f"--slices: {text!r} names a slice twice")
    return indices


def parse_metrics(text):
    """Metric names from "pixel,rand" (or "all"), validated against METRICS."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        return METRICS
    bad = [n for n in names if n not in METRICS]
    if bad or not names:
        raise UserError(f"--metrics: unknown {', '.join(bad) or 'empty list'}; "
                        f"choose from {', '.join(METRICS)} or all")
    return tuple(n for n in METRICS if n in names)


def resolve_truth_spec(truth):
    """An HDF5 truth file without a dataset means its ``/labels`` (written by ``minunet data convert``)."""
    spec = parse_spec(truth)
    if spec.kind == "hdf5" and spec.dataset is None and spec.path.is_file():
        return truth + ":/labels"
    return truth


def read_stack_checked(spec, role):
    """Read a stack with minunet.data.imageio, as (N, H, W); a missing file is a one-line UserError."""
    path = str(parse_spec(spec).path)
    if not any(ch in path for ch in "*?[") and not Path(path).exists():
        raise UserError(f"{role} {spec}: no such file or folder")
    from minunet.data.imageio import read_stack

    stack = read_stack(spec)
    if stack.ndim == 2:
        stack = stack[None]
    if stack.ndim != 3:
        raise UserError(f"{role} {spec}: expected single-channel slices, got an array of shape "
                        f"{stack.shape}; pass one channel (foreground probabilities or class ids)")
    return stack


def select_slices(pred, truth, indices, pred_name, truth_name):
    """Apply --slices to the longer stack, or to both when they have the same number of slices."""
    if indices is None:
        return pred, truth, None
    if len(truth) >= len(pred):
        targets = ("truth", truth_name, len(truth))
    else:
        targets = ("pred", pred_name, len(pred))
    _, name, count = targets
    bad = [i for i in indices if i >= count]
    if bad:
        raise UserError(f"--slices: slice {bad[0]} is out of range for {name} "
                        f"with {count} slices (0-{count - 1})")
    if len(pred) == len(truth):
        return pred[indices], truth[indices], "both"
    if targets[0] == "truth":
        truth = truth[indices]
    else:
        pred = pred[indices]
    if len(pred) != len(truth):
        raise UserError(f"--slices selects {len(indices)} slices of {name} but the other stack has "
                        f"{min(len(pred), len(truth))}; select as many slices as it has")
    return pred, truth, targets[0]


def _fmt(value, digits=6):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def format_table(result):
    """A plain-text table of an evaluate_stack result: metric, value, threshold."""
    rows = []

    def row(label, key, theta_key=None):
        if key in result:
            theta = result.get(theta_key) if theta_key else None
            rows.append((label, _fmt(result[key]), "" if theta is None else f"{theta:g}"))

    row("pixel error", "pixel_error", "pixel_error_theta")
    row("Rand error", "rand_error", "rand_error_theta")
    row("  adapted Rand (scikit-image)", "adapted_rand_error", "adapted_rand_error_theta")
    row("warping error", "warping_error", "warping_error_theta")
    if "splits" in result:
        rows.append(("  splits / merges (groups)", f"{result['splits']} / {result['merges']}",
                     f"{result['warping_error_theta']:g}"))
        rows.append(("  split / merge pixels", f"{result['split_pixels']} / {result['merge_pixels']}",
                     f"{result['warping_error_theta']:g}"))
    row("  all mismatches (Jain et al.)", "mismatch_error", "mismatch_theta")
    row("V_Rand (higher=better)", "v_rand", "v_rand_theta")
    row("V_Info (higher=better)", "v_info", "v_info_theta")
    for key in sorted(k for k in result if re.fullmatch(r"iou_\d+", k)):
        row(f"IoU class {key[4:]}", key)
    row("mean IoU", "mean_iou")
    width = max(len(r[0]) for r in rows) if rows else 10
    lines = [f"{'metric':<{width}}  {'value':>10}  theta"]
    lines += [f"{label:<{width}}  {value:>10}  {theta}".rstrip() for label, value, theta in rows]
    return "\n".join(lines)


def write_json(path, payload):
    """Write JSON atomically (minunet.files.atomic: nothing half-written on any error); '-' prints it."""
    text = json.dumps(payload, indent=2, allow_nan=False) + "\n"
    if path == "-":
        click.echo(text, nl=False)
        return
    from minunet.files.atomic import atomic_path
    with atomic_path(Path(path), option="--json") as tmp:
        tmp.write_text(text)


class ThetaType(click.ParamType):
    """A threshold in [0, 1] or 'min'."""

    name = "THETA|min"

    def convert(self, value, param, ctx):
        if isinstance(value, float) or value is None:
            return value
        if str(value).lower() in ("min", "minimise", "minimize"):
            return None
        try:
            theta = float(value)
        except ValueError:
            self.fail(f"{value!r} is neither a number in [0, 1] nor 'min'", param, ctx)
        if not 0.0 <= theta <= 1.0:
            self.fail(f"{theta:g} is outside [0, 1]", param, ctx)
        return theta


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("pred", metavar="PRED")
@click.argument("truth", metavar="TRUTH")
@click.option("--slices", "slices", metavar="LIST",
              help="0-based slices, ranges inclusive (e.g. 24-29 or 0,5,10-12). Applied to the "
                   "stack with more slices (typically TRUTH, when PRED holds only held-out "
                   "slices), or to both when they have the same number.")
@click.option("--metrics", "metrics", default="all", show_default=True, metavar="LIST",
              help=f"Comma-separated subset of: {', '.join(METRICS)}.")
@click.option("--mismatch-theta", type=ThetaType(), default="0.9", show_default=True,
              metavar="THETA",
              help="Threshold of the classic warping error (all mismatches, Jain et al. 2010), or "
                   "'min' for the best of 0.0..0.9.")
@click.option("--split-radius", type=int, default=20, show_default=True, metavar="R",
              help="The warping error tests a split inside a (2R+1)^2 window, as the challenge's "
                   "script; 0 tests the whole image (Fiji's default, slower).")
@click.option("--pred-kind", type=click.Choice(KINDS), default="auto", show_default=True,
              help="What PRED holds. auto: floats are probabilities, 8-bit integers class ids, "
                   "16/32-bit integers a segmentation (one id per object, as `minunet segment` writes).")
@click.option("--json", "json_path", metavar="FILE",
              help="Also write the numbers as JSON to FILE ('-' prints JSON instead of the table).")
def evaluate(pred, truth, slices, metrics, mismatch_theta, split_radius, pred_kind, json_path):
    """Score PRED against TRUTH with the ISBI 2012 challenge's metrics.

    \b
    PRED   foreground probabilities in [0, 1] (0 = membrane, 1 = cell), the ISBI submission
           format written by `minunet predict`; a label map of class ids (uint8); or a
           segmentation, one id per object (16/32-bit, `minunet segment`).
    TRUTH  labels: 0 = membrane, > 0 (or 255) = cell. A TIFF stack, a PNG, a folder of
           slices, a glob, or HDF5: `file.h5` means its /labels dataset (`minunet data
           convert`), `file.h5:/dataset` any other.

    The numbers are the ISBI 2012 challenge's, as its own code (Fiji's Trainable Segmentation
    metrics) computes them, checked against Fiji's values: pixel and Rand error (1 - best
    F-score over thresholds 0.0..1.0); the warping error (the challenge's and the U-Net
    paper's: the fewest split and merge pixels over thresholds 0.0..0.9, per pixel) with
    the splits and merges, and the classic one of Jain et al. (all topological mismatches);
    V_Rand and V_Info after thinning the predicted membranes (the leaderboard's scores since
    2013); IoU per class. Errors: lower is better; V_Rand, V_Info, IoU: higher. A
    segmentation is scored as it is, without thresholds: Rand error, V_Rand, V_Info. With
    more than two classes only IoU tells the classes apart: pixel, Rand and warping error
    compare foreground (any class > 0) with background (class 0). --json adds every score
    at every threshold. Six 512x512 slices take a few seconds.

    \b
    Examples:
      minunet evaluate probs.tif isbi.h5 --slices 24-29 --json scores.json
      minunet evaluate labels.tif isbi.h5 --slices 24-29      # a segmentation (minunet segment)
    """
    from minunet.evaluation.inputs import check_has_cells
    from minunet.evaluation.stack import evaluate_stack

    chosen = parse_metrics(metrics)
    indices = parse_slices(slices) if slices else None
    truth_spec = resolve_truth_spec(truth)
    pred_stack = read_stack_checked(pred, "PRED")
    truth_stack = read_stack_checked(truth_spec, "TRUTH")
    pred_stack, truth_stack, applied = select_slices(pred_stack, truth_stack, indices,
                                                     f"PRED {pred}", f"TRUTH {truth_spec}")
    check_has_cells(truth_stack, f"TRUTH {truth_spec}", chosen)
    start = time.perf_counter()
    result = evaluate_stack(pred_stack, truth_stack, metrics=chosen, mismatch_theta=mismatch_theta,
                            pred_name=f"PRED {pred}", truth_name=f"TRUTH {truth_spec}", pred_kind=pred_kind,
                            split_radius=split_radius, per_threshold=bool(json_path))
    seconds = time.perf_counter() - start
    if json_path:
        write_json(json_path, {"pred": pred, "truth": truth_spec, "slice_selection": indices,
                               "selection_applied_to": applied, "metrics": list(chosen),
                               "seconds": round(seconds, 3), **result})
    if json_path != "-":
        n, h, w = result["slices"], result["height"], result["width"]
        click.echo(f"{pred} vs {truth_spec}: {n} slice{'s' * (n != 1)} of {h}x{w}"
                   + (f" (--slices applied to {applied})" if applied else ""))
        if result["prediction"] == "segments":
            click.echo("PRED holds segment ids: scored as a segmentation, without thresholds "
                       "(pixel and warping error and IoU need probabilities or class ids)")
        click.echo(format_table(result))
        click.echo(f"[{seconds:.1f} s]  for context: {PAPER}")
