"""`carlib rerun RUN_ID`: the recorded configuration trained again into the same store, marked as a rerun, its
figures compared one by one; what would make them differ is said before training."""

from __future__ import annotations

import json
import shutil

import pytest

import carlib
from carlib import cli
from carlib.cli import main
from carlib.data.fingerprint import data_fingerprint
from carlib.data.folders import prepare_data
from carlib.errors import MissingFileError
from carlib.records.record import environment_info
from carlib.records.store import ResultsStore
from carlib.train import rerun as rerun_module
from carlib.train.rerun import RERUN_TOLERANCE, compare_records, rerun_checks


def test_a_deterministic_run_reruns_to_exactly_the_same_figures(tiny_data_dir, results_dir, capsys):
    first = carlib.run_experiment(data_dir=str(tiny_data_dir), image_size=16, batch_size=16, epochs=2,
                                  augmentation="light", val_split=0.25, results_dir=str(results_dir),
                                  deterministic=True, study="lr_study", seed=3)
    assert first["data"]["fingerprint"] == data_fingerprint(tiny_data_dir)
    capsys.readouterr()
    assert main(["rerun", first["run_id"], "--results-dir", str(results_dir)]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith(("test_accuracy_best ", "history val_loss "))]
    assert len(lines) == 2 and all(line.split()[-2:] == ["+0", "yes"] for line in lines), out
    assert "figures match exactly (deterministic: on)" in out and "carlib rerun" not in out  # nothing to warn of
    records = {r["run_id"]: r for r in ResultsStore(results_dir).records()}
    (again,) = [r for r in records.values() if r["run_id"] != first["run_id"]]
    assert again["rerun_of"] == first["run_id"] and again["config"]["seed"] == 3
    assert again["rerun_check"] == {"tolerance": 0.0, "matched": True, "differing": [], "notes": []}
    for name in ("test_accuracy_best", "val_loss_best", "test_loss_last", "best_epoch"):
        assert again["metrics"][name] == first["metrics"][name], name
    assert [row["loss"] for row in again["history"]] == [row["loss"] for row in first["history"]]
    table = carlib.load_results(results_dir).set_index("run_id")
    assert table.loc[again["run_id"], "rerun_of"] == first["run_id"]


def _record(data_dir, **changes) -> dict:
    """A finished record as a run of this machine would write it (no training), of a prepared data folder."""
    record = {"run_id": "20261204T000000-lr_study-00000000", "study": "lr_study", "status": "ok",
              "config": {"data_dir": str(data_dir), "deterministic": False, "seed": 0},
              "data": {"fingerprint": data_fingerprint(data_dir)}, **environment_info()}
    record.update(changes)
    return record


@pytest.fixture
def data_copy(tiny_data_dir, tmp_path):
    """A copy of the tiny dataset that a test may change or delete, its archives extracted (as a run leaves it)."""
    return prepare_data(shutil.copytree(tiny_data_dir, tmp_path / "data")).root


def test_the_checks_before_training_name_what_changed(data_copy):
    assert rerun_checks(_record(data_copy)) == []
    record = _record(data_copy)
    record["versions"]["carlib"] = "0.0.1"
    (data_copy / "extra.jpg").write_bytes(b"x" * 10)
    notes = rerun_checks(record)
    assert any("has changed since the run (" in n and "files then" in n and "bytes then" in n for n in notes), notes
    assert any(n.startswith("carlib 0.0.1 made the run,") for n in notes), notes
    no_fingerprint = _record(data_copy, data={})
    assert any("no data fingerprint" in n for n in rerun_checks(no_fingerprint))


def test_a_gone_data_folder_fails_before_training(data_copy, results_dir, monkeypatch, capsys):
    record = _record(data_copy)
    ResultsStore(results_dir).write(record)
    shutil.rmtree(data_copy)
    monkeypatch.setattr(rerun_module, "run_experiment", lambda *a, **k: pytest.fail("trained without its data"))
    with pytest.raises(MissingFileError, match="which is gone; put the same files back there"):
        rerun_checks(record)
    assert main(["rerun", record["run_id"], "--results-dir", str(results_dir)]) == 2
    assert "carlib: error: run '20261204T000000-lr_study-00000000' read its data from" in capsys.readouterr().err
    assert main(["rerun", "nope", "--results-dir", str(results_dir)]) == 2
    assert f"no run 'nope' in the results store {str(results_dir)!r} (its latest runs: {record['run_id']})" in \
        capsys.readouterr().err


def test_without_determinism_figures_match_within_the_stated_tolerance():
    original = {"metrics": {"test_accuracy_best": 0.50, "test_loss_best": 2.0, "train_images_per_s": 100.0,
                            "checkpoint_monitor": "val_accuracy", "test_accuracy_tta": None},
                "history": [{"epoch": 1, "loss": 2.5, "epoch_time_s": 3.0}, {"epoch": 2, "loss": 2.0}]}
    rerun = {"metrics": {"test_accuracy_best": 0.505, "test_loss_best": 2.03, "train_images_per_s": 50.0,
                         "checkpoint_monitor": "val_accuracy", "test_accuracy_tta": None},
             "history": [{"epoch": 1, "loss": 2.5, "epoch_time_s": 9.0}, {"epoch": 2, "loss": 2.1}]}
    figures = {f.figure: f for f in compare_records(original, rerun, RERUN_TOLERANCE)}
    # timings and text are not figures; a loss of 2 may move by 0.02, an accuracy by 0.01
    assert set(figures) == {"test_accuracy_best", "test_loss_best", "history loss (2 epochs)"}
    assert figures["test_accuracy_best"].match and figures["test_accuracy_best"].difference == pytest.approx(0.005)
    assert not figures["test_loss_best"].match
    assert not figures["history loss (2 epochs)"].match
    assert figures["history loss (2 epochs)"].difference == pytest.approx(0.1)
    exact = {f.figure: f.match for f in compare_records(original, original, 0.0)}
    assert all(exact.values())
    shorter = compare_records(original, {**rerun, "history": rerun["history"][:1]}, RERUN_TOLERANCE)
    assert [f.match for f in shorter if f.figure.startswith("history")] == [False]
    assert cli._parser("rerun").parse_args(["rerun", "x"]).tolerance == RERUN_TOLERANCE


def test_the_rerun_record_says_when_figures_differ(tiny_data_dir, results_dir, monkeypatch, capsys):
    record = _record(prepare_data(tiny_data_dir).root, metrics={"test_accuracy_best": 0.9}, history=[])
    ResultsStore(results_dir).write(record)

    def fake_run(config, rerun_of):  # a rerun that scores less, written as run_experiment would
        again = {**record, "run_id": "20261204T000001-lr_study-00000001", "rerun_of": rerun_of, "config": config,
                 "metrics": {"test_accuracy_best": 0.5}}
        ResultsStore(results_dir).write(again)
        return again

    monkeypatch.setattr(rerun_module, "run_experiment", fake_run)
    assert main(["rerun", record["run_id"], "--results-dir", str(results_dir)]) == 1
    out = capsys.readouterr().out
    assert "1 of 1 figures differ beyond the rule (within 0.01 x max(1, |figure|) (deterministic: off" in out
    written = json.loads((results_dir / "records" / "20261204T000001-lr_study-00000001.json").read_text())
    assert written["rerun_check"]["matched"] is False and written["rerun_check"]["differing"] == ["test_accuracy_best"]
    assert written["config"]["results_dir"] == str(results_dir) and written["config"]["trial_id"] is None
