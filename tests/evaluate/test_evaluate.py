"""Evaluation: metrics on hand-made predictions, the run's own split for both checkpoints, FixRes, plots."""

from __future__ import annotations

import io
import json
import shutil

import keras
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

import carlib
from carlib import plots
from carlib.errors import ConfigError, MissingFileError, ModelError
from carlib.evaluate.checkpoints import evaluate_model, evaluate_run, validation_images
from carlib.evaluate.metrics import evaluate_predictions, most_confident_mistakes, resolve_class_names
from carlib.evaluate.predict import load_model, model_at_size, resolve_model_path
from carlib.evaluate.resolution import default_test_sizes, resolution_curve
from carlib.evaluate.tta import tta_predict
from carlib.models.build import build_model

# Four images, three classes: image 0 right; 1 wrong but its true class second; 2 right; 3 wrong, true class last.
LABELS = np.array([0, 1, 2, 2])
PROBABILITIES = np.array([
    [0.7, 0.2, 0.1],
    [0.6, 0.3, 0.1],
    [0.1, 0.1, 0.8],
    [0.5, 0.4, 0.1],
])


def test_metrics_on_hand_made_probabilities():
    result = evaluate_predictions(LABELS, PROBABILITIES, ["sedan", "suv", "van"])
    assert result.accuracy == pytest.approx(0.5)
    assert result.top2_accuracy == pytest.approx(0.75)  # image 3's true class is third
    assert result.n == 4
    assert result.per_class["class"].tolist() == ["sedan", "suv", "van"]
    assert result.per_class["n"].tolist() == [1, 1, 2]
    np.testing.assert_allclose(result.per_class["accuracy"], [1.0, 0.0, 0.5])
    assert list(result.confusion.index) == ["sedan", "suv", "van"] == list(result.confusion.columns)
    assert result.confusion.index.name == "true" and result.confusion.columns.name == "predicted"
    expected = [[1, 0, 0], [1, 0, 0], [1, 0, 1]]
    np.testing.assert_array_equal(result.confusion.to_numpy(), expected)
    assert result.confusion.loc["van", "sedan"] == 1


def test_class_with_no_images_has_nan_accuracy_and_default_names_are_indices():
    result = evaluate_predictions([0, 0], [[0.9, 0.1], [0.2, 0.8]])
    assert list(result.confusion.columns) == ["0", "1"]
    assert np.isnan(result.per_class["accuracy"].iloc[1])
    assert result.top2_accuracy == 1.0  # two classes: the true one is always in the top 2


def test_class_name_map_from_the_user_or_the_folders():
    folders = ("0", "1", "2")
    assert resolve_class_names(folders) == folders
    assert resolve_class_names(folders, ["sedan", "suv", "van"]) == ("sedan", "suv", "van")
    assert resolve_class_names(folders, {"0": "sedan", 2: "van"}) == ("sedan", "1", "van")
    with pytest.raises(ValueError, match="one name per class"):
        resolve_class_names(folders, ["sedan", "suv"])


def test_bad_predictions_are_refused_with_the_reason():
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.2"):
        evaluate_predictions([0, 3, 1, 1], PROBABILITIES)
    with pytest.raises(ValueError, match="NaN"):
        evaluate_predictions(LABELS, np.where(PROBABILITIES > 0.75, np.nan, PROBABILITIES))
    with pytest.raises(ValueError, match="one class index per image"):
        evaluate_predictions(LABELS[:3], PROBABILITIES)


def test_most_confident_mistakes_come_first():
    paths = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    mistakes = most_confident_mistakes(LABELS, PROBABILITIES, k=5, class_names=["sedan", "suv", "van"], paths=paths)
    assert mistakes["index"].tolist() == [1, 3]  # 0.6 before 0.5; right answers never appear
    assert mistakes["path"].tolist() == ["b.jpg", "d.jpg"]
    assert mistakes["true"].tolist() == ["suv", "van"] and mistakes["predicted"].tolist() == ["sedan", "sedan"]
    np.testing.assert_allclose(mistakes["confidence"], [0.6, 0.5])
    np.testing.assert_allclose(mistakes["true_probability"], [0.3, 0.1])
    assert len(most_confident_mistakes(LABELS, PROBABILITIES, k=1)) == 1


# ------------------------------------------------------------------ a trained run
@pytest.fixture(scope="module")
def run(tiny_data_dir, tmp_path_factory):
    """A 2-epoch run with a validation split: best and last checkpoints on disk."""
    results = tmp_path_factory.mktemp("eval-results")
    return carlib.run_experiment(data_dir=str(tiny_data_dir), image_size=32, batch_size=16, epochs=2, lr=3e-3,
                                 val_split=0.25, seed=3, results_dir=str(results))


def test_evaluate_run_rebuilds_the_runs_split_for_best_and_last(run):
    evaluation = evaluate_run(run)
    table = evaluation.table()
    assert list(table.index) == ["best", "last"]
    for name in ("best", "last"):
        assert evaluation[name].accuracy == pytest.approx(run["metrics"][f"val_accuracy_{name}"], abs=1e-6)
        assert len(evaluation[name].images) == run["data"]["n_val"]
    np.testing.assert_allclose(table["accuracy"], table["recorded_val_accuracy"].astype(float), atol=1e-6)
    assert evaluation.best.model_path.endswith("best.keras") and evaluation.last.model_path.endswith("last.keras")


def test_evaluate_run_by_id_with_tta_and_class_names(run):
    names = {str(i): f"car{i}" for i in range(10)}
    evaluation = evaluate_run(run["run_id"], results_dir=run["config"]["results_dir"], checkpoints=("best",),
                              tta=2, tta_preset="flip", class_names=names)
    best = evaluation.best
    assert best.tta is not None and best.tta.passes == 2
    assert list(best.metrics.confusion.columns) == [f"car{i}" for i in range(10)]
    assert set(best.mistakes(3)["true"]) <= set(names.values())


def test_resolution_curve_at_the_training_size_equals_plain_evaluation(run):
    best = run["checkpoint"]["best"]
    plain = evaluate_model(best, run["config"]["data_dir"], val_split=0.25, seed=3)
    curve = resolution_curve(best, plain.images, sizes=[24, 32, 48])
    assert curve["image_size"].tolist() == [24, 32, 48]
    at_train = curve[curve["is_train_size"]]
    assert at_train["image_size"].tolist() == [32] and (curve["train_size"] == 32).all()
    assert at_train["accuracy"].iloc[0] == pytest.approx(plain.accuracy, abs=1e-9)
    bigger = evaluate_model(best, run["config"]["data_dir"], val_split=0.25, seed=3, image_size=48)
    assert curve.set_index("image_size").loc[48, "accuracy"] == pytest.approx(bigger.accuracy, abs=1e-9)
    assert bigger.image_size == 48


def test_model_at_size_keeps_the_weights_and_leaves_the_model_alone():
    model = build_model("simple_cnn", 10, 32, bn_mode="frozen")  # the InferenceModeBackbone wrapper too
    images = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    bigger = model_at_size(model, 48)
    assert bigger.input_shape == (None, 48, 48, 3) and model.input_shape == (None, 32, 32, 3)
    assert bigger.predict(np.zeros((1, 48, 48, 3), np.float32), verbose=0).shape == (1, 10)
    back = model_at_size(bigger, 32)
    np.testing.assert_allclose(back.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6)
    assert model_at_size(model, 32) is model


def test_size_dependent_models_are_refused_clearly():
    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(inputs))
    with pytest.raises(ValueError, match="do not depend on the input size"):
        model_at_size(keras.Model(inputs, outputs), 48)


def test_default_test_sizes_follow_fixres():
    assert default_test_sizes(224) == [168, 224, 256, 288, 320]
    assert 64 in default_test_sizes(64)


def test_a_final_run_has_no_validation_split_to_evaluate(tiny_data_dir):
    with pytest.raises(ConfigError, match="val_split=0"):
        validation_images(tiny_data_dir, 0, 0)


def test_run_folder_resolves_to_the_right_checkpoint(run, tmp_path):
    assert resolve_model_path(run["run_dir"]).name == "best.keras"
    # A copy of the run as a final run (val_split=0) must use last.keras.
    store = tmp_path / "store"
    run_dir = store / "runs" / "final-run"
    shutil.copytree(run["run_dir"], run_dir)
    (store / "records").mkdir()
    record = {**run, "config": {**run["config"], "val_split": 0.0}}
    (store / "records" / "final-run.json").write_text(json.dumps(record))
    assert resolve_model_path(run_dir) == run_dir / "last.keras"
    (store / "records" / "final-run.json").unlink()
    with pytest.raises(FileNotFoundError, match="best.keras or last.keras"):
        resolve_model_path(run_dir)


def test_one_loader_takes_a_model_a_keras_file_or_a_run_folder(run, tmp_path):
    assert carlib.load_model is load_model
    from_folder = load_model(run["run_dir"], compile=False)
    from_file = load_model(run["checkpoint"]["best"])
    assert load_model(from_file) is from_file
    x = np.random.default_rng(0).uniform(0, 255, (2, *from_file.input_shape[1:])).astype("float32")
    np.testing.assert_allclose(from_folder.predict(x, verbose=0), from_file.predict(x, verbose=0), rtol=1e-5)
    (tmp_path / "notes.keras").write_text("not a model")
    with pytest.raises(ModelError, match="not a .keras model file"):
        load_model(tmp_path / "notes.keras")
    with pytest.raises(MissingFileError, match="does not exist"):
        load_model(tmp_path / "gone.keras")


def test_model_and_data_with_different_classes_fail(run, tiny_data_dir):
    model = build_model("simple_cnn", 7, 32)
    with pytest.raises(ValueError, match="predicts 7 classes but the data has 10"):
        evaluate_model(model, tiny_data_dir, val_split=0.25)


# ------------------------------------------------------------------------- plots
def test_evaluation_plots_are_figures_with_class_names(run):
    evaluation = evaluate_run(run, checkpoints=("best",)).best
    names = [f"car{i}" for i in range(10)]
    confusion = evaluate_predictions(evaluation.labels, evaluation.probabilities, names).confusion
    figure = plots.plot_confusion_matrix(confusion)
    assert isinstance(figure, Figure)
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == names
    assert [t.get_text() for t in figure.axes[0].get_yticklabels()] == names

    mistakes = evaluation.mistakes(4)
    gallery = plots.plot_mistakes(mistakes)
    assert isinstance(gallery, Figure) and sum(bool(ax.images) for ax in gallery.axes) == len(mistakes)
    assert isinstance(plots.plot_mistakes(mistakes.iloc[:0]), Figure)

    curve = pd.DataFrame({"image_size": [24, 32], "accuracy": [0.2, 0.3], "train_size": [32, 32]})
    figure = plots.plot_resolution_curve(curve)
    assert any("training size 32" in t.get_text() for t in figure.axes[0].get_legend().get_texts())

    model = keras.models.load_model(run["checkpoint"]["best"])
    result = tta_predict(model, evaluation.images, preset="light", passes=3)
    grid = plots.plot_tta_grid(result.pass_images([0, 1]), result.per_pass[:, [0, 1]], class_names=names,
                               true_labels=evaluation.labels[[0, 1]])
    assert len(grid.axes) == 6 and grid.axes[0].get_title().startswith("original")
    spread = plots.plot_tta_spread(result.diagnostics)
    assert len(spread.axes) == 2
    for figure in (grid, spread, gallery):
        figure.savefig(io.BytesIO(), format="png")  # draws without pyplot
