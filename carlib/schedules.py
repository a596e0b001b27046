"""Learning-rate schedules by name (R10): ``constant``, ``step``, ``plateau``, ``cosine``.

Each is a Keras callback; the learning rate of every epoch lands in the run's history
(column ``learning_rate``), so a learning-curve plot can show it.
"""

from __future__ import annotations

import math

import keras

__all__ = ["SCHEDULES", "lr_at_epoch", "schedule_callbacks", "step_boundaries"]

SCHEDULES = ("constant", "step", "plateau", "cosine")


def step_boundaries(epochs: int, boundaries: tuple[int, ...] = ()) -> tuple[int, ...]:
    """Numbers of completed epochs after which the step schedule multiplies the LR by ``lr_factor``.

    Default: after 50% and 75% of the epochs.
    """
    if boundaries:
        return tuple(sorted(boundaries))
    return tuple(sorted({max(1, math.ceil(epochs * 0.5)), max(1, math.ceil(epochs * 0.75))}))


def lr_at_epoch(epoch: int, *, lr: float, schedule: str, epochs: int, lr_factor: float = 0.1,
                lr_boundaries: tuple[int, ...] = (), warmup_epochs: int = 0) -> float:
    """The learning rate of 0-based ``epoch`` for the epoch-wise schedules (``plateau`` reacts to metrics instead).

    A linear warm-up over ``warmup_epochs`` applies to every schedule.
    """
    if warmup_epochs and epoch < warmup_epochs:
        return lr * (epoch + 1) / (warmup_epochs + 1)
    if schedule in ("constant", "plateau"):
        return lr
    if schedule == "step":
        return lr * lr_factor ** sum(epoch >= b for b in step_boundaries(epochs, lr_boundaries))
    if schedule == "cosine":
        span = max(1, epochs - warmup_epochs)
        progress = (epoch - warmup_epochs) / span
        return lr * 0.5 * (1 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r}. Known: {', '.join(SCHEDULES)}.")


class _LearningRateLogger(keras.callbacks.Callback):
    """Writes the optimizer's current learning rate into each epoch's logs."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


def schedule_callbacks(config, *, monitor: str) -> list[keras.callbacks.Callback]:
    """The callbacks that implement ``config.schedule``; ``monitor`` is what ``plateau`` watches."""
    callbacks: list[keras.callbacks.Callback] = []
    if config.schedule != "constant" or config.warmup_epochs:
        def schedule(epoch, current_lr):
            if config.schedule == "plateau" and epoch >= config.warmup_epochs:
                return current_lr  # ReduceLROnPlateau owns the LR after the warm-up
            return lr_at_epoch(epoch, lr=config.lr, schedule=config.schedule, epochs=config.epochs,
                               lr_factor=config.lr_factor, lr_boundaries=config.lr_boundaries,
                               warmup_epochs=config.warmup_epochs)
        callbacks.append(keras.callbacks.LearningRateScheduler(schedule))
    if config.schedule == "plateau":
        mode = "min" if monitor.endswith("loss") else "max"
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor=monitor, mode=mode, factor=config.lr_factor,
                                                           patience=config.lr_patience, min_lr=config.lr * 1e-4))
    callbacks.append(_LearningRateLogger())
    return callbacks
