"""The LR range test: an exponential sweep that stops on divergence and leaves the model as it found it."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from matplotlib.figure import Figure

import carlib
from carlib.models.build import build_model
from carlib.train.lr_find import LRFindResult, descent, lr_find, steepest_suggestion, valley_suggestion


def _dataset(n=64, size=32, batch=16):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (n, size, size, 3)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x, np.arange(n) % 3)).batch(batch)


def _compiled(optimizer):
    keras.utils.set_random_seed(0)
    model = build_model("simple_cnn", num_classes=3, image_size=32, bn_mode="train")
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def test_weights_optimizer_state_and_lr_are_restored():
    model = _compiled(keras.optimizers.Adam(learning_rate=1e-3))
    model.fit(_dataset(), epochs=1, verbose=0, shuffle=False)  # the optimizer has moments and an iteration count
    weights = [v.numpy().copy() for v in model.variables]  # BatchNorm statistics and RNG state included
    optimizer_state = [v.numpy().copy() for v in model.optimizer.variables]
    result = lr_find(model, _dataset(), steps=30, start_lr=1e-5, end_lr=1.0)
    assert len(result.lrs) == 30 or result.diverged
    for before, variable in zip(weights, model.variables):
        np.testing.assert_array_equal(before, variable.numpy(), err_msg=variable.path)
    assert len(optimizer_state) == len(model.optimizer.variables)
    for before, variable in zip(optimizer_state, model.optimizer.variables):
        np.testing.assert_array_equal(before, variable.numpy(), err_msg=variable.path)
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-3)


def test_an_unbuilt_optimizer_is_restored_too():
    model = _compiled(keras.optimizers.Adam(learning_rate=3e-4))
    weights = [v.numpy().copy() for v in model.trainable_variables]
    lr_find(model, _dataset(), steps=10)
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(weights, model.trainable_variables))
    assert all(not np.any(v.numpy()) for v in model.optimizer.variables if "momentum" in v.path or "velocity" in v.path)
    assert int(model.optimizer.iterations.numpy()) == 0


def test_the_sweep_is_exponential_and_stops_when_the_loss_explodes():
    model = _compiled(keras.optimizers.SGD(learning_rate=0.01))
    result = lr_find(model, _dataset(), start_lr=1e-4, end_lr=1e6, steps=100)
    assert result.diverged and len(result.lrs) < 100
    ratios = result.lrs[1:] / result.lrs[:-1]
    np.testing.assert_allclose(ratios, (1e6 / 1e-4) ** (1 / 99), rtol=1e-9)
    assert result.lrs[0] == pytest.approx(1e-4)
    for suggestion in (result.suggestion_steepest, result.suggestion_valley):
        assert suggestion is None or result.lrs[0] <= suggestion <= result.lrs[-1]


def test_suggestions_on_a_known_curve():
    lrs = np.logspace(-6, 1, 141)
    x = np.log10(lrs)
    # Flat, then falls fastest at 1e-3 (a logistic step), bottoms out, then explodes after 1e-1.
    losses = 2.0 - 1.5 / (1 + np.exp(-4 * (x + 3))) + np.where(x > -1, 20 * (x + 1) ** 2, 0)
    assert steepest_suggestion(lrs, losses) == pytest.approx(1e-3, rel=0.15)
    valley = valley_suggestion(lrs, losses)
    assert 1e-4 < valley < 1e-1


def test_bad_arguments_name_the_fix():
    model = build_model("simple_cnn", num_classes=3, image_size=32)
    with pytest.raises(ValueError, match="compile"):
        lr_find(model, _dataset())
    compiled = _compiled("adam")
    with pytest.raises(ValueError, match="start_lr"):
        lr_find(compiled, _dataset(), start_lr=1.0, end_lr=1e-3)
    schedule = keras.optimizers.schedules.ExponentialDecay(1e-3, 10, 0.9)
    with pytest.raises(ValueError, match="LearningRateSchedule"):
        lr_find(_compiled(keras.optimizers.Adam(learning_rate=schedule)), _dataset())


def test_lr_find_for_config_builds_the_run_model_and_writes_nothing(fast_config, results_dir):
    result = carlib.lr_find_for_config(fast_config, steps=40, start_lr=1e-6, end_lr=1.0)
    assert isinstance(result, LRFindResult) and 10 <= len(result.lrs) <= 40
    assert np.isfinite(result.losses[0]) and result.suggestion_valley is not None
    assert not results_dir.exists()  # a range test is not a run: no record, no run folder
    figure = carlib.plot_lr_find(result)
    assert isinstance(figure, Figure)
    axes = figure.axes[0]
    assert axes.get_xscale() == "log" and len(axes.lines) >= 3  # raw, smoothed, at least one suggestion


def test_suggestions_skip_the_noisy_flat_start():
    lrs = np.logspace(-7, 1, 161)
    x = np.log10(lrs)
    rng = np.random.default_rng(0)
    # Flat at 2.3 up to ~1e-4 with noise, a spurious sharp dip at 3e-7 (the first noisy steps), then a real fall
    # around 1e-3 and an explosion past 1e-1.
    losses = 2.3 - 1.6 / (1 + np.exp(-5 * (x + 3))) + rng.normal(0, 0.01, len(x)) + np.where(x > -1, 20 * (x + 1) ** 2, 0)
    losses[8] -= 0.3  # steeper than the real fall: the old steepest suggestion picked it (2.2e-07)
    start, end = descent(lrs, losses)
    assert lrs[start] > 1e-5 and 1e-2 < lrs[end] < 2e-1
    for suggestion in (steepest_suggestion(lrs, losses), valley_suggestion(lrs, losses)):
        assert 1e-4 < suggestion < 1e-1, suggestion  # where the loss actually falls, never at 3e-7
    assert steepest_suggestion(lrs, np.full(50, 2.3)) is None and valley_suggestion(lrs[:50], np.full(50, 2.3)) is None
