"""Fine-tuning strategies (R18), BatchNorm modes (R13), head variants (R16, R17), early stopping."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

import carlib
from carlib.config import OPTIMIZERS, ExperimentConfig
from carlib.errors import ConfigError
from carlib.models.build import build_model, feature_extractor
from carlib.models.registry import get_backbone
from carlib.train.stages import KERAS_OPTIMIZERS, finetune_stages, set_backbone_trainable


@pytest.fixture(scope="session")
def cnn_weights(tmp_path_factory):
    """A local 'pretrained' simple_cnn backbone weights file (fine-tuning strategies need one)."""
    path = tmp_path_factory.mktemp("weights") / "simple_cnn.weights.h5"
    keras.utils.set_random_seed(123)
    get_backbone("simple_cnn").build((32, 32, 3), None).save_weights(path)
    return str(path)


def _batch(n=8, size=32):
    x = np.random.default_rng(0).uniform(0, 255, (n, size, size, 3)).astype("float32")
    return x, np.arange(n) % 2


# ------------------------------------------------------------------------ stages
@pytest.mark.parametrize("finetune,expected", [
    ("full", [("full", 0, 6, 1.0, 1.0)]),
    ("head", [("head", 0, 6, 0.0, 1.0)]),
    ("two_stage", [("head", 0, 2, 0.0, 1.0), ("full", 2, 6, 1.0, 0.1)]),
    ("gradual", [("head", 0, 2, 0.0, 1.0), ("unfreeze 1/3", 2, 4, 1 / 3, 0.1), ("unfreeze 2/3", 4, 5, 2 / 3, 0.1),
                 ("unfreeze 3/3", 5, 6, 1.0, 0.1)]),
])
def test_stages_cover_every_epoch_once(finetune, expected, cnn_weights):
    config = ExperimentConfig(finetune=finetune, epochs=6, head_epochs=2, unfreeze_stages=3, weights=cnn_weights)
    stages = finetune_stages(config)
    got = [(s.name, s.first_epoch, s.end_epoch, round(s.backbone_fraction, 6), s.lr_factor) for s in stages]
    assert got == [(n, a, b, round(f, 6), lr) for n, a, b, f, lr in expected]


@pytest.mark.parametrize("params,message", [
    (dict(finetune="head"), "weights=None leaves it random"),
    (dict(finetune="two_stage", backbone="efficientnet_lite0", weights="imagenet", epochs=2, head_epochs=2), "at least 3"),
    (dict(finetune="gradual", backbone="efficientnet_lite0", weights="imagenet", epochs=3, head_epochs=1, unfreeze_stages=3), "at least 4"),
    (dict(finetune="unfreeze"), "unknown finetune"),
    (dict(head_hidden_units=-1), "head_hidden_units"),
    (dict(early_stopping_patience=-2), "early_stopping_patience"),
    (dict(finetune_lr_factor=2), "finetune_lr_factor"),
])
def test_nonsensical_finetuning_fails_with_the_fix(params, message):
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig(**params)


def test_every_optimizer_the_config_accepts_is_a_keras_optimizer():
    assert set(KERAS_OPTIMIZERS) == set(OPTIMIZERS)
    for name, class_name in KERAS_OPTIMIZERS.items():
        assert issubclass(getattr(keras.optimizers, class_name), keras.optimizers.Optimizer), name


def test_set_backbone_trainable_unfreezes_from_the_top():
    model = build_model("simple_cnn", num_classes=3, image_size=32, bn_mode="frozen")
    inner = feature_extractor(model)
    weighted = [layer for layer in inner.layers if layer.weights]  # 4 × (conv, BN)
    assert set_backbone_trainable(model, 0.0) == 0
    assert not any(w for layer in weighted for w in layer.trainable_weights)
    assert [w.path for w in model.trainable_weights] == ["classifier/kernel", "classifier/bias"]
    assert set_backbone_trainable(model, 0.5) == 4
    assert [bool(layer.trainable_weights) for layer in weighted] == [False] * 4 + [True] * 4
    assert set_backbone_trainable(model, 1.0) == 8
    assert all(layer.trainable_weights for layer in weighted)


def _moving_means(model):
    return [w.numpy().copy() for w in feature_extractor(model).weights if "moving_mean" in w.path]


def _kernels(model):
    return [w.numpy().copy() for w in feature_extractor(model).weights if "kernel" in w.path]


@pytest.mark.parametrize("bn_mode,fraction,stats_move,backbone_learns", [
    ("frozen", 1.0, False, True),  # fine-tune with BatchNorm in inference mode (R13)
    ("train", 1.0, True, True),
    ("train", 0.0, False, False),  # a frozen layer runs BatchNorm in inference mode, whatever bn_mode says
    ("frozen", 0.0, False, False),
    ("train", 0.5, True, True),  # gradual: the unfrozen top layers' statistics move
])
def test_batchnorm_statistics_move_only_when_they_should(bn_mode, fraction, stats_move, backbone_learns):
    model = build_model("simple_cnn", num_classes=2, image_size=32, bn_mode=bn_mode, dropout=0)
    set_backbone_trainable(model, fraction)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    means, kernels = _moving_means(model), _kernels(model)
    head = model.get_layer("classifier").kernel.numpy().copy()
    model.train_on_batch(*_batch())
    assert any(not np.allclose(a, b) for a, b in zip(means, _moving_means(model))) is stats_move
    assert any(not np.allclose(a, b) for a, b in zip(kernels, _kernels(model))) is backbone_learns
    assert not np.allclose(head, model.get_layer("classifier").kernel.numpy())
    if fraction == 0.5:  # the lower half stays exactly as it was, statistics included
        np.testing.assert_array_equal(means[0], _moving_means(model)[0])
        np.testing.assert_array_equal(kernels[0], _kernels(model)[0])


# -------------------------------------------------------------------------- heads
def test_head_variants_hidden_dense_and_batchnorm(tmp_path):
    model = build_model("simple_cnn", num_classes=5, image_size=32, hidden_units=16, head_batchnorm=True)
    names = [layer.name for layer in model.layers]
    assert names[-4:] == ["head_bn", "head_hidden", "head_dropout", "classifier"]
    assert model.get_layer("head_hidden").units == 16
    plain = build_model("simple_cnn", num_classes=5, image_size=32)
    assert not {"head_bn", "head_hidden"} & {layer.name for layer in plain.layers}  # R17: no hidden layer by default
    model.save(tmp_path / "m.keras")
    x, _ = _batch(2)
    np.testing.assert_allclose(keras.models.load_model(tmp_path / "m.keras").predict(x, verbose=0),
                               model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ through runs
def _backbone_kernels(path):
    return _kernels(keras.models.load_model(path))


def test_head_strategy_never_changes_the_backbone(fast_config, cnn_weights):
    record = carlib.run_experiment(fast_config, weights=cnn_weights, finetune="head", epochs=2, bn_mode="train",
                                   head_hidden_units=8, head_batchnorm=True)
    assert record["status"] == "ok"
    assert record["config"]["finetune"] == "head" and record["config"]["head_hidden_units"] == 8
    assert record["config"]["head_batchnorm"] is True
    reference = get_backbone("simple_cnn").build((32, 32, 3), cnn_weights)
    expected = [w.numpy() for w in reference.weights if "kernel" in w.path]
    for a, b in zip(expected, _backbone_kernels(record["checkpoint"]["last"])):
        np.testing.assert_array_equal(a, b)
    assert [s["backbone_trainable_layers"] for s in record["training"]["stages"]] == [0]


def test_gradual_unfreezing_continues_one_history_and_one_best_checkpoint(fast_config, cnn_weights):
    record = carlib.run_experiment(fast_config, weights=cnn_weights, finetune="gradual", epochs=3, head_epochs=1,
                                   unfreeze_stages=2, lr=2e-3, finetune_lr_factor=0.5)
    assert record["status"] == "ok"
    history = record["history"]
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert [row["learning_rate"] for row in history] == pytest.approx([2e-3, 1e-3, 1e-3])
    stages = record["training"]["stages"]
    assert [(s["name"], s["first_epoch"], s["last_epoch"]) for s in stages] == [
        ("head", 1, 1), ("unfreeze 1/2", 2, 2), ("unfreeze 2/2", 3, 3)]
    assert [s["backbone_trainable_layers"] for s in stages] == [0, 4, 8]
    assert stages[0]["trainable_params"] < stages[1]["trainable_params"] < stages[2]["trainable_params"]
    assert Path(record["run_dir"], "history.csv").read_text().count("\n") == 4  # header + 3 epochs
    best = max(history, key=lambda row: row["val_accuracy"])  # the checkpoint followed all stages
    assert record["metrics"]["best_epoch"] == best["epoch"]
    assert record["metrics"]["val_accuracy_best"] == pytest.approx(best["val_accuracy"], abs=1e-6)
    pretrained = _kernels(build_model("simple_cnn", 10, 32, weights=cnn_weights))
    # The last stage unfroze everything, so every kernel was fine-tuned (partial stages: the BatchNorm test above).
    assert all(not np.allclose(a, b) for a, b in zip(pretrained, _backbone_kernels(record["checkpoint"]["last"])))


def test_early_stopping_is_off_by_default_and_ends_a_stalled_run(fast_config):
    # SGD at a negligible LR with inference-mode BatchNorm: validation accuracy cannot improve.
    stalled = dict(optimizer="sgd", lr=1e-12, bn_mode="frozen", augmentation="none", epochs=4)
    assert ExperimentConfig().early_stopping_patience == 0
    record = carlib.run_experiment(fast_config, **stalled, early_stopping_patience=1)
    assert record["status"] == "ok"
    assert len(record["history"]) == 2 and record["training"]["stopped_early_after_epoch"] == 2
