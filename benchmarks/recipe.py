"""Does a training recipe learn? Short ISBI 2012 runs, validated at fixed iterations, per recipe and seed.

    minunet bench recipe [--data FILE_OR_DIR] [--recipes default,sgd,adam] [--seeds 0]
                         [--iterations 1500] [--val-every 250] [--width 16] [--json FILE] [--keep DIR]

Each recipe trains the EM network (depth 5, ``--width`` 16, 572 -> 388 tiles, the paper's
augmentation and weight maps) on ISBI 2012 training slices 0-23 for ``--iterations`` iterations
with :class:`minunet.training.trainer.Trainer`, in its own run directory under a temporary folder
(``--keep DIR`` keeps them), and validates on slices 24-29 every ``--val-every`` iterations (the
ISBI pixel and Rand errors). Recipes: ``default`` (what ``minunet train`` uses when no optimiser
option is given), ``sgd`` and ``adam`` (each with its default learning rate); any of them can take
settings, e.g. ``sgd:lr=0.001,momentum=0.9`` or ``adam:lr=1e-3,dropout=0``. A recipe that resolves
to the same settings as an earlier one (``default`` and its optimiser) is trained once.

The target (issue 17's acceptance): among the validations, one with Rand error <= 0.20 and pixel
error <= 0.060. Each run is "met" or "missed". ``--data`` is a minunet HDF5 file or the ISBI folder
(holding ``train/image`` and ``train/label``; converted to a temporary HDF5 file first); default
:func:`minunet.data.isbi.isbi_dir`. Progress (each validation, and a line every 100 iterations)
goes to stderr, the table to stdout; ``--json FILE`` writes every validation row of every run.
Timings depend on the machine's load; the scores do not (a run is deterministic on the CPU).
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from minunet.benchmarks import timing
from minunet.data.isbi import isbi_dir
from minunet.errors import UserError

TARGET_RAND, TARGET_PIXEL = 0.20, 0.060
TRAIN_SLICES, VAL_SLICES = "0-23", "24-29"
RECIPES = {"default": {}, "sgd": {"optimizer": "sgd"}, "adam": {"optimizer": "adam"}}
SETTINGS = {"lr": float, "momentum": float, "weight_decay": float, "dropout": float}


def parse_recipe(spec):
    """``NAME`` or ``NAME:key=value,...`` -> (label, TrainConfig overrides); ValueError if malformed."""
    name, _, rest = spec.partition(":")
    if name not in RECIPES:
        raise ValueError(f"recipe {name!r}: unknown; use one of {', '.join(RECIPES)}")
    overrides = dict(RECIPES[name])
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key not in SETTINGS:
            raise ValueError(f"recipe {spec!r}: setting {key!r} unknown; use {', '.join(SETTINGS)}")
        try:
            overrides[key] = SETTINGS[key](value)
        except ValueError:
            raise ValueError(f"recipe {spec!r}: {key}={value!r} is not a number") from None
    return spec, overrides


def resolve(overrides):
    """The optimiser settings a recipe trains with, once TrainConfig's defaults fill the gaps."""
    from minunet.training.config import DEFAULT_LR, TrainConfig
    fields = {k: overrides.get(k, getattr(TrainConfig, k)) for k in ("optimizer", *SETTINGS)}
    if fields["lr"] is None:
        fields["lr"] = DEFAULT_LR[fields["optimizer"]]
    if fields["optimizer"] != "sgd":
        fields.pop("momentum")
    return fields


def met(rows):
    """Whether a validation reached the target (Rand <= 0.20 and pixel <= 0.060)."""
    return any(r["val_rand_error"] is not None and r["val_rand_error"] <= TARGET_RAND
               and r["val_pixel_error"] <= TARGET_PIXEL for r in rows)


def data_file(data, tmp, progress):
    """An HDF5 data file: ``data`` itself, or the ISBI folder converted into ``tmp``."""
    path = Path(data)
    if path.is_file():
        return path
    images, labels = path / "train" / "image", path / "train" / "label"
    if not images.is_dir() or not labels.is_dir():
        raise UserError(f"--data {path}: neither a data file nor an ISBI 2012 folder (train/image, train/label); "
                        f"give isbi.h5 from `minunet data convert` or set MINUNET_ISBI_DIR")
    from minunet.data.convert import convert
    progress(f"converting {path} to HDF5 (weight maps for 30 slices) ...")
    return convert(images, labels, Path(tmp) / "isbi.h5")


def train_one(data, out, overrides, seed, iterations, val_every, width, progress):
    """Train one recipe in run directory ``out``; returns its validation rows and seconds per step."""
    from minunet.training.config import TrainConfig
    from minunet.training.trainer import Trainer
    config = TrainConfig(data=str(data), out=str(out), device="cpu", iterations=iterations, width=width,
                           train_slices=TRAIN_SLICES, val_slices=VAL_SLICES, val_every=val_every, seed=seed,
                           **overrides)
    trainer = Trainer(config, echo=lambda line: progress(f"  {line}"))
    start = time.monotonic()

    def every_100(t, loss):
        if t.iteration % 100 == 0 and t.iteration % val_every:
            progress(f"  iteration {t.iteration}/{iterations}: loss {loss:.4f}, "
                     f"{(time.monotonic() - start) / t.iteration:.2f} s per iteration so far")
    try:
        result = trainer.run(progress=every_100, handle_signals=False)
    finally:
        trainer.close()
    rows = [r for r in result.history if r["val_rand_error"] is not None]
    return rows, (time.monotonic() - start) / max(result.iteration, 1)


def run(data=None, recipes=("default", "sgd", "adam"), seeds=(0,), iterations=1500, val_every=250, width=16,
        keep=None, progress=print):
    """Train every recipe with every seed; returns the settings, the runs and their validations as a dict."""
    data = Path(data or isbi_dir())
    parsed = [parse_recipe(r) for r in recipes]
    with tempfile.TemporaryDirectory(prefix="minunet-recipe-") as tmp:
        root = Path(keep) if keep else Path(tmp)
        path = data_file(data, tmp, progress)
        runs, done = [], {}
        for label, overrides in parsed:
            settings = resolve(overrides)
            for seed in seeds:
                key = (json.dumps(settings, sort_keys=True), seed)
                if key in done:
                    progress(f"{label}, seed {seed}: the same settings as {done[key]['recipe']}; not trained again")
                    runs.append(dict(done[key], recipe=label, same_as=done[key]["recipe"]))
                    continue
                out = root / f"{label.replace(':', '-').replace(',', '-').replace('=', '')}-seed{seed}"
                progress(f"{label}, seed {seed} ({_describe(settings)}): {iterations} iterations in {out}")
                rows, step_s = train_one(path, out, overrides, seed, iterations, val_every, width, progress)
                done[key] = dict(recipe=label, seed=seed, settings=settings, s_per_iteration=step_s,
                                 validations=rows, met=met(rows))
                runs.append(done[key])
    return dict(data=str(data), width=width, iterations=iterations, val_every=val_every,
                train_slices=TRAIN_SLICES, val_slices=VAL_SLICES, target_rand=TARGET_RAND,
                target_pixel=TARGET_PIXEL, cpu=timing.cpu_name(), date=time.strftime("%Y-%m-%d %H:%M %Z"), runs=runs)


def _describe(settings):
    return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{v}" for k, v in settings.items())


def _best(rows):
    """The validation with the lowest Rand error (the one best.h5 keeps)."""
    return min(rows, key=lambda r: r["val_rand_error"]) if rows else None


def format_table(result):
    """Pixel / Rand error at each validation, per run, and the target."""
    iterations = sorted({r["iteration"] for run in result["runs"] for r in run["validations"]})
    head = f"{'recipe':<26} {'seed':>4}  " + " ".join(f"{'it ' + str(i):>13}" for i in iterations)
    lines = [f"validation pixel / Rand error on ISBI slices {result['val_slices']} (width {result['width']}, "
             f"train slices {result['train_slices']}); target: a validation with Rand <= {result['target_rand']:.2f} "
             f"and pixel <= {result['target_pixel']:.3f}", head + f"  {'best Rand (it)':>16}  target"]
    for run in result["runs"]:
        by_it = {r["iteration"]: r for r in run["validations"]}
        cells = [f"{by_it[i]['val_pixel_error']:.3f}/{by_it[i]['val_rand_error']:.3f}" if i in by_it else "-"
                 for i in iterations]
        best = _best(run["validations"])
        best_text = f"{best['val_rand_error']:.3f} ({best['iteration']})" if best else "-"
        lines.append(f"{run['recipe']:<26} {run['seed']:>4}  " + " ".join(f"{c:>13}" for c in cells)
                     + f"  {best_text:>16}  {'met' if run['met'] else 'missed'}")
    described = {run["recipe"]: _describe(run["settings"]) for run in result["runs"]}
    lines.append("settings: " + "; ".join(f"{recipe}: {text}" for recipe, text in described.items()))
    lines.append(f"CPU: {result['cpu']}; {result['date']}; "
                 + ", ".join(f"{run['recipe']} seed {run['seed']} {run['s_per_iteration']:.2f} s/it"
                             for run in result["runs"] if "same_as" not in run))
    return "\n".join(lines)


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def arguments():
    """The command-line options (an argparse parser: ``minunet bench recipe`` builds its click command from it)."""
    parser = argparse.ArgumentParser(prog="minunet bench recipe", description=__doc__.split("\n\n")[0],
                                     formatter_class=_Help)
    parser.add_argument("--data", default=str(isbi_dir()),
                        help="a minunet HDF5 file of the 30 ISBI training slices, or the ISBI 2012 folder")
    parser.add_argument("--recipes", default="default,sgd,adam",
                        help="comma-separated recipes among default, sgd and adam, each optionally with "
                             "settings NAME:key=value,... (lr, momentum, weight_decay, dropout); ';' also "
                             "separates recipes")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; each recipe is trained once per seed")
    parser.add_argument("--iterations", type=int, default=1500, help="training iterations per run")
    parser.add_argument("--val-every", type=int, default=250, help="validate every K iterations")
    parser.add_argument("--width", type=int, default=16, help="channels of the first level")
    parser.add_argument("--json", metavar="FILE", help="write the settings, runs and validations as JSON")
    parser.add_argument("--keep", metavar="DIR",
                        help="keep the run directories in DIR [default: a temporary folder, removed at the end]")
    return parser


def main(argv=None):
    """Command line: the options of :func:`arguments`; prints the table; returns 0, or 2 for bad options or data."""
    parser = arguments()
    args = parser.parse_args(argv)
    try:
        recipes = split_recipes(args.recipes)
        for spec in recipes:
            parse_recipe(spec)
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError as err:
        parser.error(str(err))
    try:
        result = run(args.data, recipes, seeds, args.iterations, args.val_every, args.width, args.keep,
                     progress=lambda line: print(line, file=sys.stderr, flush=True))
    except UserError as err:
        print(f"minunet bench recipe: {err}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


def split_recipes(text):
    """'default,sgd:lr=0.001,momentum=0.9;adam' -> ['default', 'sgd:lr=0.001,momentum=0.9', 'adam'].

    A comma starts a new recipe unless what follows it is a key=value setting of the current one.
    """
    recipes = []
    for part in (p.strip() for chunk in text.split(";") for p in chunk.split(",")):
        if not part:
            continue
        if "=" in part and ":" not in part and recipes:
            recipes[-1] += "," + part
        else:
            recipes.append(part)
    return recipes


if __name__ == "__main__":
    sys.exit(main())
