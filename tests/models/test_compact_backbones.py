"""The compact from-scratch backbone family (issue 9): contract, width/depth knobs, save/load, label smoothing."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import carlib
from carlib.config import ExperimentConfig
from carlib.errors import ConfigError
from carlib.models import losses
from carlib.models.build import build_model, feature_extractor
from carlib.models.registry import check_knobs, get_backbone, knob_backbones
from carlib.studies.specs import get_study

COMPACT = ["simple_cnn", "cnn_small", "resnet_tiny", "resnet_small"]


def _raw_batch(size: int, n: int = 2) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (n, size, size, 3)).astype("float32")


def _convs(model: keras.Model) -> list[keras.layers.Conv2D]:
    extractor = feature_extractor(model)
    return [layer for layer in extractor.layers if isinstance(layer, keras.layers.Conv2D)]


def test_the_family_is_registered_and_only_it_has_knobs():
    assert set(COMPACT) <= set(knob_backbones())
    assert not {"xception", "efficientnet_b0", "mobilenet_v3_small"} & set(knob_backbones())
    for name in COMPACT:
        spec = get_backbone(name)
        assert set(spec.knobs) == {"width", "depth"}
        assert spec.preprocessing == "unit"


@pytest.mark.parametrize("name", COMPACT)
def test_compact_backbone_takes_raw_pixels_and_scales_inside(name):
    model = build_model(name, num_classes=5, image_size=32)
    seen = keras.Model(model.input, model.get_layer("preprocess_unit").output)(
        np.linspace(0, 255, 32 * 32 * 3, dtype=np.float32).reshape(1, 32, 32, 3)).numpy()
    np.testing.assert_allclose([seen.min(), seen.max()], [0.0, 1.0], atol=1e-6)
    probabilities = model(_raw_batch(32)).numpy()
    assert probabilities.shape == (2, 5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_simple_cnn_keeps_its_layers_so_saved_weights_still_load():
    model = build_model("simple_cnn", num_classes=3, image_size=32)
    convs = _convs(model)
    assert [c.name for c in convs] == ["block0_conv", "block1_conv", "block2_conv", "block3_conv"]
    assert [c.filters for c in convs] == [16, 32, 64, 128]


@pytest.mark.parametrize("name", ["simple_cnn", "resnet_tiny"])
def test_width_and_depth_resize_the_network(name):
    default = _convs(build_model(name, num_classes=3, image_size=32))
    wider = _convs(build_model(name, num_classes=3, image_size=32, width=8))
    deeper = _convs(build_model(name, num_classes=3, image_size=32, depth=2))
    assert wider[-1].filters == 8 * 8 and default[-1].filters == 16 * 8  # width doubles at each of 4 stages
    assert len(wider) == len(default)
    assert len(deeper) > len(default)
    # the same knobs through the config reach the built model
    config = ExperimentConfig(backbone=name, backbone_width="8", backbone_depth=2, image_size=32)
    assert (config.backbone_width, config.backbone_depth) == (8, 2)


def test_resolved_config_records_the_variants_own_width_and_depth():
    resolved = ExperimentConfig(backbone="resnet_small").resolved()
    assert (resolved.backbone_width, resolved.backbone_depth) == (24, 2)
    assert resolved.image_size == get_backbone("resnet_small").default_size
    assert ExperimentConfig(backbone="resnet_small", backbone_width=12).resolved().backbone_width == 12
    applications = ExperimentConfig(backbone="efficientnet_b0").resolved()
    assert (applications.backbone_width, applications.backbone_depth) == (None, None)


def test_knobs_on_a_fixed_architecture_name_the_compact_backbones():
    with pytest.raises(ValueError) as err:
        build_model("efficientnet_b0", num_classes=3, image_size=32, width=16)
    message = str(err.value)
    assert "backbone_width=16" in message and "fixed architecture" in message
    for name in COMPACT:
        assert name in message
    with pytest.raises(ConfigError, match="backbone_depth=2: backbone 'xception' has a fixed architecture"):
        ExperimentConfig(backbone="xception", backbone_depth=2)


@pytest.mark.parametrize("knobs,message", [
    ({"width": 2}, r"backbone_width=2 is out of range: expected an integer in \[4, 256\]"),
    ({"width": 1000}, r"backbone_width=1000 is out of range"),
    ({"depth": 0}, r"backbone_depth=0 is out of range: expected an integer in \[1, 8\]"),
    ({"depth": True}, r"backbone_depth=True is out of range"),
])
def test_knob_values_out_of_range_are_refused(knobs, message):
    with pytest.raises(ValueError, match=message):
        check_knobs("resnet_tiny", **knobs)


def test_out_of_range_knob_in_a_config_is_a_config_error():
    with pytest.raises(ConfigError, match=r"backbone_width=3 is out of range.*'resnet_tiny' uses 16"):
        ExperimentConfig(backbone="resnet_tiny", backbone_width=3)
    with pytest.raises(ConfigError, match="backbone_depth='deep' has the wrong type"):
        ExperimentConfig(backbone="resnet_tiny", backbone_depth="deep")


@pytest.mark.parametrize("name", ["cnn_small", "resnet_small"])
def test_compact_models_save_and_load_as_keras_files(tmp_path, name):
    model = build_model(name, num_classes=3, image_size=32, width=8)
    model.compile(optimizer="adam", loss=losses.classification_loss(0.1), metrics=["accuracy"])
    x, y = _raw_batch(32, 4), np.array([0, 1, 2, 0])
    model.train_on_batch(x, y)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    for reloaded in (carlib.load_model(path), keras.models.load_model(path)):
        np.testing.assert_allclose(reloaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    reloaded = carlib.load_model(path)
    assert isinstance(reloaded.loss, losses.SmoothedSparseCategoricalCrossentropy)
    assert reloaded.loss.label_smoothing == pytest.approx(0.1)


# ---------------------------------------------------------------------------- label smoothing
def test_smoothed_loss_matches_keras_one_hot_label_smoothing():
    rng = np.random.default_rng(1)
    probabilities = rng.dirichlet(np.ones(4), size=6).astype("float32")
    labels = np.array([0, 1, 2, 3, 1, 2])
    one_hot = np.eye(4, dtype="float32")[labels]
    for epsilon in (0.0, 0.1, 0.3):
        ours = losses.SmoothedSparseCategoricalCrossentropy(epsilon)(labels, probabilities)
        reference = keras.losses.CategoricalCrossentropy(label_smoothing=epsilon)(one_hot, probabilities)
        np.testing.assert_allclose(float(ours), float(reference), rtol=1e-5)
    plain = keras.losses.SparseCategoricalCrossentropy()(labels, probabilities)
    np.testing.assert_allclose(float(losses.SmoothedSparseCategoricalCrossentropy(0.0)(labels, probabilities)),
                               float(plain), rtol=1e-5)
    # smoothing makes a confident right answer cost more than without it
    confident = np.array([[0.97, 0.01, 0.01, 0.01]], dtype="float32")
    assert float(losses.SmoothedSparseCategoricalCrossentropy(0.1)(np.array([0]), confident)) > float(
        keras.losses.SparseCategoricalCrossentropy()(np.array([0]), confident))


def test_label_smoothing_is_validated():
    assert losses.classification_loss(0.0) == "sparse_categorical_crossentropy"
    with pytest.raises(ValueError, match=r"label_smoothing=1.0 is out of range: expected a fraction in \[0, 1\)"):
        losses.SmoothedSparseCategoricalCrossentropy(1.0)
    with pytest.raises(ConfigError, match=r"label_smoothing=-0.1 is out of range"):
        ExperimentConfig(label_smoothing=-0.1)
    assert ExperimentConfig(label_smoothing="0.1").label_smoothing == pytest.approx(0.1)


def test_a_run_with_label_smoothing_keeps_the_accuracy_metric(fast_config):
    record = carlib.run_experiment(**{**fast_config, "backbone": "resnet_tiny", "epochs": 1, "label_smoothing": 0.1})
    assert record["status"] == "ok"
    assert record["config"]["label_smoothing"] == pytest.approx(0.1)
    assert {"accuracy", "val_accuracy", "loss"} <= set(record["history"][0])
    assert (record["config"]["backbone_width"], record["config"]["backbone_depth"]) == (16, 1)
    assert 0 <= record["metrics"]["val_accuracy_best"] <= 1


def test_the_cpu_recipe_study_compares_the_recipes_knobs():
    spec = get_study("cpu_recipe_study")
    assert {"backbone", "backbone_width", "augmentation", "label_smoothing", "warmup_epochs"} <= set(spec.scientific)
