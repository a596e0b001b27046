"""The experiment function: best and last weights, both evaluated (R2, R4); one record per run (R7, R8)."""

from __future__ import annotations

import json

import keras
import pytest

import carlib
from carlib.data import pipeline
from carlib.data.folders import list_class_images, prepare_data, stratified_split
from carlib.data.pipeline import eval_dataset
from carlib.records.store import load_results
from carlib.train import setup


@pytest.fixture(scope="module")
def finished(tiny_data_dir, tmp_path_factory):
    """One short run shared by the read-only tests below."""
    results = tmp_path_factory.mktemp("results")
    record = carlib.run_experiment(data_dir=str(tiny_data_dir), image_size=32, batch_size=16, epochs=3,
                                   augmentation="light", val_split=0.25, results_dir=str(results), lr="2e-3",
                                   schedule="step")
    return record, results


def test_record_holds_config_metrics_history_timings_versions(finished):
    record, results = finished
    assert record["status"] == "ok"
    assert record["config"]["lr"] == 0.002 and record["config"]["image_size"] == 32
    assert record["config"]["data_dir"] and record["config"]["results_dir"] == str(results.resolve())
    assert len(record["history"]) == 3
    assert [row["learning_rate"] for row in record["history"]] == pytest.approx([2e-3, 2e-3, 2e-4])
    metrics = record["metrics"]
    for key in ("val_accuracy_best", "val_accuracy_last", "val_loss_best", "val_loss_last", "best_epoch"):
        assert metrics[key] is not None, key
    assert metrics["checkpoint_monitor"] == "val_accuracy"
    assert record["data"]["n_train"] == 60 and record["data"]["n_val"] == 20 and record["data"]["num_classes"] == 10
    assert record["timings"]["fit_s"] > 0 and record["versions"]["keras"] == keras.__version__
    assert record["hardware"]["cpu_count"] >= 1
    stored = json.loads((results / "records" / f"{record['run_id']}.json").read_text())
    assert stored["metrics"] == metrics


def test_best_and_last_are_different_files_and_both_evaluated(finished, tiny_data_dir):
    record, _ = finished
    best, last = record["checkpoint"]["best"], record["checkpoint"]["last"]
    assert best != last and best.endswith("best.keras") and last.endswith("last.keras")
    images = list_class_images(prepare_data(tiny_data_dir).train_dir)
    _, val_idx = stratified_split(images.labels, 0.25, seed=0)
    val = eval_dataset(images.subset(val_idx), 32, 16)
    for which in ("best", "last"):
        model = keras.models.load_model(record["checkpoint"][which])
        accuracy = model.evaluate(val, verbose=0, return_dict=True)["accuracy"]
        assert accuracy == pytest.approx(record["metrics"][f"val_accuracy_{which}"], abs=1e-6), which
    history = record["history"]
    best_epoch = max(history, key=lambda row: row["val_accuracy"])["epoch"]
    assert record["metrics"]["best_epoch"] == best_epoch
    assert record["metrics"]["val_accuracy_best"] == pytest.approx(history[best_epoch - 1]["val_accuracy"], abs=1e-6)


def test_run_folder_holds_history_and_plot(finished):
    record, _ = finished
    from pathlib import Path

    run_dir = Path(record["run_dir"])
    assert (run_dir / "history.csv").read_text().count("\n") == 4  # header + 3 epochs
    assert (run_dir / "learning_curves.png").stat().st_size > 1000


def test_combined_table_has_one_row_per_run_with_numeric_lr(finished):
    _, results = finished
    table = load_results(results)
    assert len(table) == 1 and table["lr"].iloc[0] == 0.002
    assert table["val_accuracy_best"].iloc[0] == finished[0]["metrics"]["val_accuracy_best"]


def test_validation_images_are_never_augmented_during_a_run(fast_config, monkeypatch):
    calls = []
    original = pipeline.augment_batch
    monkeypatch.setattr(pipeline, "augment_batch", lambda p, batch, seed: calls.append(len(batch)) or original(p, batch, seed))
    record = carlib.run_experiment(fast_config)
    assert sum(calls) == record["data"]["n_train"] * fast_config["epochs"]


def test_without_validation_the_checkpoint_says_what_it_monitors(fast_config):
    record = carlib.run_experiment(fast_config, val_split=0, epochs=1)
    assert record["status"] == "ok" and record["data"]["n_val"] == 0
    assert record["metrics"]["checkpoint_monitor"] == "accuracy" == record["checkpoint"]["monitor"]
    assert record["metrics"]["val_accuracy_best"] is None
    from pathlib import Path

    assert Path(record["checkpoint"]["best"]).is_file()


def test_same_seed_repeats_the_run(fast_config):
    first = carlib.run_experiment(fast_config, augmentation="medium")
    second = carlib.run_experiment(fast_config, augmentation="medium")
    for a, b in zip(first["history"], second["history"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["val_accuracy"] == b["val_accuracy"]


def test_a_crash_writes_a_failed_record_and_reraises(fast_config, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("backbone exploded")

    monkeypatch.setattr(setup, "build_model", broken)
    with pytest.raises(RuntimeError, match="backbone exploded"):
        carlib.run_experiment(fast_config)
    table = load_results(fast_config["results_dir"])
    assert list(table["status"]) == ["failed"]
    assert "backbone exploded" in table["error"].iloc[0]


def test_divergence_is_recorded_as_failed(fast_config):
    record = carlib.run_experiment(fast_config, lr=1e30, optimizer="sgd", epochs=2, augmentation="none")
    assert record["status"] == "failed"
    assert "diverged" in record["error"]


def test_bad_parameters_fail_before_any_data_is_touched(tmp_path):
    with pytest.raises(carlib.ConfigError, match="learning_rate.*'lr'"):
        carlib.run_experiment(learning_rate=0.1, data_dir=str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="sf-dl-car-classification"):
        carlib.run_experiment(data_dir=str(tmp_path / "missing"))
