"""Learning-rate schedules by name (R10): ``constant``, ``step``, ``plateau``, ``cosine``, with an optional warm-up.

One callback, :class:`LearningRateController`, is the only writer of a run's learning rate:
it sets the optimizer's rate at the start of every epoch from ``lr``, the warm-up, the named
schedule, the plateau cuts so far and the current fine-tuning stage's factor (which the stage
passes in with :meth:`LearningRateController.begin_stage`). The rate of every epoch lands in
the run's history (column ``learning_rate``), so a learning-curve plot can show it.
"""

from __future__ import annotations

import math

import keras

from carlib.config import SCHEDULES, ExperimentConfig
from carlib.errors import ConfigError

__all__ = ["SCHEDULES", "LearningRateController", "lr_at_epoch", "step_boundaries"]


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
    raise ConfigError(f"unknown schedule {schedule!r}. Known: {', '.join(SCHEDULES)}.")


class LearningRateController(keras.callbacks.Callback):
    """The one writer of a run's learning rate: sets it each epoch for every schedule, and logs it (``learning_rate``).

    One callback for warm-up, the epoch-wise schedules and ``plateau`` (the rule of
    ``keras.callbacks.ReduceLROnPlateau``: multiply by ``lr_factor`` after ``lr_patience``
    epochs whose ``monitor`` did not improve by ``min_delta``, never below ``lr * 1e-4``),
    because two interacting callbacks got warm-up wrong: the plateau detector counted
    epochs while the LR was still ramping up, and the first post-warm-up epoch kept the
    ramped value. Here the plateau detector starts after the warm-up, and the first epoch
    after it runs at ``lr``.

    Its state survives several ``fit`` calls: fine-tuning stages continue one schedule with
    ``initial_epoch``, and each stage passes its factor in with :meth:`begin_stage` (how a
    stage that unfreezes the backbone trains at ``lr × finetune_lr_factor``).
    """

    def __init__(self, config: ExperimentConfig, *, monitor: str, min_delta: float = 1e-4):
        super().__init__()
        self.config = config
        self.monitor = monitor
        self.mode = "min" if monitor.endswith("loss") else "max"
        self.min_delta = min_delta
        self.stage_factor = 1.0  # the current fine-tuning stage's factor
        self.reductions = 0  # plateau: how many times the LR was cut
        self.best: float | None = None
        self.wait = 0

    def begin_stage(self, stage) -> float:
        """Enter a fine-tuning stage (a :class:`~carlib.train.stages.Stage`): its ``lr_factor`` applies from now on.

        Returns the learning rate of the stage's first epoch, for the optimizer the stage compiles.
        """
        self.stage_factor = float(stage.lr_factor)
        return self.learning_rate(stage.first_epoch)

    def base_lr(self, epoch: int) -> float:
        """The schedule's learning rate for 0-based ``epoch``, before the stage's factor."""
        config = self.config
        if config.schedule == "plateau" and epoch >= config.warmup_epochs:
            return max(config.lr * config.lr_factor ** self.reductions, config.lr * 1e-4)
        return lr_at_epoch(epoch, lr=config.lr, schedule=config.schedule, epochs=config.epochs,
                           lr_factor=config.lr_factor, lr_boundaries=config.lr_boundaries,
                           warmup_epochs=config.warmup_epochs)

    def learning_rate(self, epoch: int) -> float:
        """The learning rate 0-based ``epoch`` trains at: the schedule's, times the stage's factor."""
        return self.stage_factor * self.base_lr(epoch)

    def on_epoch_begin(self, epoch, logs=None):
        self.model.optimizer.learning_rate = self.learning_rate(epoch)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if self.config.schedule == "plateau" and epoch >= self.config.warmup_epochs:
            self._watch_plateau(logs.get(self.monitor))
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def _watch_plateau(self, current) -> None:
        if current is None or not math.isfinite(current):
            return
        improved = self.best is None or (current < self.best - self.min_delta if self.mode == "min"
                                         else current > self.best + self.min_delta)
        if improved:
            self.best, self.wait = current, 0
            return
        self.wait += 1
        if self.wait >= self.config.lr_patience:
            self.reductions += 1
            self.wait = 0
