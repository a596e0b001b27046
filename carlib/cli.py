"""The ``carlib`` command: ``results``, ``run``, ``data``.

Flags spell the parameter vocabulary with dashes (``--results-dir``, ``--val-split``);
``--params FILE.yaml`` reads the same names with underscores, and flags override it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

__all__ = ["main", "load_params_file"]


def load_params_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML parameter file safely; it must be a mapping of known parameter names."""
    import yaml

    from carlib.config import ConfigError, check_known
    from carlib.studies import STUDY_PARAMETERS

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"parameter file {str(path)!r} does not exist.")
    try:
        params = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"parameter file {str(path)!r} is not valid YAML: {err}") from None
    if not isinstance(params, dict):
        raise ConfigError(f"parameter file {str(path)!r} must hold a mapping of parameter names to values.")
    check_known(params, STUDY_PARAMETERS)
    return params


# The columns `carlib results` shows in a terminal by default.
COMPACT_COLUMNS = ("run_id", "study", "status", "backbone", "image_size", "lr", "schedule", "augmentation",
                   "val_split", "seed", "epochs", "val_accuracy_best", "val_accuracy_last", "best_epoch", "total_s",
                   "error")


def _cmd_results(args: argparse.Namespace) -> int:
    from carlib.results import load_results
    from carlib.studies import STUDIES, get_study, summarize

    frame = load_results(args.results_dir, study=args.study)
    if args.summary:
        if not args.study:
            print("--summary needs --study NAME (known: " + ", ".join(sorted(STUDIES)) + ")", file=sys.stderr)
            return 2
        frame = summarize(frame, get_study(args.study).scientific).reset_index()
    elif args.columns:
        missing = [c for c in args.columns if c not in frame.columns]
        if missing:
            print(f"unknown column(s) {', '.join(missing)}; available: {', '.join(frame.columns)}", file=sys.stderr)
            return 2
        frame = frame[args.columns]
    elif args.format == "table" and not args.all_columns:
        # A terminal cannot show ~40 columns: the leading ones identify and score each run.
        frame = frame[[c for c in COMPACT_COLUMNS if c in frame.columns]]
    if args.format == "csv":
        sys.stdout.write(frame.to_csv(index=False))
    elif args.format == "markdown":
        print(frame.to_markdown(index=False, floatfmt=".4g"))
    else:
        if frame.empty:
            print(f"no runs in {args.results_dir or 'the results store'} yet")
        else:
            print(frame.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


def _cmd_run(args: argparse.Namespace, params: dict[str, Any]) -> int:
    from carlib.studies import run_study

    records = run_study(params.pop("study", None) or "adhoc", **params)
    return 0 if all(r["status"] == "ok" for r in records) else 1


def _cmd_data(args: argparse.Namespace) -> int:
    from carlib.data.embedded import embedded_data_dir, ensure_embedded_data
    from carlib.data.synthetic import generate_car_dataset

    if args.data_command == "where":
        print(embedded_data_dir(args.seed))
    elif args.out:
        print(generate_car_dataset(args.out, n_train=args.n_train, n_test=args.n_test, seed=args.seed))
    else:
        print(ensure_embedded_data(args.seed))
    return 0


def _parser() -> argparse.ArgumentParser:
    from carlib.config import PARAMETER_NAMES

    parser = argparse.ArgumentParser(prog="carlib", description="Train and compare image classifiers.")
    sub = parser.add_subparsers(dest="command", required=True)

    results = sub.add_parser("results", help="print the combined results table")
    results.add_argument("--results-dir", default=None, help="results store (default: $CARLIB_RESULTS_DIR or ./results)")
    results.add_argument("--study", default=None, help="only runs of this study")
    results.add_argument("--format", choices=("table", "csv", "markdown"), default="table")
    results.add_argument("--summary", action="store_true", help="mean and std across seeds per configuration")
    results.add_argument("--columns", nargs="+", default=None, help="only these columns")
    results.add_argument("--all-columns", action="store_true",
                         help="the table format shows every column (csv and markdown always do)")

    run = sub.add_parser("run", help="train and evaluate one configuration over --seeds seeds")
    run.add_argument("--params", default=None, help="YAML file of parameters; flags override it")
    for name in (*PARAMETER_NAMES, "seeds"):
        run.add_argument("--" + name.replace("_", "-"), dest=name, default=None, metavar="VALUE")

    data = sub.add_parser("data", help="the embedded synthetic dataset")
    data.add_argument("data_command", choices=("generate", "where"))
    data.add_argument("--out", default=None, help="write a fresh copy here instead of the cache")
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--n-train", type=int, default=1000)
    data.add_argument("--n-test", type=int, default=300)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``carlib`` console script."""
    from carlib.config import PARAMETER_NAMES, ConfigError

    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    try:
        if unknown:
            flags = [u.split("=")[0] for u in unknown if u.startswith("--")]
            if args.command != "run" or not flags:
                parser.error(f"unrecognized arguments: {' '.join(unknown)}")
            from carlib.config import check_known
            from carlib.studies import STUDY_PARAMETERS

            check_known({f[2:].replace("-", "_"): None for f in flags}, STUDY_PARAMETERS)
        if args.command == "results":
            return _cmd_results(args)
        if args.command == "data":
            return _cmd_data(args)
        params = load_params_file(args.params) if args.params else {}
        params.update({k: getattr(args, k) for k in (*PARAMETER_NAMES, "seeds") if getattr(args, k) is not None})
        return _cmd_run(args, params)
    except (ConfigError, FileNotFoundError) as err:
        print(f"carlib: error: {err}", file=sys.stderr)
        return 2
