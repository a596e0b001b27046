"""The callbacks every run uses besides the schedule: epoch timing, one line per epoch, a best-only checkpoint
that never saves a diverged epoch (R2), and early stopping that spans fine-tuning stages."""

from __future__ import annotations

import math
import os
import time
from typing import Sequence

import keras

from carlib.models.build import add_class_names

__all__ = ["EpochTimer", "EpochLine", "FiniteModelCheckpoint", "StageSpanningEarlyStopping"]


class EpochTimer(keras.callbacks.Callback):
    """Adds each epoch's wall time (``epoch_time_s``) and the part spent training (``train_time_s``,
    without the validation pass) to its logs."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._validation = 0.0

    def on_test_begin(self, logs=None):
        self._test_start = time.perf_counter()

    def on_test_end(self, logs=None):
        self._validation += time.perf_counter() - getattr(self, "_test_start", time.perf_counter())

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_time_s"] = time.perf_counter() - self._start
            logs["train_time_s"] = logs["epoch_time_s"] - self._validation


class FiniteModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """The best-only checkpoint, which never saves the weights of an epoch whose loss is NaN or infinite:
    a diverged run keeps its best checkpoint so far (an exploded model can still score a high accuracy).

    With ``class_names``, every file it saves carries them (:func:`carlib.models.build.save_model`'s format),
    so ``carlib predict`` can name the classes of ``best.keras`` with nothing else present.
    """

    def __init__(self, filepath, *args, class_names: Sequence[str] | None = None, **kwargs):
        super().__init__(filepath, *args, **kwargs)
        self.class_names = tuple(class_names) if class_names is not None else None

    def on_epoch_end(self, epoch, logs=None):
        if logs and not math.isfinite(float(logs.get("loss", 0.0))):
            return
        super().on_epoch_end(epoch, logs)

    def _save_model(self, epoch, batch, logs):
        path = self._get_file_path(epoch, batch, logs)
        before = _file_state(path)
        super()._save_model(epoch, batch, logs)
        if self.class_names is not None and _file_state(path) not in (before, None):
            add_class_names(path, self.class_names)  # Keras wrote a new file: name its classes


def _file_state(path) -> tuple[int, int, int] | None:
    try:
        stat = os.stat(path)
    except (OSError, TypeError):
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


class EpochLine(keras.callbacks.Callback):
    """One line per epoch — ``epoch 3/12: loss 1.912, accuracy 0.3125, …, learning_rate 0.001 (4.1 s)`` —
    instead of Keras' progress output, which is a bar in notebooks and two lines per epoch with ``verbose=2``."""

    def __init__(self, total_epochs: int):
        super().__init__()
        self.total_epochs = total_epochs

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        seconds = logs.pop("epoch_time_s", None)
        logs.pop("train_time_s", None)
        values = ", ".join(f"{name} {float(value):.4g}" for name, value in logs.items())
        took = f" ({seconds:.1f} s)" if seconds is not None else ""
        print(f"epoch {epoch + 1}/{self.total_epochs}: {values}{took}", flush=True)


class StageSpanningEarlyStopping(keras.callbacks.EarlyStopping):
    """``EarlyStopping`` whose patience and best value carry over the ``fit`` calls of one run's stages."""

    def on_train_begin(self, logs=None):
        if not getattr(self, "_started", False):
            super().on_train_begin(logs)
            self._started = True
