"""`carlib results export --mlflow URI`: every record becomes one MLflow run (config as params, figures and history
as metrics, files as artifacts), a study's summary and verdict a parent run; exporting again adds nothing twice.
Checked with MLflow's own client, on records of real tiny runs."""

from __future__ import annotations

import shutil

import pytest

import carlib
from carlib.cli import main
from carlib.records.record import new_record, new_run_id, utc_now
from carlib.records.store import ResultsStore

mlflow = pytest.importorskip("mlflow", reason="the export tests need the mlflow extra: pip install -e '.[mlflow]'")
from mlflow.tracking import MlflowClient  # noqa: E402


@pytest.fixture(scope="module")
def demo_store(tiny_data_dir, tmp_path_factory):
    """lr_study: real tiny runs (lr 1e-3 on seeds 0 and 1, 3e-3 on seed 0), one failed run, and an ad-hoc run."""
    results = tmp_path_factory.mktemp("store") / "results"
    params = dict(data_dir=str(tiny_data_dir), image_size=16, batch_size=16, epochs=2, augmentation="none",
                  val_split=0.25, results_dir=str(results))
    for lr, seeds in ((1e-3, 2), (3e-3, 1)):
        carlib.run_study("lr_study", seeds=seeds, lr=lr, **params)
    store = ResultsStore(results)
    config = {**store.records()[0]["config"], "lr": 0.1, "seed": 0}
    store.write(new_record(run_id=new_run_id("lr_study"), study="lr_study", config=config, started_at=utc_now(),
                           status="failed", metrics={}, error="training diverged", finished_at=utc_now()))
    store.write(new_record(run_id=new_run_id("adhoc"), study="adhoc", config={**config, "study": "adhoc"},
                           started_at=utc_now(), status="ok", metrics={"test_accuracy_best": 0.5},
                           finished_at=utc_now()))
    return results


@pytest.fixture
def store_copy(demo_store, tmp_path):
    """A copy of the demo store a test may add to."""
    return shutil.copytree(demo_store, tmp_path / "results")


def _export(uri: str, store, capsys, *extra: str) -> str:
    assert main(["results", "export", "--mlflow", uri, "--results-dir", str(store), *extra]) == 0
    return capsys.readouterr().out


def test_every_record_becomes_one_run_under_its_study_summary(demo_store, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = _export(uri, demo_store, capsys)
    assert "5 run(s) exported" in out and "0 already there" in out and "lr_study (created)" in out
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["lr_study"])
    children, parents = runs[runs["tags.carlib_run_id"].notna()], runs[runs["tags.carlib_summary_of"].notna()]
    assert len(children) == 4 and len(parents) == 1
    (parent_id,) = parents["run_id"]
    assert set(children["tags.mlflow.parentRunId"]) == {parent_id}
    records = {r["run_id"]: r for r in ResultsStore(demo_store).records()}
    client = MlflowClient(uri)
    for _, row in children.iterrows():
        record = records[row["tags.carlib_run_id"]]
        assert row["status"] == ("FINISHED" if record["status"] == "ok" else "FAILED")
        assert row["params.lr"] == str(record["config"]["lr"]) and row["params.seed"] == str(record["config"]["seed"])
        if record["status"] != "ok":
            assert row["tags.carlib_error"] == "training diverged"
            continue
        for name in ("test_accuracy_best", "test_accuracy_last", "val_accuracy_best", "val_loss_last", "best_epoch"):
            assert row[f"metrics.{name}"] == pytest.approx(record["metrics"][name]), name
        history = client.get_metric_history(row["run_id"], "val_accuracy")
        assert [(m.step, m.value) for m in history] == \
            [(h["epoch"], pytest.approx(h["val_accuracy"])) for h in record["history"]]
        files = {a.path for a in client.list_artifacts(row["run_id"])} | \
            {a.path for a in client.list_artifacts(row["run_id"], "model")}
        assert {"model/best.keras", "model/last.keras", "history.csv", "learning_curves.png",
                "carlib_record.json"} <= files
    parent = client.get_run(parent_id)
    verdict = carlib.study_verdict("lr_study", str(demo_store))
    assert parent.data.tags["carlib_verdict"] == verdict.message and parent.data.metrics["n_runs"] == 4
    assert parent.data.metrics["n_failed"] == 1
    assert {a.path for a in client.list_artifacts(parent_id)} == {"summary.csv", "verdict.txt"}
    (adhoc,) = mlflow.search_runs(experiment_names=["adhoc"], output_format="list")
    assert "mlflow.parentRunId" not in adhoc.data.tags  # a study without a spec has no summary to nest under


def test_exporting_again_adds_nothing_and_new_records_are_added_once(store_copy, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _export(uri, store_copy, capsys)
    mlflow.set_tracking_uri(uri)
    before = mlflow.search_runs(search_all_experiments=True)
    out = _export(uri, store_copy, capsys)
    assert "0 run(s) exported" in out and "5 already there" in out and "study summary runs: none" in out
    assert len(mlflow.search_runs(search_all_experiments=True)) == len(before) == 6
    store = ResultsStore(store_copy)
    config = {**store.records()[0]["config"], "seed": 9}
    added = store.write(new_record(run_id=new_run_id("lr_study"), study="lr_study", config=config,
                                   started_at=utc_now(), status="ok", metrics={"test_accuracy_best": 0.25},
                                   finished_at=utc_now())).stem
    out = _export(uri, store_copy, capsys, "--study", "lr_study")
    assert "1 run(s) exported" in out and "lr_study (updated)" in out
    runs = mlflow.search_runs(experiment_names=["lr_study"], filter_string=f"tags.`carlib_run_id` = '{added}'")
    assert len(runs) == 1 and runs["metrics.test_accuracy_best"].tolist() == [0.25]
    (parent,) = mlflow.search_runs(experiment_names=["lr_study"], filter_string="tags.`carlib_summary_of` = "
                                   "'lr_study'", output_format="list")
    steps = MlflowClient(uri).get_metric_history(parent.info.run_id, "n_runs")
    assert [(m.step, m.value) for m in steps] == [(4, 4.0), (5, 5.0)]  # the verdict's history stays


def test_an_export_cut_short_is_redone_and_a_file_store_works_offline(store_copy, tmp_path, capsys):
    uri = (tmp_path / "mlruns").as_uri()
    _export(uri, store_copy, capsys, "--study", "adhoc")
    client = MlflowClient(uri)
    (adhoc,) = ResultsStore(store_copy).records("adhoc")
    (first,) = client.search_runs([client.get_experiment_by_name("adhoc").experiment_id])
    client.set_tag(first.info.run_id, "carlib_export", "partial")  # as if the export died before finishing it
    out = _export(uri, store_copy, capsys, "--study", "adhoc")
    assert "1 run(s) exported" in out
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["adhoc"])
    assert runs["tags.carlib_run_id"].tolist() == [adhoc["run_id"]] and runs["run_id"].tolist() != [first.info.run_id]


@pytest.mark.parametrize("argv, says", [
    (["results", "export"], "carlib results export needs --mlflow TRACKING_URI"),
    (["results", "--mlflow", "sqlite:///x.db"], "--mlflow belongs to the export"),
    (["results", "export", "--mlflow", "sqlite:///x.db", "--summary"], "--summary change(s) how the table is"),
    (["results", "export", "--mlflow", " "], "--mlflow needs a tracking URI"),
])
def test_bad_export_commands_say_what_is_wrong(argv, says, capsys):
    assert main(argv) == 2
    assert says in capsys.readouterr().err


def test_without_mlflow_the_export_says_what_to_install(monkeypatch, results_dir, capsys):
    monkeypatch.setitem(__import__("sys").modules, "mlflow", None)
    assert main(["results", "export", "--mlflow", "sqlite:///x.db", "--results-dir", str(results_dir)]) == 2
    assert 'pip install "carlib[mlflow]"' in capsys.readouterr().err
