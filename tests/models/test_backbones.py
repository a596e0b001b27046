"""The backbone registry: each backbone receives the input range it was trained for (R6, R12)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from carlib.models.build import build_model, feature_extractor
from carlib.models.registry import BACKBONES, available_backbones, get_backbone, register_backbone
from carlib.models.spec import BackboneSpec

REQUIRED = ["xception", "efficientnet_b0", "efficientnet_b3", "efficientnet_v2_b0", "efficientnet_v2_s",
            "mobilenet_v3_small", "convnext_tiny", "simple_cnn"]
EXPECTED_RANGE = {
    "xception": (-1.0, 1.0),  # R6: Xception wants [-1, 1], not /255
    "efficientnet_b0": (0.0, 255.0),  # R12: EfficientNet rescales inside; it wants raw pixels
    "efficientnet_b3": (0.0, 255.0),
    "efficientnet_v2_b0": (0.0, 255.0),
    "efficientnet_v2_s": (0.0, 255.0),
    "mobilenet_v3_small": (0.0, 255.0),
    "convnext_tiny": (0.0, 255.0),
    "simple_cnn": (0.0, 1.0),
}


def _ramp(size: int) -> np.ndarray:
    """A batch of one raw RGB image covering 0..255."""
    values = np.linspace(0, 255, size * size * 3, dtype=np.float32)
    return values.reshape(1, size, size, 3)


def test_registry_has_the_required_backbones():
    assert set(REQUIRED) <= set(available_backbones())


def test_unknown_backbone_lists_the_known_ones():
    with pytest.raises(KeyError) as err:
        get_backbone("resnet9000")
    message = str(err.value)
    assert "resnet9000" in message
    for name in REQUIRED:
        assert name in message


@pytest.mark.parametrize("name", REQUIRED)
def test_backbone_receives_its_own_input_range(name):
    size = 75  # Xception's minimum is 71
    model = build_model(name, num_classes=4, image_size=size, weights=None)
    spec = get_backbone(name)
    assert spec.input_range == EXPECTED_RANGE[name]
    preprocess = model.get_layer(f"preprocess_{spec.preprocessing}")
    # The backbone is the layer fed by carlib's preprocessing: nothing else rescales in between.
    layer_names = [layer.name for layer in model.layers]
    backbone_layer = model.layers[layer_names.index(preprocess.name) + 1]
    assert backbone_layer is feature_extractor(model)
    seen = keras.Model(model.inputs, preprocess.output)(_ramp(size)).numpy()
    np.testing.assert_allclose([seen.min(), seen.max()], EXPECTED_RANGE[name], atol=1e-4)
    probabilities = model(_ramp(size)).numpy()
    assert probabilities.shape == (1, 4)
    np.testing.assert_allclose(probabilities.sum(), 1.0, rtol=1e-5)


def test_efficientnet_rescales_inside_so_raw_pixels_are_right():
    model = build_model("efficientnet_b0", num_classes=3, image_size=64, weights=None)
    inner = feature_extractor(model)
    first_layers = [type(layer).__name__ for layer in inner.layers[:4]]
    assert "Rescaling" in first_layers


def test_head_has_no_hidden_dense_layer():
    model = build_model("simple_cnn", num_classes=10, image_size=32)
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert [d.units for d in dense] == [10]
    assert model.get_layer("classifier").dtype_policy.compute_dtype == "float32"


@pytest.mark.parametrize("name,size", [("simple_cnn", 32), ("mobilenet_v3_small", 64)])
def test_weights_from_a_local_file(tmp_path, name, size):
    spec = get_backbone(name)
    source = spec.build((size, size, 3), None)
    path = tmp_path / "backbone.weights.h5"
    source.save_weights(path)
    model = build_model(name, num_classes=3, image_size=size, weights=str(path))
    loaded = feature_extractor(model)
    for expected, actual in zip(source.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(expected, actual)


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_model("simple_cnn", num_classes=3, image_size=32, weights=str(tmp_path / "nope.weights.h5"))


def test_simple_cnn_has_no_imagenet_weights():
    with pytest.raises(ValueError, match="no ImageNet weights"):
        build_model("simple_cnn", num_classes=3, image_size=32, weights="imagenet")


def _bn_means(model):
    return [w.numpy().copy() for w in model.weights if "moving_mean" in w.path]


@pytest.mark.parametrize("bn_mode,changes", [("frozen", False), ("train", True)])
def test_bn_mode_decides_whether_batchnorm_statistics_move(bn_mode, changes):
    model = build_model("simple_cnn", num_classes=2, image_size=32, bn_mode=bn_mode)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    before = _bn_means(model)
    x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    model.train_on_batch(x, np.array([0, 1] * 4))
    moved = any(not np.allclose(a, b) for a, b in zip(before, _bn_means(model)))
    assert moved is changes
    # Inference mode must not freeze the weights: the backbone still learns.


def test_frozen_batchnorm_backbone_still_learns_and_reloads(tmp_path):
    model = build_model("simple_cnn", num_classes=2, image_size=32, bn_mode="frozen")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    kernel = model.get_layer("backbone_inference_mode").backbone.get_layer("block0_conv").kernel
    before = kernel.numpy().copy()
    x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    model.train_on_batch(x, np.array([0, 1] * 4))
    assert not np.allclose(before, kernel.numpy())
    path = tmp_path / "m.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_register_your_own_backbone():
    def tiny(input_shape, weights):
        inputs = keras.Input(input_shape)
        return keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs))

    spec = BackboneSpec("test_tiny", tiny, "unit", 32)
    register_backbone(spec, overwrite=True)
    try:
        model = build_model("test_tiny", num_classes=2)
        assert model.input_shape == (None, 32, 32, 3)
        with pytest.raises(ValueError, match="already registered"):
            register_backbone(spec)
    finally:
        BACKBONES.unregister("test_tiny")
