"""Export for deployment: the SavedModel and the TFLite file predict what the .keras model predicts, with its class
names, loaded the way a deployer loads them; a trained run's checkpoints carry their class names."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import carlib
from carlib.cli import main
from carlib.data.folders import list_class_images, prepare_data
from carlib.data.pipeline import eval_dataset
from carlib.errors import ConfigError, OutputExistsError
from carlib.evaluate.export import export_model
from carlib.models.build import build_model, read_class_names, save_model
from carlib.records.store import ResultsStore

NAMES = tuple(f"car model {c}" for c in range(10))
# Measured on this stack: SavedModel 0 (the same kernels), TFLite ≤ 3e-8 on a CPU; the limits leave room for other
# machines' kernels.
SAVED_MODEL_ATOL = 1e-5
TFLITE_ATOL = 1e-4


@pytest.fixture(scope="module")
def tiny_images(tiny_data_dir):
    """24 training images of the tiny dataset, decoded and resized by carlib's evaluation pipeline (float32 0–255)."""
    images = list_class_images(prepare_data(tiny_data_dir).train_dir).subset(np.arange(0, 80, 80 // 24)[:24])
    return np.concatenate([batch for batch, _ in eval_dataset(images, 32, 8).as_numpy_iterator()])


@pytest.fixture(scope="module")
def cnn_file(tiny_images, tmp_path_factory):
    """A carlib simple_cnn (preprocessing, nested backbone, BatchNorm, dropout), untrained, whose head projects the
    features' deviation from their mean over the images: so its class depends on the image."""
    keras.utils.set_random_seed(3)
    model = build_model("simple_cnn", 10, 32)
    features = keras.Model(model.inputs, model.get_layer("pool").output).predict(tiny_images, verbose=0)
    kernel = np.random.default_rng(3).normal(size=(features.shape[1], 10)) / (features.std(axis=0)[:, None] + 1e-6)
    kernel *= 2.0 / np.sqrt(features.shape[1])
    model.get_layer("classifier").set_weights([kernel.astype("float32"), (-features.mean(axis=0) @ kernel).astype(
        "float32")])
    return save_model(model, tmp_path_factory.mktemp("cnn") / "best.keras", NAMES)


def _saved_model_outputs(path, images):
    serving = tf.saved_model.load(str(path)).signatures["serving_default"]  # as TF Serving and a deployer load it
    return {k: v.numpy() for k, v in serving(image=tf.constant(images)).items()}


def _tflite_outputs(path, images):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # tf.lite.Interpreter points at ai_edge_litert
        interpreter = tf.lite.Interpreter(model_path=str(path))
    return interpreter.get_signature_runner("serving_default")(image=images)


def test_saved_model_matches_the_keras_model_with_its_class_names(cnn_file, tiny_images, tmp_path):
    keras_model = carlib.load_model(cnn_file)
    expected = keras_model.predict(tiny_images, verbose=0)
    assert len(set(expected.argmax(axis=1))) >= 3  # the class depends on the image
    export = export_model(cnn_file, "saved_model", tmp_path / "sm")
    assert export.path == tmp_path / "sm" and export.image_size == 32 and export.class_names == NAMES
    out = _saved_model_outputs(tmp_path / "sm", tiny_images)
    assert set(out) == {"probabilities", "class_index", "class_name"}
    np.testing.assert_allclose(out["probabilities"], expected, atol=SAVED_MODEL_ATOL, rtol=0)
    assert out["class_index"].tolist() == expected.argmax(axis=1).tolist()
    assert [n.decode() for n in out["class_name"]] == [NAMES[i] for i in expected.argmax(axis=1)]
    assert (tmp_path / "sm" / "assets" / "labels.txt").read_text().splitlines() == list(NAMES)
    assert export.max_abs_diff <= SAVED_MODEL_ATOL


def test_tflite_matches_the_keras_model_with_a_labels_file(cnn_file, tiny_images, tmp_path):
    expected = carlib.load_model(cnn_file).predict(tiny_images, verbose=0)
    export = export_model(cnn_file, "tflite", tmp_path / "deploy")
    assert export.path == tmp_path / "deploy" / "model.tflite" and export.labels == tmp_path / "deploy" / "labels.txt"
    out = _tflite_outputs(export.path, tiny_images)
    np.testing.assert_allclose(out["probabilities"], expected, atol=TFLITE_ATOL, rtol=0)
    assert out["class_index"].tolist() == expected.argmax(axis=1).tolist()
    assert export.labels.read_text().splitlines() == list(NAMES)


def test_exported_models_give_the_oracle_class_of_photos(brightness, photos_of_every_class, tmp_path):
    """Independent of Keras: the class a SavedModel and a TFLite file give photos is the one their brightness says."""
    path = save_model(brightness.model(), tmp_path / "brightness.keras", [f"b{c}" for c in range(10)])
    files = photos_of_every_class
    expected, probabilities = brightness.oracle(files)
    pixels = np.stack([np.asarray(Image.open(f).convert("RGB").resize((32, 32), Image.BOX), np.float32)
                       for f in files])
    saved = _saved_model_outputs(export_model(path, "saved_model").path, pixels)
    assert saved["class_index"].tolist() == expected.tolist() == list(range(10))
    assert [n.decode() for n in saved["class_name"]] == [f"b{c}" for c in expected]
    np.testing.assert_allclose(saved["probabilities"], probabilities, atol=0.02)
    lite = _tflite_outputs(export_model(path, "tflite").path, pixels)
    assert lite["class_index"].tolist() == expected.tolist()


@pytest.fixture
def photos_of_every_class(brightness, tmp_path):
    return [brightness.paint(tmp_path / "photos" / f"{c}.jpg", c, width=64, height=48, seed=c) for c in range(10)]


def test_export_replaces_an_older_export_but_nothing_else(cnn_file, tmp_path):
    target = tmp_path / "sm"
    export_model(cnn_file, "saved_model", target)
    export_model(cnn_file, "saved_model", target)  # a re-export replaces its own folder
    assert (target / "saved_model.pb").is_file() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="not a SavedModel"):
        export_model(cnn_file, "saved_model", tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(ConfigError, match="unknown export format 'onnx'"):
        export_model(cnn_file, "onnx")


def test_a_mixed_precision_model_exports_in_float32(tiny_images, tmp_path):
    """A model trained on a GPU (mixed_float16) converts to TFLite's builtin float32 kernels."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_model("simple_cnn", 10, 32)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    path = save_model(model, tmp_path / "mixed.keras", NAMES)
    export = export_model(path, "tflite")
    assert export.from_mixed_precision and "rebuilt in float32" in export.summary()
    float32 = build_model("simple_cnn", 10, 32)  # the same network and weights, computing in float32
    float32.set_weights(model.get_weights())
    out = _tflite_outputs(export.path, tiny_images)
    np.testing.assert_allclose(out["probabilities"], float32.predict(tiny_images, verbose=0), atol=TFLITE_ATOL, rtol=0)
    np.testing.assert_allclose(out["probabilities"], model.predict(tiny_images, verbose=0), atol=1e-2, rtol=0)


# -------------------------------------------------------------- a trained run, end to end
@pytest.fixture(scope="module")
def trained_run(tiny_data_dir, tmp_path_factory):
    """One short run on the tiny dataset (module scope: the function-scoped cache isolation is not active yet)."""
    base = tmp_path_factory.getbasetemp()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CARLIB_CACHE", str(base / "carlib-cache"))
        record = carlib.run_experiment(data_dir=str(tiny_data_dir), image_size=32, batch_size=16, epochs=2,
                                       val_split=0.25, augmentation="none", results_dir=str(base / "export-results"))
    assert record["status"] == "ok"
    return record


def test_training_writes_the_class_names_into_both_checkpoints(trained_run):
    run_dir = Path(trained_run["run_dir"])
    names = tuple(trained_run["data"]["class_names"])
    assert names == tuple(str(c) for c in range(10))
    for checkpoint in ("best.keras", "last.keras"):
        assert read_class_names(run_dir / checkpoint) == names
        keras.models.load_model(run_dir / checkpoint)  # still a plain Keras file
    assert not (run_dir / "classes.json").exists()  # inside the files, nothing beside them


def test_cli_export_of_a_run_folder_round_trips(trained_run, tiny_images, capsys):
    run_dir = Path(trained_run["run_dir"])
    expected = carlib.load_model(run_dir / "best.keras").predict(tiny_images, verbose=0)
    assert main(["export", str(run_dir)]) == 0
    printed = capsys.readouterr().out
    target = run_dir / "export" / "best" / "saved_model"
    assert f"wrote SavedModel {target}" in printed and "max |probability difference|" in printed
    np.testing.assert_allclose(_saved_model_outputs(target, tiny_images)["probabilities"], expected,
                               atol=SAVED_MODEL_ATOL, rtol=0)
    assert main(["export", str(run_dir / "last.keras"), "--format", "tflite"]) == 0
    assert (run_dir / "export" / "last" / "model.tflite").is_file()
    assert (run_dir / "export" / "last" / "labels.txt").read_text().splitlines() == trained_run["data"]["class_names"]


def test_an_older_run_gets_its_class_names_from_its_record(trained_run, tmp_path, capsys):
    """A checkpoint saved before class names went into model files: the run record names its classes."""
    run_dir = Path(trained_run["run_dir"])
    old = run_dir / "old.keras"
    keras.models.load_model(run_dir / "last.keras").save(old)
    assert read_class_names(old) is None
    photo = next(Path(trained_run["data"]["train_dir"]).rglob("*.jpg"))
    frame = carlib.predict_photos(old, [photo])
    assert frame.attrs["class_names_from"] == f"the run record of {run_dir.name}"
    assert frame["class_name"].tolist() == [str(frame["class_index"].iloc[0])]  # numbered classes: name = index
    assert json.loads((run_dir.parent.parent / "records" / f"{run_dir.name}.json").read_text())["run_id"] == run_dir.name
    old.unlink()


def test_cli_predict_photos_with_a_run_folder(trained_run, tmp_path, capsys):
    run_dir = Path(trained_run["run_dir"])
    folder = Path(trained_run["data"]["train_dir"]) / "3"
    out = tmp_path / "preds.csv"
    assert main(["predict", str(run_dir), str(folder), "--out", str(out)]) == 0
    assert "best.keras" in capsys.readouterr().out
    frame = carlib.predict_photos(run_dir / "best.keras", [folder])
    written = np.genfromtxt(out, delimiter=",", names=True, dtype=None, encoding="utf-8")
    assert written["class_index"].tolist() == frame["class_index"].tolist()


# ------------------------------------------------------------------ a fine-tuned pretrained EfficientNet-Lite0
@pytest.fixture(scope="module")
def finetuned_lite0(tiny_data_dir, tmp_path_factory):
    """EfficientNet-Lite0 from its ImageNet weights, two-stage fine-tuned for a few steps on the tiny dataset."""
    base = tmp_path_factory.getbasetemp()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CARLIB_CACHE", str(base / "carlib-cache"))
        record = carlib.run_experiment(data_dir=str(tiny_data_dir), backbone="efficientnet_lite0", image_size=32,
                                       test_image_size=40, batch_size=16, epochs=2, finetune="two_stage",
                                       head_epochs=1, unfreeze_blocks=3, val_split=0.25, tta_passes=2,
                                       results_dir=str(base / "lite0-results"))
    assert record["status"] == "ok" and record["config"]["weights"] == "imagenet"
    assert record["metrics"]["test_accuracy_fixres"] is not None and record["metrics"]["test_image_size"] == 40
    return record


def test_a_finetuned_lite0_exports_to_saved_model_and_tflite_that_agree(finetuned_lite0, tiny_images, tmp_path):
    best = Path(finetuned_lite0["run_dir"]) / "best.keras"
    expected = carlib.load_model(best).predict(tiny_images, verbose=0)
    assert len(set(expected.argmax(axis=1))) > 1  # the photos get different answers: a comparison that can fail
    saved = export_model(best, "saved_model", tmp_path / "saved")
    tflite = export_model(best, "tflite", tmp_path / "tflite")
    for outputs in (_saved_model_outputs(saved.path, tiny_images)["probabilities"],
                    _tflite_outputs(tflite.path, tiny_images)["probabilities"]):
        np.testing.assert_array_equal(outputs.argmax(axis=1), expected.argmax(axis=1))  # top-1 identical
        np.testing.assert_allclose(outputs, expected, atol=TFLITE_ATOL, rtol=0)  # within 1e-4


def _predict_with_tta(run_dir: Path, folder: Path, out: Path):
    """``carlib predict RUN FOLDER --tta 2 --image-size 40`` (the FixRes size of these runs); its CSV as a frame."""
    import pandas as pd

    assert main(["predict", str(run_dir), str(folder), "--tta", "2", "--image-size", "40", "--out", str(out)]) == 0
    return pd.read_csv(out, keep_default_na=False)


def test_cli_predicts_photos_with_tta_at_the_fixres_size(finetuned_lite0, tmp_path, capsys):
    run_dir = Path(finetuned_lite0["run_dir"])
    folder = Path(finetuned_lite0["data"]["train_dir"]) / "2"
    frame = _predict_with_tta(run_dir, folder, tmp_path / "preds.csv")
    assert len(frame) == len(list(folder.glob("*.jpg"))) and (frame["error"] == "").all()
    assert set(frame["class_name"].astype(str)) <= set(finetuned_lite0["data"]["class_names"])


def test_the_shipped_pretrained_recipe_trains_through_carlib_run_and_predicts_with_tta(tiny_data_dir, tmp_path):
    """params/cpu_recipe/pretrained.yaml as a user runs it (shrunk to tiny sizes on the command line), then predict."""
    results = tmp_path / "results"
    assert main(["run", "--params", "params/cpu_recipe/pretrained.yaml", "--data-dir", str(tiny_data_dir),
                 "--image-size", "32", "--test-image-size", "40", "--epochs", "2", "--head-epochs", "1",
                 "--batch-size", "16", "--tta-passes", "2", "--val-split", "0.25", "--results-dir", str(results)]) == 0
    (record,) = ResultsStore(results).records()
    config, metrics = record["config"], record["metrics"]
    assert (config["backbone"], config["weights"], config["finetune"]) == ("efficientnet_lite1", "imagenet", "two_stage")
    assert config["lr"] == 1e-3 and config["augmentation"] == "medium"  # the file's values, not carlib's defaults
    assert metrics["test_accuracy_tta"] is not None and metrics["test_image_size"] == 40
    run_dir = Path(record["run_dir"])
    folder = Path(record["data"]["train_dir"]) / "3"
    frame = _predict_with_tta(run_dir, folder, tmp_path / "preds.csv")
    assert len(frame) == len(list(folder.glob("*.jpg"))) and (frame["error"] == "").all()
