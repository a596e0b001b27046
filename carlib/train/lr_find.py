"""The learning-rate range test (Leslie Smith 2015, "Cyclical Learning Rates"; fastai's ``lr_find``).

Train for a few hundred steps while the learning rate grows exponentially from ``start_lr``
to ``end_lr``, record the (smoothed) loss of every step, stop once it diverges, then put the
model's weights *and* its optimizer's state back as they were. A good starting LR lies where
the loss falls fastest (``suggestion_steepest``) or in the middle of the longest descent
(``suggestion_valley``, fastai's default); it says where to start an LR study (R10), not
which LR wins.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import keras
import numpy as np

from carlib.config import as_config
from carlib.errors import ConfigError, DataError
from carlib.train.runtime import op_determinism
from carlib.train.setup import prepare_training

__all__ = ["LRFindResult", "lr_find", "lr_find_for_config", "steepest_suggestion", "valley_suggestion", "descent"]


@dataclasses.dataclass(frozen=True)
class LRFindResult:
    """The curve of an LR range test and its suggestions.

    ``lrs[i]`` is the learning rate of step ``i``, ``losses[i]`` the smoothed loss
    (bias-corrected exponential moving average), ``raw_losses[i]`` the batch loss.
    ``diverged`` tells whether the sweep stopped early because the loss exploded.
    """

    lrs: np.ndarray
    losses: np.ndarray
    raw_losses: np.ndarray
    suggestion_steepest: float | None
    suggestion_valley: float | None
    diverged: bool

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and numbers (for JSON)."""
        return {"lrs": self.lrs.tolist(), "losses": self.losses.tolist(), "raw_losses": self.raw_losses.tolist(),
                "suggestion_steepest": self.suggestion_steepest, "suggestion_valley": self.suggestion_valley,
                "diverged": self.diverged}


def _trimmed(lrs: np.ndarray, losses: np.ndarray, skip_end: int = 5) -> tuple[np.ndarray, np.ndarray]:
    # The last steps before a stop are the divergence itself; fastai drops them too.
    if len(losses) > 2 * skip_end:
        return lrs[:-skip_end], losses[:-skip_end]
    return lrs, losses


# The flat start ends where the loss has fallen by this share of its whole fall (plateau level to minimum).
FLAT_START_SHARE = 0.1


def descent(lrs: np.ndarray, losses: np.ndarray) -> tuple[int, int] | None:
    """The steps ``(start, end)`` where the loss actually falls: from the last step of the flat start to the minimum.

    The flat start (tiny LRs: nothing learns yet, and the smoothed loss of the first steps is noise)
    ends at the last step whose loss is still within :data:`FLAT_START_SHARE` of the fall from the
    plateau level (the median of the first tenth of the curve) to the minimum. ``None`` when the loss
    never falls below its plateau.
    """
    n = len(losses)
    if n < 3:
        return None
    end = int(np.argmin(losses))
    plateau = float(np.median(losses[:max(3, n // 10)]))
    fall = plateau - float(losses[end])
    if fall <= 0:
        return None
    still_flat = np.flatnonzero(losses[:end] >= plateau - FLAT_START_SHARE * fall)
    start = int(still_flat[-1]) if still_flat.size else 0
    return (start, end) if end - start >= 2 else None


def steepest_suggestion(lrs: np.ndarray, losses: np.ndarray) -> float | None:
    """The LR where the smoothed loss falls fastest against log(LR), within its descent (the flat start skipped)."""
    lrs, losses = _trimmed(np.asarray(lrs, float), np.asarray(losses, float))
    span = descent(lrs, losses)
    if span is None:
        return None
    start, end = span
    slopes = np.gradient(losses, np.log(lrs))
    return float(lrs[start + int(np.argmin(slopes[start:end + 1]))])


def valley_suggestion(lrs: np.ndarray, losses: np.ndarray) -> float | None:
    """fastai's ``valley``: the LR at 1/2 of the way into the longest decreasing stretch of the loss.

    The longest decreasing subsequence marks the valley; its start and end are the LRs
    where learning begins and where it stops paying off. It is looked for from the end of the
    flat start on (:func:`descent`), where the noise of the first steps cannot make a stretch.
    """
    lrs, losses = _trimmed(np.asarray(lrs, float), np.asarray(losses, float))
    span = descent(lrs, losses)
    if span is None:
        return None
    lrs, losses = lrs[span[0]:], losses[span[0]:]
    n = len(losses)
    if n < 3:
        return None
    longest = np.ones(n, dtype=int)
    end = 0
    for i in range(1, n):
        earlier = longest[:i][losses[:i] > losses[i]]
        if earlier.size:
            longest[i] = earlier.max() + 1
        if longest[i] > longest[end]:
            end = i
    start = end - longest[end] + 1
    sections = (end - start) / 3
    index = start + int(sections) + int(sections / 2)
    return float(lrs[min(index, n - 1)])


def _batches(dataset):
    """Endless batches: a tf.data dataset repeats; any other iterable is iterated again when exhausted."""
    if hasattr(dataset, "repeat"):
        yield from dataset.repeat()
        return
    while True:
        produced = False
        for batch in dataset:
            produced = True
            yield batch
        if not produced:
            raise DataError("lr_find: the dataset yielded no batches.")


def lr_find(model: keras.Model, dataset, *, start_lr: float = 1e-7, end_lr: float = 10.0, steps: int = 200,
            stop_factor: float = 4.0, smoothing: float = 0.98) -> LRFindResult:
    """Run an LR range test on a compiled ``model``; its weights, optimizer state and LR are restored afterwards.

    ``dataset`` yields ``(images, labels)`` batches (a ``tf.data.Dataset`` is repeated as
    needed). The LR grows from ``start_lr`` to ``end_lr`` over ``steps`` steps; the test
    stops early when the smoothed loss exceeds ``stop_factor`` × its minimum or is not
    finite. ``smoothing`` is the EMA factor of the loss curve (fastai's 0.98).
    """
    if not 0 < start_lr < end_lr:
        raise ConfigError(f"start_lr={start_lr!r}, end_lr={end_lr!r}: expected 0 < start_lr < end_lr, e.g. 1e-7 and 10.")
    if steps < 5:
        raise ConfigError(f"steps={steps!r} is too few: use 50 or more (fastai uses 100).")
    if stop_factor <= 1:
        raise ConfigError(f"stop_factor={stop_factor!r}: expected a factor > 1 (4 stops when the loss quadruples).")
    if not 0 <= smoothing < 1:
        raise ConfigError(f"smoothing={smoothing!r}: expected a factor in [0, 1).")
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or not getattr(model, "compiled", False):
        raise ConfigError("lr_find needs a compiled model (an optimizer and a loss): call model.compile(...) first.")
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # mixed precision wraps it in a LossScaleOptimizer
    if isinstance(inner._learning_rate, keras.optimizers.schedules.LearningRateSchedule):
        raise ConfigError("lr_find sets the learning rate step by step, but this optimizer follows a "
                         "LearningRateSchedule: compile with a plain float learning rate for the test.")
    if not optimizer.built:  # build now, so the state restored afterwards includes every slot variable
        optimizer.build(model.trainable_variables)
    model_state = [v.numpy().copy() for v in model.variables]
    optimizer_state = [v.numpy().copy() for v in optimizer.variables]
    lrs, raw, smoothed = [], [], []
    average, best, diverged = 0.0, math.inf, False
    ratio = (end_lr / start_lr) ** (1 / (steps - 1))
    try:
        for step, batch in enumerate(_batches(dataset)):
            if step >= steps:
                break
            lr = start_lr * ratio**step
            optimizer.learning_rate = lr
            x, y = batch[0], batch[1]
            loss = model.train_on_batch(x, y, return_dict=True)["loss"]
            lrs.append(lr)
            raw.append(float(loss))
            average = smoothing * average + (1 - smoothing) * float(loss)
            value = average / (1 - smoothing ** (step + 1))
            smoothed.append(value)
            if not math.isfinite(value) or value > stop_factor * best:
                diverged = True
                break
            best = min(best, value)
    finally:
        for variable, value in zip(model.variables, model_state):
            variable.assign(value)
        for variable, value in zip(optimizer.variables, optimizer_state):
            variable.assign(value)
        model.reset_metrics()
        model.stop_training = False
    lrs_array, losses = np.asarray(lrs), np.asarray(smoothed)
    finite = np.isfinite(losses)
    return LRFindResult(lrs_array, losses, np.asarray(raw), steepest_suggestion(lrs_array[finite], losses[finite]),
                        valley_suggestion(lrs_array[finite], losses[finite]), diverged)


def lr_find_for_config(config=None, *, start_lr: float = 1e-7, end_lr: float = 10.0, steps: int = 100,
                       stop_factor: float = 4.0, smoothing: float = 0.98,
                       **overrides: Any) -> LRFindResult:
    """An LR range test on the model and training data of a run configuration.

    ``config`` is an :class:`~carlib.config.ExperimentConfig` or a mapping of parameters (as
    for :func:`carlib.run_experiment`); ``overrides`` change single parameters. The model,
    its preprocessing, its first fine-tuning stage's trainability, the optimizer, the
    training split and its augmentation are built exactly as the run would build them
    (:func:`carlib.train.setup.prepare_training`); nothing is written to the results store.
    100 steps of ``simple_cnn`` at 32–64 px take seconds on a CPU.
    """
    config = as_config(config, **overrides)
    with op_determinism(config.deterministic):
        setup = prepare_training(config)
        return lr_find(setup.model, setup.train_ds, start_lr=start_lr, end_lr=end_lr, steps=steps,
                       stop_factor=stop_factor, smoothing=smoothing)

