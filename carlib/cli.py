"""The ``carlib`` command: ``results``, ``run``, ``sweep``, ``predict``, ``data``.

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
    """Read a YAML parameter file safely; it must be a mapping of known parameter names.

    A missing ``params/…`` path is looked up among carlib's own parameter files (:mod:`carlib.project_files`).
    """
    from carlib.config import check_known, load_yaml_mapping
    from carlib.project_files import resolve_project_file
    from carlib.studies import STUDY_PARAMETERS

    params = load_yaml_mapping(resolve_project_file(path), "parameter file")
    check_known(params, STUDY_PARAMETERS)
    return params


# The columns `carlib results` shows in a terminal by default.
COMPACT_COLUMNS = ("run_id", "study", "status", "backbone", "image_size", "lr", "schedule", "augmentation",
                   "val_split", "seed", "epochs", "val_accuracy_best", "val_accuracy_last", "best_epoch", "total_s",
                   "error")


def _cmd_results(args: argparse.Namespace) -> int:
    from carlib.results import load_results
    from carlib.stats import compare_top_two
    from carlib.studies import STUDIES, get_study, summarize

    frame = load_results(args.results_dir, study=args.study)
    if args.summary:
        if not args.study:
            print("--summary needs --study NAME (known: " + ", ".join(sorted(STUDIES)) + ")", file=sys.stderr)
            return 2
        spec = get_study(args.study)
        verdict = compare_top_two(frame, spec.scientific, spec.metric)
        frame = summarize(frame, spec.scientific, spec.metric, extra=spec.extra).reset_index()
    elif args.columns:
        missing = [c for c in args.columns if c not in frame.columns]
        if missing:
            print(f"unknown column(s) {', '.join(missing)}; available: {', '.join(frame.columns)}", file=sys.stderr)
            return 2
        frame = frame[args.columns]
    elif args.format == "table" and not args.all_columns:
        # A terminal cannot show ~40 columns: the leading ones identify and score each run.
        frame = frame[[c for c in COMPACT_COLUMNS if c in frame.columns]]
    verdict_line = f"verdict: {verdict.message}" if args.summary else None
    if args.format == "csv":
        sys.stdout.write(frame.to_csv(index=False))
    elif args.format == "markdown":
        print(frame.to_markdown(index=False, floatfmt=".4g"))
    else:
        if frame.empty:
            print(f"no runs in {args.results_dir or 'the results store'} yet")
        else:
            print(frame.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if verdict_line and args.format != "csv":
        print(("\n" if args.format == "markdown" else "") + verdict_line)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from carlib.studies import get_study, study_summary, study_verdict
    from carlib.sweep import expand_trials, load_sweep, run_sweep

    spec = load_sweep(args.sweep_file)
    if args.dry_run:
        for trial in expand_trials(spec):
            print(trial.trial_id, {k: v for k, v in trial.params.items() if k not in ("trial_id", "study", "seeds")})
        return 0
    gpus = [g for g in args.gpus.split(",") if g] if args.gpus else None
    report = run_sweep(spec, results_dir=args.results_dir, workers=args.workers, gpus=gpus, shard=args.shard,
                       kernel=args.kernel, progress=not args.no_progress)
    print(f"sweep {spec.study}: {len(report.ok)} trial(s) ran, {len(report.failed)} failed, "
          f"{len(report.skipped)} already finished (skipped)"
          + (f", {len(report.busy)} left to another sweep running them" if report.busy else ""))
    if report.failed:
        print("failed trials (logs in <results_dir>/notebooks/<trial_id>.log): " + ", ".join(report.failed))
    try:
        get_study(spec.study)
    except Exception:
        return 1 if report.failed else 0
    import pandas as pd

    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(study_summary(spec.study, args.results_dir).to_string(float_format=lambda v: f"{v:.4g}"))
    print("verdict: " + study_verdict(spec.study, args.results_dir).message)
    return 1 if report.failed else 0


def _cmd_run(args: argparse.Namespace, params: dict[str, Any]) -> int:
    from carlib.studies import run_study

    records = run_study(params.pop("study", None) or "adhoc", **params)
    return 0 if all(r["status"] == "ok" for r in records) else 1


def _cmd_data(args: argparse.Namespace) -> int:
    from carlib.data.embedded import embedded_data_dir, ensure_embedded_data
    from carlib.data.synthetic import generate_car_dataset

    if args.data_command == "check":
        return _cmd_data_check(args)
    if args.path:
        print(f"carlib: error: 'carlib data {args.data_command}' takes no path (did you mean 'carlib data check "
              f"{args.path}'?)", file=sys.stderr)
        return 2
    if args.data_command == "where":
        print(embedded_data_dir(args.seed))
    elif args.out:
        print(generate_car_dataset(args.out, n_train=args.n_train, n_test=args.n_test, seed=args.seed))
    else:
        print(ensure_embedded_data(args.seed))
    return 0


def _cmd_data_check(args: argparse.Namespace) -> int:
    """``carlib data check PATH``: the report; exit status 0 when training can go on, 1 when not."""
    import warnings

    from carlib.data.check import check_dataset, report_json
    from carlib.data.screen import DataWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)  # the report itself names every file
        report = check_dataset(args.path)
    print(report_json(report) if args.json else report.to_text())
    return 0 if report.usable else 1


def _cmd_predict(args: argparse.Namespace) -> int:
    import warnings

    from carlib.config import ConfigError
    from carlib.data.folders import prepare_data
    from carlib.evaluate import resolve_model_path
    from carlib.submission import SubmissionError, SubmissionWarning, predict_submission, score_submission

    try:
        model_path = resolve_model_path(args.model)
        print(f"carlib predict: model {model_path}", flush=True)
        with warnings.catch_warnings():
            # The summary below names every missing, unreadable or extra file; no duplicate warning lines.
            warnings.simplefilter("ignore", SubmissionWarning)
            submission = predict_submission(model_path, args.data_dir, args.out, tta=args.tta,
                                            tta_preset=args.tta_preset, tta_seed=args.tta_seed,
                                            batch_size=args.batch_size, image_size=args.image_size,
                                            fallback=args.fallback)
    except (SubmissionError, ConfigError, ValueError) as err:
        print(f"carlib: error: {err}", file=sys.stderr)
        return 2
    print(submission.summary())
    answers = prepare_data(args.data_dir).root / "test-answers.csv"
    if answers.is_file():  # the embedded dataset ships its answers
        score = score_submission(submission.path, answers)
        print(f"accuracy against {answers.name}: {score['accuracy']:.4f} ({score['n_correct']}/{score['n']})")
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

    sweep = sub.add_parser("sweep", help="run a study grid x seeds through papermill (resumable)")
    sweep.add_argument("sweep_file", help="YAML: notebook, study, base, grid, seeds (params/<study>/sweep-*.yaml)")
    sweep.add_argument("--results-dir", default=None, help="results store (default: $CARLIB_RESULTS_DIR or ./results)")
    sweep.add_argument("--workers", type=int, default=1, help="trials run in parallel")
    sweep.add_argument("--gpus", default=None, help="comma-separated GPU ids; worker i uses one of them (CUDA_VISIBLE_DEVICES)")
    sweep.add_argument("--shard", default=None, help="i/n: run only this machine's share of the trials (1-based)")
    sweep.add_argument("--kernel", default="python3",
                       help="Jupyter kernel for papermill (-k); default python3, this environment's own kernel")
    sweep.add_argument("--dry-run", action="store_true", help="list the trials and exit")
    sweep.add_argument("--no-progress", action="store_true", help="no progress bar")

    predict = sub.add_parser("predict", help="write a validated submission CSV for the test images")
    predict.add_argument("model", help="a .keras file, or a run folder (a final run's folder uses last.keras)")
    predict.add_argument("--data-dir", default=None, help="competition folder (default: the embedded dataset)")
    predict.add_argument("--out", default="submission.csv", help="CSV to write (default: submission.csv)")
    predict.add_argument("--tta", type=int, default=0, metavar="N", help="TTA passes (0 or 1: none)")
    predict.add_argument("--tta-preset", default="light", help="TTA preset: none, flip, light, medium, or a pipeline saved with albumentations.save")
    predict.add_argument("--tta-seed", type=int, default=0)
    predict.add_argument("--batch-size", type=int, default=32)
    predict.add_argument("--image-size", type=int, default=None, help="test size (default: the model's; FixRes)")
    predict.add_argument("--fallback", default=None,
                         help="class for missing/unreadable images (default: the training set's most frequent)")

    report = sub.add_parser("report", help="write one HTML report of a results store")
    report.add_argument("--results-dir", default=None, help="results store (default: $CARLIB_RESULTS_DIR or ./results)")
    report.add_argument("--out", default="build/report.html", help="where to write the report")
    report.add_argument("--notebooks", nargs="*", default=[], help="more folders of executed notebooks to include")

    from carlib import bench

    bench.add_parser(sub)

    data = sub.add_parser("data", help="the embedded synthetic dataset; check a dataset before training")
    data.add_argument("data_command", choices=("generate", "where", "check"))
    data.add_argument("path", nargs="?", default=None,
                      help="check: the dataset folder (default: the embedded dataset)")
    data.add_argument("--json", action="store_true", help="check: print the report as JSON")
    data.add_argument("--out", default=None, help="write a fresh copy here instead of the cache")
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--n-train", type=int, default=1000)
    data.add_argument("--n-test", type=int, default=300)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``carlib`` console script."""
    from carlib.config import PARAMETER_NAMES, ConfigError
    from carlib.data.archives import ArchiveError
    from carlib.data.screen import DataError
    from carlib.locks import TrialBusyError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["bench", "recipe"]:  # its own options: the recipe against a plain Keras CNN (issue 9)
        from carlib import recipe_bench

        return recipe_bench.main(argv[2:], prog="carlib bench recipe")
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
        if args.command == "bench":
            from carlib import bench

            return bench.run_command(args)
        if args.command == "sweep":
            return _cmd_sweep(args)
        if args.command == "report":
            from carlib.report import build_report

            print(build_report(args.results_dir, args.out, notebook_dirs=args.notebooks))
            return 0
        if args.command == "predict":
            return _cmd_predict(args)
        params = load_params_file(args.params) if args.params else {}
        params.update({k: getattr(args, k) for k in (*PARAMETER_NAMES, "seeds") if getattr(args, k) is not None})
        return _cmd_run(args, params)
    except (ConfigError, FileNotFoundError, DataError, ArchiveError, TrialBusyError) as err:
        print(f"carlib: error: {err}", file=sys.stderr)
        return 2
