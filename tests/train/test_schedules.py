"""Learning-rate schedules (R10): the LR of every epoch, as a pure function and through real fits."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from carlib.config import ExperimentConfig
from carlib.train.schedules import LearningRateController, lr_at_epoch, step_boundaries
from carlib.train.stages import Stage


# ---------------------------------------------------------------- the pure function
def test_constant_is_constant():
    assert [lr_at_epoch(e, lr=0.01, schedule="constant", epochs=5) for e in range(5)] == [0.01] * 5


def test_step_decays_after_half_and_three_quarters_by_default():
    assert step_boundaries(8) == (4, 6)
    lrs = [lr_at_epoch(e, lr=1.0, schedule="step", epochs=8, lr_factor=0.1) for e in range(8)]
    assert lrs == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01])


def test_step_with_explicit_boundaries():
    lrs = [lr_at_epoch(e, lr=1.0, schedule="step", epochs=6, lr_factor=0.5, lr_boundaries=(2,)) for e in range(6)]
    assert lrs == pytest.approx([1, 1, 0.5, 0.5, 0.5, 0.5])


def test_cosine_starts_at_lr_and_decays_monotonically_to_near_zero():
    lrs = [lr_at_epoch(e, lr=1.0, schedule="cosine", epochs=10) for e in range(10)]
    assert lrs[0] == 1.0
    assert lrs[5] == pytest.approx(0.5)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert 0 < lrs[-1] < 0.05


@pytest.mark.parametrize("schedule", ["constant", "step", "cosine", "plateau"])
def test_warmup_ramps_linearly_then_the_schedule_starts_at_lr(schedule):
    lrs = [lr_at_epoch(e, lr=0.3, schedule=schedule, epochs=10, warmup_epochs=2) for e in range(4)]
    assert lrs[:3] == pytest.approx([0.1, 0.2, 0.3])  # the first epoch after the warm-up runs at lr
    assert lrs[3] <= 0.3


def test_cosine_after_warmup_spans_the_remaining_epochs():
    lrs = [lr_at_epoch(e, lr=1.0, schedule="cosine", epochs=6, warmup_epochs=2) for e in range(6)]
    assert lrs[2] == 1.0 and lrs[4] == pytest.approx(0.5)


# ----------------------------------------------------------------- through a real fit
def _tiny_model(lr: float) -> keras.Model:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=lr), loss="sparse_categorical_crossentropy")
    return model


_X = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
_Y = np.arange(32) % 2


class _ScriptedMonitor(keras.callbacks.Callback):
    """Replaces ``val_loss`` in each epoch's logs with a scripted value (runs before the controller)."""

    def __init__(self, values):
        super().__init__()
        self.values = values

    def on_epoch_end(self, epoch, logs=None):
        logs["val_loss"] = self.values[epoch]


def _fit_lrs(config: ExperimentConfig, callbacks=(), epochs=None) -> list[float]:
    model = _tiny_model(config.lr)
    history = model.fit(_X, _Y, batch_size=16, epochs=epochs or config.epochs, verbose=0,
                        callbacks=[*callbacks, LearningRateController(config, monitor="val_loss")])
    return history.history["learning_rate"]


@pytest.mark.parametrize("schedule,warmup", [("constant", 0), ("step", 0), ("cosine", 0), ("cosine", 2),
                                             ("step", 1), ("constant", 2)])
def test_each_epoch_trains_at_the_scheduled_lr(schedule, warmup):
    config = ExperimentConfig(lr=0.2, schedule=schedule, epochs=6, warmup_epochs=warmup, lr_factor=0.5)
    expected = [lr_at_epoch(e, lr=0.2, schedule=schedule, epochs=6, lr_factor=0.5, warmup_epochs=warmup)
                for e in range(6)]
    assert _fit_lrs(config) == pytest.approx(expected, rel=1e-6)


def test_plateau_cuts_the_lr_after_patience_epochs_without_improvement():
    config = ExperimentConfig(lr=0.1, schedule="plateau", epochs=7, lr_patience=2, lr_factor=0.5)
    # improves, improves, flat, flat (-> cut), improves, flat, flat (-> cut after the last epoch)
    losses = [1.0, 0.9, 0.95, 0.92, 0.5, 0.6, 0.7]
    lrs = _fit_lrs(config, [_ScriptedMonitor(losses)])
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05])


def test_plateau_waits_for_the_warmup_and_then_starts_at_lr():
    # Losses that never improve: a detector counting warm-up epochs would cut during or right after the ramp.
    config = ExperimentConfig(lr=0.3, schedule="plateau", epochs=7, warmup_epochs=2, lr_patience=2, lr_factor=0.5)
    lrs = _fit_lrs(config, [_ScriptedMonitor([1.0] * 7)])
    # ramp 0.1, 0.2; epoch 3 at lr (first value watched), epochs 4-5 flat -> cut before epoch 6
    assert lrs == pytest.approx([0.1, 0.2, 0.3, 0.3, 0.3, 0.15, 0.15])


def test_the_schedule_continues_across_fit_calls_and_scales_per_stage():
    config = ExperimentConfig(lr=0.2, schedule="step", epochs=4, lr_boundaries=(3,), lr_factor=0.5)
    controller = LearningRateController(config, monitor="val_loss")
    model = _tiny_model(config.lr)
    first = model.fit(_X, _Y, epochs=2, verbose=0, callbacks=[controller])
    # the stage that unfreezes the backbone passes its factor in, and compiles with the schedule's rate
    start = controller.begin_stage(Stage("full", 2, 4, 1.0, 0.1))
    assert start == pytest.approx(0.02)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=start), loss="sparse_categorical_crossentropy")
    second = model.fit(_X, _Y, initial_epoch=2, epochs=4, verbose=0, callbacks=[controller])
    lrs = first.history["learning_rate"] + second.history["learning_rate"]
    assert lrs == pytest.approx([0.2, 0.2, 0.02, 0.01])
