"""hub: backbones (R14): TF-Hub-style SavedModels load offline, fine-tune with Adam, save and reload."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import carlib
from carlib.config import ExperimentConfig
from carlib.errors import ConfigError, ModelError
from carlib.models.build import build_model, feature_extractor
from carlib.models.hub_layer import HubBackbone
from carlib.models.registry import get_backbone


@pytest.fixture(scope="session")
def exported_mobilenet(tmp_path_factory):
    """A keras.applications feature extractor exported with model.export (a 'serve' endpoint, no training mode).

    MobileNet at width 0.25: tracing the gradient of a restored SavedModel is slow (first
    Adam step: ~8 s here, ~17 s for MobileNetV3Small), and the size does not matter to the test.
    """
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNet(include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg",
                                         alpha=0.25)
    path = tmp_path_factory.mktemp("hub") / "mobilenet"
    model.export(str(path), verbose=False)
    return path


class _ReusableNet(tf.Module):
    """Shaped like a TF-Hub reusable SavedModel: obj(images, training=...) with BatchNorm-like statistics."""

    def __init__(self):
        super().__init__()
        self.kernel = tf.Variable(tf.random.stateless_normal([3, 3, 3, 8], seed=(1, 2), stddev=0.2),
                                  name="conv/kernel")
        self.moving_mean = tf.Variable(tf.zeros([8]), trainable=False, name="bn/moving_mean")
        self.projection = tf.Variable(tf.random.stateless_normal([8, 6], seed=(3, 4), stddev=0.2),
                                      name="proj/kernel")

    @tf.function
    def __call__(self, images, training=False):
        features = tf.nn.relu(tf.nn.conv2d(images, self.kernel, 1, "SAME"))
        if training:
            mean = tf.reduce_mean(features, [0, 1, 2])
            self.moving_mean.assign(0.9 * self.moving_mean + 0.1 * mean)
        else:
            mean = self.moving_mean
        return tf.matmul(tf.reduce_mean(features - mean, [1, 2]), self.projection)


@pytest.fixture(scope="session")
def saved_module(tmp_path_factory):
    """A SavedModel written by tf.saved_model.save, with a training argument and a dict serving signature."""
    net = _ReusableNet()
    spec = tf.TensorSpec([None, None, None, 3], tf.float32)
    for training in (True, False):
        net.__call__.get_concrete_function(spec, training)
    serving = tf.function(lambda images: {"features": net(images, training=False)}, input_signature=[spec])
    path = tmp_path_factory.mktemp("hub") / "reusable"
    tf.saved_model.save(net, str(path), signatures={"serving_default": serving})
    return path


def _images(n=8, size=32):
    return np.random.default_rng(0).uniform(0, 255, (n, size, size, 3)).astype("float32")


def _hub_variables(model):
    return next(layer for layer in feature_extractor(model).layers if isinstance(layer, HubBackbone))


def test_exported_model_fine_tunes_with_adam_saves_and_reloads(exported_mobilenet, tmp_path):
    name = f"hub:{exported_mobilenet}"
    model = build_model(name, num_classes=3, image_size=32, input_range="symmetric")
    hub_layer = _hub_variables(model)
    assert hub_layer.call_endpoint == "serve" and not hub_layer.accepts_training
    assert all(":" not in v.name for v in hub_layer.weights)  # re-tracked under clean names
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    before = [v.numpy().copy() for v in hub_layer.trainable_weights]
    statistics = [v.numpy().copy() for v in hub_layer.non_trainable_weights]
    x, y = _images(), np.arange(8) % 3
    scaled = x / 127.5 - 1
    features = hub_layer(scaled).numpy()
    model.train_on_batch(x, y)  # Adam: fails with "...:0_momentum is not a valid scope name" without re-tracking
    changed = [not np.allclose(a, v.numpy()) for a, v in zip(before, hub_layer.trainable_weights)]
    # A randomly initialised MobileNet has many dead ReLU6 units, so only the variables the gradient
    # reaches move (BatchNorm betas of the deeper blocks): enough to prove the SavedModel's own
    # function now computes with the fine-tuned values.
    assert sum(changed) >= 10, "fine-tuning must update the SavedModel's variables"
    assert not np.allclose(features, hub_layer(scaled).numpy())
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(statistics, hub_layer.non_trainable_weights))

    path = tmp_path / "hub_model.keras"
    model.save(path)
    with pytest.raises(ValueError, match="safe_mode"):
        keras.models.load_model(path)  # Keras refuses SavedModel code in safe mode ...
    reloaded = carlib.load_model(path)  # ... carlib's loader handles it, preprocessing included
    assert reloaded.get_layer("preprocess_symmetric") is not None
    np.testing.assert_allclose(reloaded(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)
    # The reloaded backbone holds the fine-tuned values, not the SavedModel's original ones.
    reloaded_values = [v.numpy() for v in _hub_variables(reloaded).trainable_weights]
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(reloaded_values, hub_layer.trainable_weights))
    assert any(not np.allclose(a, b) for a, b in zip(reloaded_values, before))


def test_saved_module_with_training_argument_follows_bn_mode(saved_module):
    name = f"hub:{saved_module}"
    for bn_mode, statistics_move in (("train", True), ("frozen", False)):
        model = build_model(name, num_classes=2, image_size=16, bn_mode=bn_mode)
        hub_layer = _hub_variables(model)
        assert hub_layer.call_endpoint == "__call__" and hub_layer.accepts_training
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        kernel_before = hub_layer.trainable_weights[0].numpy().copy()
        mean_before = hub_layer.non_trainable_weights[0].numpy().copy()
        model.train_on_batch(_images(4, 16), np.array([0, 1, 0, 1]))
        assert not np.allclose(kernel_before, hub_layer.trainable_weights[0].numpy())
        assert (not np.allclose(mean_before, hub_layer.non_trainable_weights[0].numpy())) is statistics_move


def test_serving_signature_with_a_dict_output(saved_module):
    layer = HubBackbone(str(saved_module), call_endpoint="serving_default")
    assert not layer.accepts_training
    assert layer(_images(2, 16)).shape == (2, 6)


def test_a_serve_only_savedmodel_refuses_bn_mode_train(exported_mobilenet):
    with pytest.raises(ValueError, match="inference mode"):
        build_model(f"hub:{exported_mobilenet}", num_classes=2, image_size=32, bn_mode="train")


def test_hub_config_validation_and_resolution(exported_mobilenet, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        ExperimentConfig(backbone=f"hub:{tmp_path / 'missing'}")
    with pytest.raises(ConfigError, match="no saved_model.pb"):
        ExperimentConfig(backbone=f"hub:{tmp_path}")
    with pytest.raises(ConfigError, match="leave weights=None"):
        ExperimentConfig(backbone=f"hub:{exported_mobilenet}", weights="imagenet")
    with pytest.raises(ConfigError, match="one opaque SavedModel layer"):
        ExperimentConfig(backbone=f"hub:{exported_mobilenet}", finetune="gradual")
    with pytest.raises(ConfigError, match="unknown hub_input_range"):
        ExperimentConfig(backbone=f"hub:{exported_mobilenet}", hub_input_range="imagenet")
    # URLs are not checked offline; they resolve through tensorflow_hub when the model is built.
    assert ExperimentConfig(backbone="hub:https://tfhub.dev/google/some/feature_vector/2").backbone.startswith("hub:")
    resolved = ExperimentConfig(backbone=f"hub:{exported_mobilenet}", image_size=32).resolved()
    assert resolved.hub_input_range == "unit"  # TF-Hub's convention unless the model's page says otherwise
    assert get_backbone(resolved.backbone).default_size == 224


def test_a_run_with_a_hub_backbone_two_stage(saved_module, fast_config):
    record = carlib.run_experiment(fast_config, backbone=f"hub:{saved_module}", hub_input_range="symmetric",
                                   finetune="two_stage", epochs=2, head_epochs=1, augmentation="none")
    assert record["status"] == "ok", record.get("error")
    assert record["config"]["hub_input_range"] == "symmetric"
    assert record["config"]["backbone"] == f"hub:{saved_module.resolve()}"
    assert [s["backbone_trainable_layers"] for s in record["training"]["stages"]] == [0, 1]
    assert record["metrics"]["val_accuracy_best"] is not None  # best.keras reloaded through carlib's loader


def test_a_fixed_size_savedmodel_names_the_size_it_accepts_in_one_line(tmp_path):
    inputs = keras.Input((32, 32, 3))
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    path = tmp_path / "fixed"
    keras.Model(inputs, features).export(str(path), verbose=False)  # a signature for 32 px images only
    with pytest.raises(ModelError) as caught:
        build_model(f"hub:{path}", 2, image_size=48)
    message = str(caught.value)
    assert "\n" not in message and "does not accept 48 px images" in message
    assert "it accepts 32 px images only: set image_size=32" in message
    assert build_model(f"hub:{path}", 2, image_size=32).output_shape == (None, 2)  # its own size works
