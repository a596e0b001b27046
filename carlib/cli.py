"""The ``carlib`` command: parses arguments and dispatches to the package; nothing else happens here.

Commands: ``results``, ``run``, ``rerun``, ``sweep``, ``predict``, ``export``, ``report``, ``bench`` (and
``bench recipe``, ``bench sweep``, ``bench verdicts``), ``data``, ``weights``. Flags spell the parameter vocabulary
with dashes (``--results-dir``, ``--val-split``); ``--params FILE.yaml`` reads the same names with
underscores, and flags override it. Every carlib error ends as one ``carlib: error: …`` line and exit
status 2. Every flag's ``--help`` line ends with its type, default and allowed values
(:class:`_HelpFormatter`); ``carlib run``'s come from the config's own field definitions
(:func:`parameter_help`).

Each command imports what it runs when it runs (deferred imports, marked): ``carlib results``
never imports TensorFlow.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import re
import sys
import typing
import warnings
from typing import Any, Sequence

from carlib.base.project_files import default_results_dir
from carlib.config import PARAMETER_NAMES, ExperimentConfig, allowed_values, check_known
from carlib.data.embedded import embedded_data_dir, ensure_embedded_data
from carlib.errors import CarlibError, ConfigError, DataWarning, SubmissionWarning
from carlib.records.table import COMPACT_COLUMNS
from carlib.studies.parameters import STUDY_PARAMETERS, load_params_file
from carlib.studies.specs import STUDIES, get_study

__all__ = ["main"]

_RESULTS_DIR_HELP = "results store (default: $CARLIB_RESULTS_DIR or ./results)"
# carlib.studies.aggregate.AGGREGATES, spelt here: importing it would load scipy for every command.
_AGGREGATES = ("mean", "median", "worst")
_AGGREGATE_HELP = ("summaries rank configurations by the mean across seeds, their median or the worst seed; the "
                   "verdict stays a paired test on the mean of the per-seed differences")


# ------------------------------------------------------------------------------ commands
def _cmd_results(args: argparse.Namespace) -> int:
    if args.action == "export" or args.mlflow is not None:
        return _cmd_results_export(args)
    from carlib.records.store import load_results  # deferred: pandas

    stores = args.results_dir or [None]
    frame = load_results(stores[0] if len(stores) == 1 else stores, study=args.study)
    verdict = None
    if args.summary:
        if not args.study:
            raise ConfigError("--summary needs --study NAME (known: " + ", ".join(STUDIES.names()) + ")")
        # deferred: scipy
        from carlib.studies.aggregate import summarize_with
        from carlib.studies.study_log import verdict_in_store

        spec = get_study(args.study)
        verdict = verdict_in_store(frame, spec.scientific, spec.metric, stores[0] or default_results_dir(),
                                   min_effect=args.min_effect)
        frame = summarize_with(frame, spec.scientific, spec.metric, extra=spec.extra,
                               aggregate=args.aggregate).reset_index()
    elif args.aggregate != "mean":
        raise ConfigError("--aggregate applies to --summary (one row per configuration); without it each row is one "
                          "run.")
    elif args.columns:
        missing = [c for c in args.columns if c not in frame.columns]
        if missing:
            raise ConfigError(f"unknown column(s) {', '.join(missing)}; available: {', '.join(frame.columns)}")
        frame = frame[args.columns]
    elif args.format == "table" and not args.all_columns:
        # A terminal cannot show ~40 columns: the leading ones identify and score each run.
        frame = frame[[c for c in COMPACT_COLUMNS if c in frame.columns]]
    if args.format == "csv":
        sys.stdout.write(frame.to_csv(index=False))
    elif args.format == "markdown":
        print(frame.to_markdown(index=False, floatfmt=".4g"))
    elif frame.empty:
        print(f"no runs in {', '.join(args.results_dir) if args.results_dir else 'the results store'} yet")
    else:
        print(frame.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if verdict is not None and args.format != "csv":
        print(("\n" if args.format == "markdown" else "") + f"primary metric: {verdict.metric} (the summary ranks by "
              "it and the verdict decides on it; the other columns are shown, never decided on)")
        print(f"verdict: {verdict.message}")
        if args.aggregate != "mean":
            from carlib.studies.aggregate import aggregate_note  # deferred: scipy (loaded above already)

            print(aggregate_note(args.aggregate))
    return 0


def _cmd_results_export(args: argparse.Namespace) -> int:
    """``carlib results export --mlflow URI``: every record not yet exported becomes an MLflow run."""
    if args.action != "export":
        raise ConfigError("--mlflow belongs to the export: carlib results export --mlflow TRACKING_URI")
    if args.mlflow is None:
        raise ConfigError("carlib results export needs --mlflow TRACKING_URI (sqlite:///mlflow.db, file:///path/mlruns "
                          "or a tracking server's URL)")
    shown = [flag for flag, used in (("--summary", args.summary), ("--columns", args.columns),
                                     ("--all-columns", args.all_columns), ("--format", args.format != "table"),
                                     ("--aggregate", args.aggregate != "mean")) if used]
    if shown:
        raise ConfigError(f"{', '.join(shown)} change(s) how the table is printed; carlib results export takes "
                          "--mlflow, --results-dir and --study only.")
    from carlib.studies.mlflow_export import export_to_mlflow  # deferred: MLflow, an optional extra

    report = export_to_mlflow(args.mlflow, args.results_dir or None, args.study, say=print)
    print(report.summary())
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from carlib.studies.run import run_study  # deferred: TensorFlow loads when training starts

    params = load_params_file(args.params) if args.params else {}
    params.update({k: getattr(args, k) for k in STUDY_PARAMETERS if getattr(args, k, None) is not None})
    records = run_study(params.pop("study", None) or "adhoc", **params)
    return 0 if all(r["status"] == "ok" for r in records) else 1


def _cmd_sweep(args: argparse.Namespace) -> int:
    # deferred: papermill, pandas
    import pandas as pd

    from carlib.studies.run import study_summary, study_verdict
    from carlib.studies.sweep import load_sweep, run_sweep

    spec = load_sweep(args.sweep_file, base_overrides={"data_dir": args.data_dir} if args.data_dir else None)
    gpus = [g for g in args.gpus.split(",") if g] if args.gpus else None
    if args.until_decisive:
        return _cmd_sweep_until_decisive(args, spec, gpus)
    if args.max_seeds is not None or args.min_effect is not None:
        raise ConfigError("--max-seeds and --min-effect belong to --until-decisive (a sweep without it runs the seeds "
                          "its file plans).")
    report = run_sweep(spec, results_dir=args.results_dir, workers=args.workers, gpus=gpus, shard=args.shard,
                       kernel=args.kernel, progress=not args.no_progress, engine=args.engine, address=args.address,
                       gpus_per_trial=args.gpus_per_trial, cpus_per_trial=args.cpus_per_trial, retries=args.retries,
                       dry_run=args.dry_run)
    if args.dry_run:
        for trial in report.trials:
            print(trial.trial_id, {k: v for k, v in trial.params.items() if k not in ("trial_id", "study", "seeds")},
                  *(["(finished)"] if trial.trial_id in report.skipped else []))
        return 0
    retried = sum(1 for n in report.attempts.values() if n > 1)
    print(f"sweep {spec.study}: {len(report.ok)} trial(s) ran, {len(report.failed)} failed, "
          f"{len(report.skipped)} already finished (skipped)"
          + (f", {len(report.busy)} left to another sweep running them" if report.busy else "")
          + (f"; {retried} retried after their process died" if retried else ""))
    if report.failed:
        print("failed trials (logs in <results_dir>/notebooks/<trial_id>.log): " + ", ".join(report.failed))
    if spec.study in STUDIES:
        with pd.option_context("display.width", 160, "display.max_columns", 20):
            print(study_summary(spec.study, args.results_dir).to_string(float_format=lambda v: f"{v:.4g}"))
        print("verdict: " + study_verdict(spec.study, args.results_dir).message)
    return 1 if report.failed else 0


def _cmd_sweep_until_decisive(args: argparse.Namespace, spec, gpus) -> int:
    """``carlib sweep FILE --until-decisive``: rounds of seeds until the anytime-valid verdict is clear."""
    from carlib.studies.rounds import run_until_decisive  # deferred: papermill
    from carlib.studies.stats import MIN_EFFECT  # deferred: scipy

    if args.shard or args.dry_run:
        raise ConfigError("--until-decisive decides after every round on every configuration: it cannot be sharded "
                          "or dry-run; leave out --shard and --dry-run.")
    result = run_until_decisive(spec, max_seeds=20 if args.max_seeds is None else args.max_seeds,
                                min_effect=MIN_EFFECT if args.min_effect is None else args.min_effect,
                                results_dir=args.results_dir, engine=args.engine, progress=not args.no_progress,
                                kernel=args.kernel, workers=args.workers, gpus=gpus, address=args.address,
                                gpus_per_trial=args.gpus_per_trial, cpus_per_trial=args.cpus_per_trial,
                                retries=args.retries)
    report = result.sweep
    print(f"sweep {spec.study} --until-decisive: {len(report.ok)} trial(s) ran, {len(report.failed)} failed, "
          f"{len(report.skipped)} already finished (skipped). {result.sentence()}")
    if result.verdict is not None:
        print(f"verdict: {result.verdict.message}")
    return 1 if report.failed else 0


def _cmd_predict(args: argparse.Namespace) -> int:
    if args.paths:  # photos: no training folder, no sample submission
        return _cmd_predict_photos(args)
    if args.top_k != 1 or args.classes is not None:
        raise ConfigError("--top-k and --classes apply to photos (carlib predict MODEL PATH…); the submission of "
                          "--data-dir has one class per row, named by the training folders.")
    args.out = args.out or "submission.csv"
    # deferred: TensorFlow
    from carlib.data.folders import prepare_data
    from carlib.evaluate.predict import resolve_model_path
    from carlib.evaluate.submission import predict_submission, score_submission

    model_path = resolve_model_path(args.model)
    print(f"carlib predict: model {model_path}", flush=True)
    with warnings.catch_warnings():
        # The summary below names every missing, unreadable or extra file; no duplicate warning lines.
        warnings.simplefilter("ignore", SubmissionWarning)
        submission = predict_submission(model_path, args.data_dir, args.out, tta=args.tta, tta_preset=args.tta_preset,
                                        tta_seed=args.tta_seed, batch_size=args.batch_size,
                                        image_size=args.image_size, fallback=args.fallback)
    print(submission.summary())
    answers = prepare_data(args.data_dir).root / "test-answers.csv"
    if answers.is_file():  # the embedded dataset ships its answers
        score = score_submission(submission.path, answers)
        print(f"accuracy against {answers.name}: {score['accuracy']:.4f} ({score['n_correct']}/{score['n']})")
    return 0


def _cmd_predict_photos(args: argparse.Namespace) -> int:
    """``carlib predict MODEL PATH…``: one row per photo; exit status 1 when no photo could be predicted."""
    # deferred: TensorFlow
    from carlib.evaluate.photos import predict_photos, predictions_summary, write_predictions
    from carlib.evaluate.predict import resolve_model_path

    if args.data_dir is not None:
        raise ConfigError("give either photos (carlib predict MODEL PATH…) or a competition folder (carlib predict "
                          "MODEL --data-dir DIR), not both.")
    if args.fallback is not None:
        raise ConfigError("--fallback applies to the submission of --data-dir; a photo that cannot be read gets a row "
                          "with its error instead.")
    out = args.out or "predictions.csv"
    info = sys.stderr if out == "-" else sys.stdout  # with --out - the CSV itself goes to standard output
    print(f"carlib predict: model {resolve_model_path(args.model)}", file=info, flush=True)
    frame = predict_photos(args.model, args.paths, top_k=args.top_k, tta=args.tta, tta_preset=args.tta_preset,
                           tta_seed=args.tta_seed, batch_size=args.batch_size, image_size=args.image_size,
                           class_names=args.classes)
    written = write_predictions(frame, out)
    print(predictions_summary(frame, written), file=info)
    return 0 if (frame["error"] == "").any() else 1


def _cmd_export(args: argparse.Namespace) -> int:
    from carlib.evaluate.export import export_model  # deferred: TensorFlow

    print(export_model(args.model, args.format, args.out, class_names=args.classes).summary())
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from carlib.studies.report import build_report  # deferred: matplotlib

    print(build_report(args.results_dir, args.out, notebook_dirs=args.notebooks, aggregate=args.aggregate))
    return 0


def _cmd_rerun(args: argparse.Namespace) -> int:
    """``carlib rerun RUN_ID``: train the run again, print the figures side by side; exit status 1 when they differ."""
    from carlib.train.rerun import rerun  # deferred: TensorFlow

    report = rerun(args.run_id, args.results_dir, tolerance=args.tolerance)
    print(report.table())
    return 0 if report.matched else 1


def _cmd_data(args: argparse.Namespace) -> int:
    if args.data_command == "check":
        return _cmd_data_check(args)
    if args.path:
        raise ConfigError(f"'carlib data {args.data_command}' takes no path (did you mean 'carlib data check "
                          f"{args.path}'?)")
    if args.data_command == "where":
        print(embedded_data_dir(args.seed))
    elif args.out:
        from carlib.data.synthetic import generate_car_dataset  # deferred: OpenCV

        print(generate_car_dataset(args.out, n_train=args.n_train, n_test=args.n_test, seed=args.seed))
    else:
        print(ensure_embedded_data(args.seed))
    return 0


def _cmd_weights(args: argparse.Namespace) -> int:
    """``carlib weights``: what is cached; ``carlib weights add FILE``: put a keras.applications file in Keras' cache."""
    from carlib.models.pretrained import cached_weights  # deferred: TensorFlow (Keras says where its cache is)

    if args.weights_command == "add":
        if not args.file:
            raise ConfigError("carlib weights add needs the file: carlib weights add efficientnetb0_notop.h5")
        from carlib.models.pretrained import add_keras_weights_file  # deferred: TensorFlow
        from carlib.models.registry import keras_weights_requests  # deferred: TensorFlow

        request = add_keras_weights_file(args.file, keras_weights_requests())
        print(f"added {request.file_name} for {request.backbone}: {request.path}")
        return 0
    if args.file:
        raise ConfigError(f"'carlib weights {args.weights_command}' takes no file (did you mean 'carlib weights add "
                          f"{args.file}'?)")
    rows = cached_weights()
    if not rows:
        print("no cached weights (carlib converts an efficientnet_lite0/1/2 backbone's on its first run; Keras downloads its own)")
    for row in rows:
        print(f"{row['cache']:<7}{row['mb']:>7.1f} MB  {row['path']}")
    return 0


def _cmd_data_check(args: argparse.Namespace) -> int:
    """``carlib data check PATH``: the report; exit status 0 when training can go on, 1 when not."""
    from carlib.data.check import check_dataset, report_json  # deferred: PIL

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)  # the report itself names every file
        report = check_dataset(args.path)
    print(report_json(report) if args.json else report.to_text())
    return 0 if report.usable else 1


def _cmd_bench(args: argparse.Namespace) -> int:
    """``carlib bench``: run the measurements, print a table (or JSON lines) as figures arrive."""
    # deferred: TensorFlow
    from carlib.bench.machine import machine_context
    from carlib.bench.speed import MEASUREMENTS, format_table, run_benchmarks

    common = machine_context()
    if args.data_dir:
        common["data_dir"] = str(args.data_dir)
    printed = []

    def show(new) -> None:
        printed.extend(new)
        if args.json:
            for figure in new:
                print(json.dumps(figure.as_dict(common)), flush=True)
        else:
            print(f"[{', '.join(f.figure for f in new[:3])}{', …' if len(new) > 3 else ''} measured]",
                  file=sys.stderr, flush=True)

    run_benchmarks(args.measurements or list(MEASUREMENTS), data_dir=args.data_dir, image_size=args.image_size,
                   batch_size=args.batch_size, presets=args.presets, oldway_preset=args.oldway_preset,
                   transforms_preset=args.transforms_preset, feed_backbone=args.feed_backbone,
                   feed_preset=args.feed_preset, rounds=args.rounds, limit=args.limit, notebook=args.notebook,
                   harness_rounds=args.harness_rounds, harness_epochs=args.harness_epochs, on_figures=show)
    if not args.json:
        print(f"carlib bench — {common['date']}, {common['cpus']} CPUs, {common['gpus']} GPUs, "
              f"TensorFlow {common['tensorflow']}, image size {args.image_size}, batch {args.batch_size}")
        print(format_table(printed))
    return 0


def _print_figures(figures: list[dict], as_json: bool, format_table_of) -> None:
    """A benchmark's figures on stdout: one JSON object per line (like `carlib bench --json`) or its table."""
    if as_json:
        for figure in figures:
            print(json.dumps(figure))
    else:
        print(format_table_of(figures))


def _cmd_bench_recipe(args: argparse.Namespace) -> int:
    """``carlib bench recipe``: the CPU recipe against a plain Keras CNN; the table or JSON lines."""
    from carlib.bench.recipe import format_figures, recipe_benchmark  # deferred: TensorFlow

    recipe = load_params_file(args.params) if args.params else None
    # With --json, stdout carries only the figures: the recipe runs' epoch lines go to stderr.
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        pretrained = False if args.no_pretrained else (load_params_file(args.pretrained_params)
                                                       if args.pretrained_params else None)
        figures = recipe_benchmark(args.data_dir, seeds=args.seeds, seed=args.seed, recipe=recipe,
                                   pretrained=pretrained,
                                   baseline_epochs=args.baseline_epochs, baseline_image_size=args.baseline_image_size,
                                   test_split=args.test_split, results_dir=args.results_dir, verbose=not args.json)
    _print_figures(figures, args.json, format_figures)
    return 0


def _cmd_bench_sweep(args: argparse.Namespace) -> int:
    """``carlib bench sweep``: each engine's cost per trial and the speed-up of two workers; a table or JSON lines."""
    from carlib.bench.sweep import format_sweep_figures, sweep_benchmark  # deferred: TensorFlow, Ray

    say = (lambda text: None) if args.json else (lambda text: print(f"carlib bench sweep: {text}", file=sys.stderr,
                                                                    flush=True))
    figures = sweep_benchmark(args.data_dir, trials=args.trials, image_size=args.image_size, epochs=args.epochs,
                              rounds=args.rounds, say=say)
    _print_figures(figures, args.json, format_sweep_figures)
    return 0


def _cmd_bench_verdicts(args: argparse.Namespace) -> int:
    """``carlib bench verdicts``: false-verdict rate and power of the verdict code on simulated studies."""
    from carlib.bench import verdicts  # deferred: scipy

    common = {"date": datetime.date.today().isoformat()}

    def show(cell, figure: str = "verdicts") -> None:
        if args.json:
            print(json.dumps({"figure": figure, **cell.as_dict(), **common}), flush=True)

    simulations = args.simulations if args.simulations is not None else (10000 if args.sequential else 2000)
    if args.sequential:
        if args.n is not None:
            raise ConfigError("--n is the fixed number of seeds; with --sequential a study reads after every seed up "
                              "to --max-seeds.")
        cells = verdicts.simulate_sequential(args.k or verdicts.SEQUENTIAL_KS, args.rho or verdicts.SEQUENTIAL_RHOS,
                                             args.noise, simulations=simulations,
                                             max_seeds=args.max_seeds, seed=args.seed, on_cell=show)
        spent = verdicts.simulate_seeds_spent(simulations=simulations, max_seeds=args.max_seeds,
                                              seed=args.seed)
        for row in spent:
            show(row, "seeds_spent")
        if not args.json:
            print(f"carlib bench verdicts --sequential — {simulations} simulated studies per cell and "
                  f"scenario, read after every seed up to {args.max_seeds} (a run's score has unit standard deviation; "
                  "heavy: 10 % of runs collapse by 10 sd)")
            print(verdicts.format_sequential(cells, spent))
        return 0
    cells = verdicts.simulate_verdicts(args.k or verdicts.KS, args.n or verdicts.NS, args.rho or verdicts.RHOS,
                                       simulations=simulations, seed=args.seed, on_cell=show)
    if not args.json:
        print(f"carlib bench verdicts — {simulations} simulated studies per cell and scenario; a run's "
              "score has unit standard deviation, a share rho of it shared by the runs of one seed")
        print(verdicts.format_cells(cells))
    return 0


# ------------------------------------------------------------------------------- help
# Options whose value is a file or folder (their type reads "path" in --help).
_PATH_DESTS = {"results_dir", "data_dir", "out", "params", "model", "paths", "sweep_file", "path", "notebooks",
               "classes"}
_OWN_DEFAULT = re.compile(r"\s*\(default: ((?:[^()]|\([^()]*\))*)\)")


def _describe(action: argparse.Action, *, kind: str | None = None, default: str | None = None,
              choices: Sequence[str] | None = None) -> argparse.Action:
    """Tell the help what argparse cannot know: the type in words, the default shown, the allowed values."""
    action.carlib_help = {"kind": kind, "default": default, "choices": tuple(choices) if choices else None}
    return action


def _shown(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) if value else "empty"
    return str(value)


def _option_help(action: argparse.Action) -> str:
    """One option's help: its meaning, then ``(type; default: X; one of: …)`` (or ``(type; required)``).

    The type comes from the option (``type=int``: integer, a switch, a path, …) unless :func:`_describe`
    gave it; the default from a ``(default: …)`` the help itself writes in words, else the option's
    default; the allowed values from its ``choices``. The result is argparse's format text (``%%``).
    """
    given = getattr(action, "carlib_help", {})
    text = action.help or ""
    own = _OWN_DEFAULT.search(text)
    if own:
        text = (text[:own.start()] + text[own.end():]).strip()
    kind = given.get("kind")
    if kind is None:
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            kind = "switch"
        else:
            kind = {int: "integer", float: "number"}.get(action.type) or \
                ("path" if action.dest in _PATH_DESTS else "name" if action.choices else "text")
            plural = "values" if kind == "text" else f"{kind}s"
            if action.nargs == "+":
                kind = f"one or more {plural}"
            elif action.nargs == "*":
                kind = f"any number of {plural}"
    if given.get("default") is not None:
        default = given["default"].replace("%", "%%")
    elif own:
        default = own.group(1)
    elif not action.option_strings and action.nargs not in ("?", "*"):
        default = None  # a required positional argument
    else:
        default = _shown(action.default).replace("%", "%%")
    choices = given.get("choices") or (tuple(map(str, action.choices)) if action.choices else None)
    facts = [kind, f"default: {default}" if default is not None else "required"]
    if choices:
        facts.append("one of: " + ", ".join(choices).replace("%", "%%"))
    return f"{text} ({'; '.join(facts)})".strip()


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its type, default and allowed values (:func:`_option_help`)."""

    def _get_help_string(self, action):
        if action.help is argparse.SUPPRESS or not _is_option(action):
            return action.help
        return _option_help(action)


def _is_option(action: argparse.Action) -> bool:
    """An option or argument the user gives (not --help, nor the list of sub-commands)."""
    return not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction,
                                   argparse._SubParsersAction._ChoicesPseudoAction))


def _explained(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``parser`` and each of its sub-command parsers, with :class:`_HelpFormatter`."""
    parser.formatter_class = _HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                _explained(subparser)
    return parser


@dataclasses.dataclass(frozen=True)
class ParameterHelp:
    """What one parameter is: its type in words, its default, its allowed values (if a list) and its meaning."""

    name: str
    type: str
    default: Any
    choices: tuple[str, ...] | None
    help: str


_CONFIG_FIELDS = {field.name: field for field in dataclasses.fields(ExperimentConfig)}


def _type_words(annotation: Any) -> str:
    """A field's type as ``--help`` says it: ``integer``, ``number or None``, ``integers, comma-separated``…"""
    args = typing.get_args(annotation)
    optional = type(None) in args
    if optional:
        annotation = next(a for a in args if a is not type(None))
    if typing.get_origin(annotation) is tuple:
        words = "integers, comma-separated"
    else:
        words = {int: "integer", float: "number", str: "text", bool: "true/false"}[annotation]
    return f"{words} or None" if optional else words


def parameter_help(name: str) -> ParameterHelp:
    """The description of parameter ``name``, from the config field that defines it (``carlib run``'s flags)."""
    field = _CONFIG_FIELDS[name]
    return ParameterHelp(name, _type_words(typing.get_type_hints(ExperimentConfig)[name]), field.default,
                         allowed_values(name), field.metadata["help"])


# ------------------------------------------------------------------------------- parsers
_METAVARS = {"integer": "INT", "number": "NUMBER", "text": "TEXT", "true/false": "BOOL",
             "integers, comma-separated": "INT,INT,…"}


def _parameter_flag_help(name: str) -> tuple[str, str, dict]:
    """The metavar, meaning and help facts of a ``carlib run`` parameter flag, from the config's own definition."""
    described = parameter_help(name)
    base = described.type.removesuffix(" or None")
    metavar = "PATH" if name in _PATH_DESTS else "NAME" if described.choices else _METAVARS[base]
    return metavar, described.help.replace("%", "%%"), {"kind": described.type,
                                                         "default": _config_value(described.default),
                                                         "choices": described.choices}


def _config_value(value) -> str:
    """A config default as a flag or a YAML file would spell it."""
    if value is None:
        return "None"
    if isinstance(value, bool):
        return "true" if value else "false"
    return _shown(value)


def _add_run_parser(sub, *, with_parameters: bool) -> None:
    run = sub.add_parser("run", help="train and evaluate one configuration over --seeds seeds")
    run.add_argument("--params", default=None, metavar="FILE", help="YAML file of parameters; flags override it")
    if not with_parameters:  # built only for `carlib run`: listing presets imports albumentations
        return
    for name in PARAMETER_NAMES:
        metavar, text, facts = _parameter_flag_help(name)
        _describe(run.add_argument("--" + name.replace("_", "-"), dest=name, default=None, metavar=metavar,
                                   help=text), **facts)
    _describe(run.add_argument("--seeds", default=None, metavar="INT", help="runs of the configuration: seed, seed+1, …"),
              kind="integer", default="1")


def _add_bench_parsers(sub) -> None:
    bench = sub.add_parser("bench", help="speed figures: decode limit, pipeline per preset, old way, transforms, "
                                         "feed ratio, harness overhead; `carlib bench recipe`: the CPU recipe "
                                         "against a plain Keras CNN; `carlib bench verdicts`: the statistics on "
                                         "simulated studies; `carlib bench sweep`: the sweep engines' cost per trial")
    bench.add_argument("measurements", nargs="*", metavar="MEASUREMENT",
                       help="any of decode, pipeline, oldway, transforms, feed, harness (default: all)")
    bench.add_argument("--data-dir", default=None, help="the dataset to measure on (default: the embedded dataset)")
    bench.add_argument("--json", action="store_true",
                       help='one JSON object per line per figure: {"figure", "value", "unit", ...context}')
    bench.add_argument("--image-size", type=int, default=128, help="image size of every measurement (pixels)")
    bench.add_argument("--batch-size", type=int, default=32, help="batch size of every measurement")
    bench.add_argument("--presets", nargs="+", default=["none", "light", "medium", "heavy"],
                       help="augmentation presets for the pipeline figures")
    bench.add_argument("--oldway-preset", default="medium", help="augmentations of the old-way comparison")
    bench.add_argument("--transforms-preset", default="heavy", help="the preset whose transforms are timed alone")
    bench.add_argument("--feed-backbone", default="mobilenet_v3_small", help="feed ratio: the backbone being fed")
    bench.add_argument("--feed-preset", default="light", help="feed ratio: the augmentation preset of the pipeline")
    bench.add_argument("--rounds", type=int, default=3, help="interleaved rounds per comparison (median)")
    bench.add_argument("--limit", type=int, default=None, help="at most this many training images (stratified) "
                       "(default: every image)")
    bench.add_argument("--notebook", default=None, help="harness: the study notebook (default: backbone_study)")
    bench.add_argument("--harness-rounds", type=int, default=2, help="harness: rounds (each runs the study twice)")
    bench.add_argument("--harness-epochs", type=int, default=None,
                       help="harness: epochs of the study trial (default: the backbone study's quick preset)")


def _bench_recipe_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="carlib bench recipe", description="The CPU recipe "
                                     "(params/cpu_recipe/recipe.yaml) against a plain Keras CNN, and the pretrained "
                                     "recipe (params/cpu_recipe/pretrained.yaml) against it, on one dataset.",
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--data-dir", default=None, help="dataset: competition layout or class folders "
                        "(default: the embedded dataset)")
    parser.add_argument("--seeds", type=int, default=1, help="runs of each arm (seed, seed+1, ...); 2+ for a verdict")
    parser.add_argument("--seed", type=int, default=None,
                        help="first seed (default: the first after the seeds that chose the recipe, never those)")
    parser.add_argument("--params", default=None,
                        help="YAML preset of the recipe arm (default: params/cpu_recipe/recipe.yaml)")
    parser.add_argument("--pretrained-params", default=None,
                        help="YAML preset of the pretrained arm (default: params/cpu_recipe/pretrained.yaml)")
    parser.add_argument("--no-pretrained", action="store_true",
                        help="leave out the pretrained arm (params/cpu_recipe/pretrained.yaml: EfficientNet-Lite1 from ImageNet; needs carlib[pretrained])")
    parser.add_argument("--baseline-epochs", type=int, default=50, help="epochs of the plain Keras CNN")
    parser.add_argument("--baseline-image-size", type=int, default=96, help="image size of the plain Keras CNN (pixels)")
    parser.add_argument("--test-split", type=float, default=0.2, help="share held out as the test set when the "
                        "dataset has no labelled test images (a test/ folder or test-answers.csv)")
    parser.add_argument("--results-dir", default=None, help="where the recipe's runs are recorded "
                        "(default: $CARLIB_RESULTS_DIR or ./results)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line per figure")
    return parser


def _bench_sweep_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="carlib bench sweep", description="What each sweep engine (local, ray) adds "
                                     "to the same tiny trials, and the speed-up of two workers over one.",
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--data-dir", default=None, help="dataset (default: a synthetic one of 80 training images)")
    parser.add_argument("--trials", type=int, default=4, help="trials per sweep")
    parser.add_argument("--image-size", type=int, default=32, help="image size of the tiny trials (pixels)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of the tiny trials")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of the four sweeps (median)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line per figure")
    return parser


def _bench_verdicts_parser() -> argparse.ArgumentParser:
    from carlib.bench.verdicts import KS, NOISES, NS, RHOS, SEQUENTIAL_KS, SEQUENTIAL_RHOS  # deferred: scipy

    parser = argparse.ArgumentParser(prog="carlib bench verdicts", description="The verdict code on simulated "
                                     "studies: false verdicts under A/A and power at a +1 sd effect.",
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--sequential", action="store_true",
                        help="studies read after every seed and stopped at the first decision (--until-decisive), "
                             "with heavy-tailed noise and the seeds they spend")
    parser.add_argument("--simulations", type=int, default=None,
                        help="studies per cell and scenario (default: 2000; 10000 with --sequential)")
    parser.add_argument("--k", type=int, nargs="+", default=None,
                        help=f"configurations per study (default: {' '.join(map(str, KS))}; with --sequential "
                             f"{' '.join(map(str, SEQUENTIAL_KS))})")
    parser.add_argument("--n", type=int, nargs="+", default=None,
                        help=f"seeds per configuration (default: {' '.join(map(str, NS))}; not with --sequential)")
    parser.add_argument("--rho", type=float, nargs="+", default=None,
                        help=f"same-seed correlation (default: {' '.join(map(str, RHOS))}; with --sequential "
                             f"{' '.join(map(str, SEQUENTIAL_RHOS))})")
    parser.add_argument("--noise", nargs="+", choices=NOISES, default=list(NOISES),
                        help="with --sequential: normal runs, or heavy tails (10 %% of runs collapse)")
    parser.add_argument("--max-seeds", type=int, default=20, help="with --sequential: the most seeds a study reads")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulation")
    parser.add_argument("--json", action="store_true", help="one JSON object per line per cell")
    return parser


def _add_export_parser(sub) -> None:
    export = sub.add_parser("export", help="write a trained model for deployment (SavedModel or TFLite) with its "
                                           "class names")
    export.add_argument("model", help="a .keras file, or a run folder (a final run's folder uses last.keras)")
    export.add_argument("--format", choices=("saved_model", "tflite"), default="saved_model",
                        help="SavedModel folder (TensorFlow, TF Serving) or .tflite file (TFLite / LiteRT)")
    export.add_argument("--out", default=None, help="the SavedModel folder, or the .tflite file (a folder gets "
                                                    "model.tflite) (default: <model folder>/export/<model name>/"
                                                    "saved_model or …/model.tflite)")
    export.add_argument("--classes", default=None,
                        help="class names for a model saved without them: classes.json, labels.txt or the training "
                             "data folder (default: the model's own)")


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="carlib", description="Train and compare image classifiers.")
    sub = parser.add_subparsers(dest="command", required=True)

    results = sub.add_parser("results", help="print the combined results table; 'carlib results export --mlflow URI' "
                                             "copies the store into MLflow")
    results.add_argument("action", nargs="?", choices=("export",), default=None,
                         help="export: copy every record not yet exported into MLflow (with --mlflow) "
                              "(default: none: print the table)")
    results.add_argument("--mlflow", default=None, metavar="TRACKING_URI",
                         help="export: the MLflow tracking URI: sqlite:///mlflow.db, file:///path/mlruns or a "
                              "tracking server (pip install \"carlib[mlflow]\")")
    results.add_argument("--results-dir", action="append", default=None,
                         help=_RESULTS_DIR_HELP + "; repeat it to read several stores as one (a sharded sweep's)")
    results.add_argument("--study", default=None, help="only runs of this study (default: every study)")
    results.add_argument("--format", choices=("table", "csv", "markdown"), default="table", help="output format")
    results.add_argument("--summary", action="store_true",
                         help="per configuration of the study: runs, failures, mean, std and 95%% CI of its primary "
                              "metric across seeds, and the verdict with a seed plan")
    results.add_argument("--min-effect", type=float, default=0.01,
                         help="--summary: the difference the seed plan is sized for (default: 0.01, one point of "
                              "accuracy)")
    results.add_argument("--aggregate", choices=_AGGREGATES, default="mean", help=_AGGREGATE_HELP)
    results.add_argument("--columns", nargs="+", default=None,
                         help="only these columns (default: the leading ones; every one with --all-columns)")
    results.add_argument("--all-columns", action="store_true",
                         help="the table format shows every column (csv and markdown always do)")

    _add_run_parser(sub, with_parameters=command == "run")

    sweep = sub.add_parser("sweep", help="run a study grid x seeds through papermill (resumable)")
    sweep.add_argument("sweep_file", help="YAML: notebook, study, base, grid, seeds (params/<study>/sweep-*.yaml)")
    sweep.add_argument("--results-dir", default=None, help=_RESULTS_DIR_HELP)
    sweep.add_argument("--data-dir", default=None,
                       help="the dataset every trial trains on, in place of the sweep file's data_dir (default: the "
                            "sweep file's, else the embedded dataset)")
    sweep.add_argument("--engine", default="local",
                       help="local: processes of this machine (default); ray: one Ray task per trial, on a private "
                            "Ray instance or the cluster at --address (pip install \"carlib[ray]\")")
    sweep.add_argument("--address", default=None,
                       help="ray: the cluster to join (auto, or ray://HOST:10001); default: a private instance here")
    sweep.add_argument("--workers", type=int, default=None,
                       help="trials run at once (local: default 1; ray: default as many as the cluster has room for)")
    sweep.add_argument("--gpus", default=None,
                       help="local: comma-separated GPU ids shared out to the workers (CUDA_VISIBLE_DEVICES) "
                            "(default: the machine's)")
    sweep.add_argument("--gpus-per-trial", type=float, default=None,
                       help="GPUs each trial gets: 1 (default where there are GPUs), 0 (CPU only), a fraction such as "
                            "0.5 (two trials share a GPU, memory growth on) or 2+ (a mirrored strategy)")
    sweep.add_argument("--cpus-per-trial", type=float, default=1, help="ray: CPUs each trial reserves")
    sweep.add_argument("--retries", type=int, default=1,
                       help="times a trial whose process, kernel or Ray worker died is run again; "
                            "an error inside the trial is recorded, not retried")
    sweep.add_argument("--shard", default=None,
                       help="i/n: run only this machine's share of the trials (1-based); auto: from a Slurm job array "
                            "or a Kubernetes Indexed Job (default: every trial)")
    sweep.add_argument("--kernel", default="python3",
                       help="Jupyter kernel for papermill (-k); default python3, this environment's own kernel")
    sweep.add_argument("--dry-run", action="store_true",
                       help="list this shard's trials (finished ones marked) and exit; runs nothing")
    sweep.add_argument("--no-progress", action="store_true", help="no progress bar")
    sweep.add_argument("--until-decisive", action="store_true",
                       help="run seeds in rounds, reading an anytime-valid verdict after each, until the best beats "
                            "each of the others, no difference is larger than --min-effect, or --max-seeds; "
                            "configurations decisively beaten leave early (the file's seeds are ignored)")
    sweep.add_argument("--max-seeds", type=int, default=None,
                       help="--until-decisive: the most seeds per configuration (default: 20)")
    sweep.add_argument("--min-effect", type=float, default=None,
                       help="--until-decisive: the smallest difference that matters; a study stops as equivalent "
                            "when every difference lies inside ±min-effect (default: 0.01, a point of accuracy)")

    predict = sub.add_parser("predict", help="predict photos (PATH…: one row per image), or write a validated "
                                             "submission CSV for a competition folder's test images")
    predict.add_argument("model", help="a .keras file, or a run folder (a final run's folder uses last.keras)")
    predict.add_argument("paths", nargs="*", metavar="PATH",
                         help="photos: image files or folders (searched recursively); no training folder or sample "
                              "submission needed (default: none: the submission of --data-dir)")
    predict.add_argument("--data-dir", default=None, help="competition folder (default: the embedded dataset)")
    predict.add_argument("--out", default=None, help="CSV to write; - for standard output (default: predictions.csv "
                                                     "for photos, submission.csv for --data-dir)")
    predict.add_argument("--top-k", type=int, default=1, metavar="K",
                         help="photos: the K most probable classes per image, each with its probability")
    predict.add_argument("--classes", default=None,
                         help="photos: class names for a model saved without them: classes.json, labels.txt or the "
                              "training data folder (default: the model's own)")
    predict.add_argument("--tta", type=int, default=0, metavar="N", help="TTA passes (0 or 1: none)")
    predict.add_argument("--tta-preset", default="light",
                         help="TTA preset: none, flip, light, medium, or a pipeline saved with albumentations.save")
    predict.add_argument("--tta-seed", type=int, default=0, help="seed of the TTA draws")
    predict.add_argument("--batch-size", type=int, default=32, help="images per batch")
    predict.add_argument("--image-size", type=int, default=None, help="test size (default: the model's; FixRes)")
    predict.add_argument("--fallback", default=None,
                         help="class for missing/unreadable images (default: the training set's most frequent)")

    _add_export_parser(sub)

    report = sub.add_parser("report", help="write one HTML report of a results store")
    report.add_argument("--results-dir", default=None, help=_RESULTS_DIR_HELP)
    report.add_argument("--out", default="build/report.html", help="where to write the report")
    report.add_argument("--notebooks", nargs="*", default=[], help="more folders of executed notebooks to include")
    report.add_argument("--aggregate", choices=_AGGREGATES, default="mean", help=_AGGREGATE_HELP)

    rerun = sub.add_parser("rerun", help="train a recorded run again (same config, seed and data) into the same "
                                         "store, and say figure by figure whether the numbers match")
    rerun.add_argument("run_id", help="the run to repeat (carlib results lists the ids)")
    rerun.add_argument("--results-dir", default=None, help=_RESULTS_DIR_HELP)
    rerun.add_argument("--tolerance", type=float, default=0.01,
                       help="a run without deterministic: each figure must lie within this x max(1, |figure|) "
                            "(with deterministic: true, figures must be equal)")

    _add_bench_parsers(sub)

    data = sub.add_parser("data", help="the embedded synthetic dataset; check a dataset before training")
    data.add_argument("data_command", choices=("generate", "where", "check"),
                      help="generate the embedded dataset, say where it is, or check a dataset")
    data.add_argument("path", nargs="?", default=None,
                      help="check: the dataset folder (default: the embedded dataset)")
    data.add_argument("--json", action="store_true", help="check: print the report as JSON")
    data.add_argument("--out", default=None, help="write a fresh copy here instead of the cache (default: the cache)")
    data.add_argument("--seed", type=int, default=0, help="seed of the synthetic dataset")
    data.add_argument("--n-train", type=int, default=1000, help="generate: training images")
    data.add_argument("--n-test", type=int, default=300, help="generate: test images")

    weights = sub.add_parser("weights", help="list the cached pretrained weights, or add a keras.applications weights "
                                             "file fetched on another machine (for machines without internet)")
    weights.add_argument("weights_command", nargs="?", choices=("list", "add"), default="list",
                         help="list what is cached (carlib's converted files and Keras' own), or add FILE")
    weights.add_argument("file", nargs="?", default=None,
                         help="add: the file Keras names in its error (e.g. efficientnetb0_notop.h5), with its own "
                              "name; it is checked against Keras' hash and copied into Keras' cache")
    return _explained(parser)


_COMMANDS = {"results": _cmd_results, "run": _cmd_run, "sweep": _cmd_sweep, "predict": _cmd_predict,
             "export": _cmd_export, "report": _cmd_report, "bench": _cmd_bench, "data": _cmd_data,
             "weights": _cmd_weights, "rerun": _cmd_rerun}


def _check_unknown_flags(parser: argparse.ArgumentParser, command: str, unknown: list[str]) -> None:
    """``carlib run`` suggests the parameter a misspelt flag meant; other commands leave it to argparse."""
    flags = [u.split("=")[0] for u in unknown if u.startswith("--")]
    if command != "run" or not flags:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    check_known({f[2:].replace("-", "_"): None for f in flags}, STUDY_PARAMETERS)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``carlib`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:2] == ["bench", "recipe"]:  # its own options: the recipe against a plain Keras CNN
            return _cmd_bench_recipe(_bench_recipe_parser().parse_args(argv[2:]))
        if argv[:2] == ["bench", "verdicts"]:  # its own options: the statistics on simulated studies
            return _cmd_bench_verdicts(_bench_verdicts_parser().parse_args(argv[2:]))
        if argv[:2] == ["bench", "sweep"]:  # its own options: the sweep engines' cost per trial
            return _cmd_bench_sweep(_bench_sweep_parser().parse_args(argv[2:]))
        command = next((a for a in argv if not a.startswith("-")), None)
        parser = _parser(command)
        args, unknown = parser.parse_known_args(argv)
        if unknown and isinstance(getattr(args, "paths", None), list) and not any(u.startswith("-") for u in unknown):
            args.paths, unknown = [*args.paths, *unknown], []  # photos after other flags (argparse stops at them)
        if unknown:
            _check_unknown_flags(parser, args.command, unknown)
        return _COMMANDS[args.command](args)
    except CarlibError as err:
        print(error_line(err), file=sys.stderr, flush=True)
        return 2


def error_line(err: BaseException) -> str:
    """``carlib: error: <message>`` on one line (a message's line breaks become spaces); print adds the newline."""
    message = re.sub(r"\s*\n\s*", " ", str(err).strip())
    return f"carlib: error: {message or type(err).__name__}"
