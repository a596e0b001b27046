"""The ``carlib`` command: results tables, parameter errors before training, data location.

No model is trained here: stores are filled by writing records directly, and ``run`` is
only exercised up to validation (or with the experiment function replaced by a stub).
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from carlib.cli import main, parameter_help
from carlib.config import PARAMETER_NAMES, ExperimentConfig
from carlib.errors import ConfigError
from carlib.records.record import new_run_id
from carlib.records.store import ResultsStore
from carlib.studies.parameters import load_params_file


def write_record(store: ResultsStore, *, study="lr_study", lr=0.001, schedule="constant", seed=0, acc=0.5,
                 status="ok", started_at="2024-01-01T00:00:00+00:00"):
    run_id = new_run_id(study)
    config = {**ExperimentConfig().to_dict(), "study": study, "lr": lr, "schedule": schedule, "seed": seed,
              "image_size": 64}
    store.write({
        "run_id": run_id, "study": study, "status": status, "started_at": started_at, "config": config,
        "metrics": {"test_accuracy_best": acc, "test_accuracy_last": acc - 0.05, "val_accuracy_best": acc + 0.02,
                    "val_accuracy_last": acc - 0.1, "best_epoch": 3},
    })
    return run_id


@pytest.fixture
def store(results_dir):
    """Two studies: lr_study with 2 configurations x 3 seeds, and one run of another study."""
    s = ResultsStore(results_dir)
    ids = []
    for lr, schedule, accs in ((0.001, "constant", (0.5, 0.6, 0.7)), (0.01, "cosine", (0.8, 0.8, 0.8))):
        for seed, acc in enumerate(accs):
            ids.append(write_record(s, lr=lr, schedule=schedule, seed=seed, acc=acc))
    ids.append(write_record(s, study="other", lr=0.1, acc=0.2))
    s.ids = ids
    return s


# ------------------------------------------------------------------------ results
def test_results_table_lists_every_run(store, capsys):
    assert main(["results", "--results-dir", str(store.root)]) == 0
    out = capsys.readouterr().out
    for run_id in store.ids:
        assert run_id in out
    header = out.splitlines()[0].split()
    assert header[:4] == ["run_id", "study", "status", "backbone"]
    assert "val_accuracy_best" in header and "run_dir" not in header  # compact by default
    assert "lr" in header
    assert len(out.strip().splitlines()) == 1 + len(store.ids)


def test_results_all_columns_shows_every_field(store, capsys):
    assert main(["results", "--results-dir", str(store.root), "--all-columns"]) == 0
    header = capsys.readouterr().out.splitlines()[0].split()
    assert {"started_at", "run_dir", "lr_factor", "optimizer"} <= set(header)


def test_run_misspelt_flag_suggests_the_right_one(capsys):
    assert main(["run", "--learning-rate", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "unknown parameter 'learning_rate'" in err and "'lr'" in err


def test_results_csv_parses_back(store, capsys):
    assert main(["results", "--results-dir", str(store.root), "--format", "csv", "--study", "lr_study"]) == 0
    frame = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert len(frame) == 6
    assert set(frame["run_id"]) == set(store.ids[:6])
    assert frame["lr"].dtype == float
    assert sorted(frame["lr"].unique()) == [0.001, 0.01]
    assert (frame.loc[frame["schedule"] == "constant", "lr"] == 0.001).all()
    assert set(frame["study"]) == {"lr_study"}


def test_results_csv_single_lr(results_dir, capsys):
    s = ResultsStore(results_dir)
    for seed in range(3):
        write_record(s, seed=seed)
    assert main(["results", "--results-dir", str(results_dir), "--format", "csv"]) == 0
    frame = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert len(frame) == 3
    assert (frame["lr"] == 0.001).all()


def test_results_markdown(store, capsys):
    assert main(["results", "--results-dir", str(store.root), "--format", "markdown", "--columns", "run_id", "lr"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("|") and "run_id" in lines[0] and "lr" in lines[0]
    assert set(lines[1]) <= set("|:- ")  # the separator row
    assert len(lines) == 2 + len(store.ids)
    assert all(line.startswith("|") and line.endswith("|") for line in lines)


def test_results_columns(store, capsys):
    assert main(["results", "--results-dir", str(store.root), "--format", "csv", "--columns", "run_id", "lr"]) == 0
    frame = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert list(frame.columns) == ["run_id", "lr"]


def test_results_unknown_column(store, capsys):
    assert main(["results", "--results-dir", str(store.root), "--columns", "run_id", "accuracy"]) == 2
    err = capsys.readouterr().err
    assert "accuracy" in err and "available" in err and "val_accuracy_best" in err


def test_results_summary_groups_by_scientific_parameters(store, capsys):
    assert main(["results", "--results-dir", str(store.root), "--study", "lr_study", "--summary"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    for column in ("lr", "schedule", "n", "mean", "std"):
        assert column in header
    assert "cosine" in out and "constant" in out

    assert main(["results", "--results-dir", str(store.root), "--study", "lr_study", "--summary",
                 "--format", "csv"]) == 0
    summary = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert list(summary["lr"]) == [0.01, 0.001]  # best first
    assert list(summary["schedule"]) == ["cosine", "constant"]
    assert list(summary["n"]) == [3, 3]
    assert summary["mean"].tolist() == pytest.approx([0.8, 0.6])
    assert summary["std"].tolist() == pytest.approx([0.0, 0.1])


def test_summary_without_study_exits_2(store, capsys):
    assert main(["results", "--results-dir", str(store.root), "--summary"]) == 2
    captured = capsys.readouterr()
    assert "--summary needs --study" in captured.err
    assert "lr_study" in captured.err
    assert captured.out == ""


def test_summary_of_unknown_study_exits_2(store, capsys):
    assert main(["results", "--results-dir", str(store.root), "--study", "nope", "--summary"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("carlib: error:")
    assert "'nope'" in err and "lr_study" in err


def test_empty_store_says_no_runs(tmp_path, capsys):
    assert main(["results", "--results-dir", str(tmp_path / "empty")]) == 0
    assert "no runs" in capsys.readouterr().out


def test_results_default_store_is_environment(store, monkeypatch, capsys):
    monkeypatch.setenv("CARLIB_RESULTS_DIR", str(store.root))
    assert main(["results", "--format", "csv"]) == 0
    assert len(pd.read_csv(io.StringIO(capsys.readouterr().out))) == len(store.ids)


def test_bad_format_is_an_argparse_error(store, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["results", "--results-dir", str(store.root), "--format", "xml"])
    assert exit_info.value.code == 2
    assert "xml" in capsys.readouterr().err


def test_python_dash_m_carlib(store):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-m", "carlib", "results", "--results-dir", str(store.root),
                           "--format", "csv", "--study", "lr_study"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    frame = pd.read_csv(io.StringIO(proc.stdout))
    assert len(frame) == 6
    assert set(frame["run_id"]) == set(store.ids[:6])
    assert (frame["lr"] == 0.001).sum() == 3


# ---------------------------------------------------------------------------- run
@pytest.fixture
def no_training(monkeypatch):
    """Replace the experiment function: any call is recorded, and training never starts."""
    import carlib.train.experiment

    calls = []

    def fake_run_experiment(config):
        calls.append(config)
        return {"run_id": f"fake-{len(calls)}", "status": getattr(fake_run_experiment, "status", "ok")}

    monkeypatch.setattr(carlib.train.experiment, "run_experiment", fake_run_experiment)
    fake_run_experiment.calls = calls
    return fake_run_experiment


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["--lr", "-1"], "lr"),
        (["--lr=0"], "lr"),
        (["--lr", "abc"], "lr"),
        (["--backbone", "nope"], "backbone"),
        (["--val-split", "1"], "val_split"),
        (["--epochs", "0"], "epochs"),
        (["--image-size", "12.5"], "image_size"),
        (["--schedule", "exp"], "schedule"),
        (["--seeds", "0"], "seeds"),
        (["--data-dir", "/definitely/not/here", "--weights", "/no/such.weights.h5"], "weights"),
    ],
)
def test_run_with_bad_parameter_exits_2_before_training(argv, name, no_training, capsys):
    assert main(["run", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("carlib: error:")
    assert name in captured.err
    assert "Traceback" not in captured.err
    assert no_training.calls == []


def test_run_params_file_with_unknown_key(tmp_path, no_training, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("lr: 1e-3\nlearning_rate: 0.1\n")
    assert main(["run", "--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("carlib: error:")
    assert "'learning_rate'" in err and "'lr'" in err
    assert no_training.calls == []


def test_run_missing_params_file(tmp_path, no_training, capsys):
    assert main(["run", "--params", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert "carlib: error:" in err and "missing.yaml" in err and "does not exist" in err
    assert no_training.calls == []


def test_run_flags_override_params_file(tmp_path, no_training, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("study: lr_study\nlr: 1e-3\nepochs: 5\nlr_boundaries: [3, 6]\nschedule: step\nseeds: 2\n")
    assert main(["run", "--params", str(params), "--epochs", "2", "--seed", "4"]) == 0
    configs = no_training.calls
    assert [c.seed for c in configs] == [4, 5]
    assert all(isinstance(c, ExperimentConfig) for c in configs)
    assert {(c.study, c.lr, c.epochs, c.lr_boundaries, c.schedule) for c in configs} == {
        ("lr_study", 0.001, 2, (3, 6), "step")}


def test_run_exit_status_reflects_failed_runs(no_training):
    no_training.status = "failed"
    assert main(["run", "--epochs", "1"]) == 1
    assert len(no_training.calls) == 1
    assert no_training.calls[0].study == "adhoc"


# --------------------------------------------------------------- parameter files
def test_load_params_file_reads_yaml_preset(tmp_path):
    path = tmp_path / "preset.yaml"
    path.write_text("# a preset\nbackbone: xception\nlr: 1e-3\nimage_size: null\nseeds: 3\n")
    params = load_params_file(path)
    assert params == {"backbone": "xception", "lr": "1e-3", "image_size": None, "seeds": 3}
    seeds = params.pop("seeds")
    assert seeds == 3
    assert ExperimentConfig.from_dict(params).lr == 0.001


def test_load_params_file_accepts_empty_file(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n")
    assert load_params_file(path) == {}


@pytest.mark.parametrize("text", ["- lr\n- 0.1\n", "just a string\n", "42\n"])
def test_load_params_file_rejects_non_mapping(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="mapping"):
        load_params_file(path)


def test_load_params_file_rejects_invalid_yaml_and_unknown_keys(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("lr: [1e-3\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params_file(path)
    path.write_text("image_sise: 64\n")
    with pytest.raises(ConfigError, match="'image_size'"):
        load_params_file(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_params_file(tmp_path / "nope.yaml")


# ---------------------------------------------------------------------------- data
def test_data_where_prints_cache_path(capsys):
    assert main(["data", "where"]) == 0
    printed = Path(capsys.readouterr().out.strip())
    assert printed.is_relative_to(Path(os.environ["CARLIB_CACHE"]))

    assert main(["data", "where", "--seed", "7"]) == 0
    printed = Path(capsys.readouterr().out.strip())
    assert printed.is_relative_to(Path(os.environ["CARLIB_CACHE"]))
    assert "seed7" in printed.name
    assert not printed.exists()  # "where" only says where; it generates nothing


# ------------------------------------------------------------------- errors of every layer
@pytest.mark.parametrize("argv, says", [
    (["results", "--study", "nope", "--summary"], "unknown study 'nope'"),
    (["predict", "{tmp}/no-such-model.keras"], "does not exist"),
    (["sweep", "{tmp}/no-such-sweep.yaml"], "does not exist"),
    (["data", "where", "somewhere"], "takes no path"),
    (["run", "--augmentation", "{tmp}/not-a-pipeline.json", "--epochs", "1"], "not a pipeline saved with"),
    (["run", "--augmentation", "{{\"not\": \"albumentations\"}}"], "inline pipeline is not albumentations"),
    (["bench", "decod"], "unknown measurement(s) decod"),
])
def test_any_carlib_error_is_one_line_and_exit_2(argv, says, tmp_path, no_training, capsys):
    (tmp_path / "not-a-pipeline.json").write_text('{"transform": 42}')
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("carlib: error: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert says in err and "Traceback" not in err
    assert no_training.calls == []


# --------------------------------------------------------------------------- help
def _all_parsers():
    """(name, parser) for every carlib command (``carlib run`` with its parameter flags) and ``bench recipe``."""
    import argparse

    from carlib.cli import _bench_recipe_parser, _parser

    commands = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name in commands:
        sub = next(a for a in _parser(name)._actions if isinstance(a, argparse._SubParsersAction))
        yield name, sub.choices[name]
    yield "bench recipe", _bench_recipe_parser()


_HELP_LINE = re.compile(r"^(?P<meaning>\S.*) \((?P<kind>[^;()]+); (?:default: (?P<default>.+?)|required)"
                        r"(?:; one of: (?P<choices>.+))?\)$", re.S)


def test_every_config_field_has_a_one_line_description():
    for name in PARAMETER_NAMES:
        described = parameter_help(name)
        assert described.help.strip() and "\n" not in described.help, name
        assert described.type and (described.choices is None or len(described.choices) >= 2), name


def test_every_option_of_every_command_shows_its_type_default_and_meaning():
    from carlib.cli import _is_option, _option_help

    seen = set()
    for command, parser in _all_parsers():
        shown = "".join(parser.format_help().split())  # no spaces at all: argparse wraps lines at hyphens too
        usage = " ".join(parser.format_usage().split())
        for action in parser._actions:
            if not _is_option(action):
                continue
            text = _option_help(action).replace("%%", "%")
            match = _HELP_LINE.match(text)
            where = f"carlib {command} {'/'.join(action.option_strings) or action.dest}"
            assert match, f"{where}: {text!r}"
            assert len(match["meaning"].split()) >= 2, f"{where} has no meaning: {text!r}"
            assert "".join(text.split()) in shown, f"{where}: its help is not shown as {text!r}"
            if action.nargs != 0:  # an option that takes a value names it in the usage line
                metavar = action.metavar or (action.dest.upper() if action.option_strings else action.dest)
                assert action.choices or str(metavar) in usage, f"{where}: no metavar in {usage!r}"
            if action.choices:
                assert match["choices"], f"{where} does not list its allowed values"
            seen.add(command)
    assert {"results", "run", "sweep", "predict", "export", "report", "bench", "bench recipe", "data"} <= seen


def test_run_help_comes_from_the_config_definitions():
    from carlib.cli import _option_help

    run = dict(_all_parsers())["run"]
    flags = {a.dest: a for a in run._actions if a.dest in PARAMETER_NAMES}
    assert set(flags) == set(PARAMETER_NAMES)
    schedule = _option_help(flags["schedule"])
    assert schedule.startswith(parameter_help("schedule").help)
    assert schedule.endswith("(text; default: constant; one of: constant, step, plateau, cosine)")
    assert _option_help(flags["image_size"]).endswith("(integer or None; default: None)")
    assert _option_help(flags["deterministic"]).endswith("(true/false; default: false)")
    assert "default: 50%% and 75%%" not in _option_help(flags["lr_boundaries"])  # the meaning keeps its own words
    assert flags["lr"].metavar == "NUMBER" and flags["backbone"].metavar == "NAME" and flags["data_dir"].metavar == "PATH"


# ----------------------------------------------------------------- one error line
def test_an_error_message_with_line_breaks_still_prints_one_line(monkeypatch, capsys):
    import carlib.cli

    def broken(args):
        raise ConfigError("first line\n  second line\n")

    monkeypatch.setitem(carlib.cli._COMMANDS, "report", broken)
    assert main(["report"]) == 2
    assert capsys.readouterr().err == "carlib: error: first line second line\n"


def test_the_command_prints_one_error_line_ending_in_a_newline(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    for argv in (["predict", str(tmp_path / "none.keras"), str(tmp_path)], ["export", str(tmp_path / "none.keras")],
                 ["results", "--summary"]):
        proc = subprocess.run([sys.executable, "-m", "carlib", *argv], capture_output=True, text=True, timeout=120,
                              env=env)
        assert proc.returncode == 2, proc.stderr
        errors = [line for line in proc.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and errors[0].startswith("carlib: error: "), proc.stderr
        assert proc.stderr.endswith(errors[0] + "\n")
