"""The one experiment function (R8): a config goes in, a trained model and one record come out.

It replaces the notebook's pasted training cells: ``model.fit`` (R3), a best-only
checkpoint on validation accuracy (R2), best and last weights saved under different names
and *both* evaluated on the clean validation set (R4), and every number written to the
results store together with the resolved config that produced it (R7).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Mapping

import keras
import numpy as np
import tensorflow as tf

from carlib import backbones, resume, training
from carlib.config import ExperimentConfig
from carlib.results import RECORD_SCHEMA, ResultsStore, new_run_id
from carlib.schedules import LearningRateController, schedule_callbacks

__all__ = ["run_experiment", "as_config", "environment_info", "divergence_message"]


def as_config(config: ExperimentConfig | Mapping[str, Any] | None = None, **overrides: Any) -> ExperimentConfig:
    """Accept a config, a mapping of parameters or keyword overrides; unknown names fail loudly."""
    if isinstance(config, ExperimentConfig):
        return config.replace(**overrides) if overrides else config
    return ExperimentConfig.from_dict(config, **overrides)


class _EpochTimer(keras.callbacks.Callback):
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


class _FiniteModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """The best-only checkpoint, which never saves the weights of an epoch whose loss is NaN or infinite:
    a diverged run keeps its best checkpoint so far (an exploded model can still score a high accuracy)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs and not math.isfinite(float(logs.get("loss", 0.0))):
            return
        super().on_epoch_end(epoch, logs)


class _EpochLine(keras.callbacks.Callback):
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


def environment_info() -> dict[str, Any]:
    """Library versions and hardware, recorded with every run."""
    import albumentations

    import carlib

    return {
        "versions": {
            "carlib": carlib.__version__,
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "albumentations": albumentations.__version__,
            "numpy": np.__version__,
        },
        "hardware": {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "gpus": _gpu_names(),
        },
    }


def _gpu_names() -> list[str]:
    names = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        names.append(details.get("device_name", device.name))
    return names


def _evaluate(model: keras.Model, dataset) -> dict[str, float]:
    values = model.evaluate(dataset, verbose=0, return_dict=True)
    return {k: float(v) for k, v in values.items()}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def run_experiment(config: ExperimentConfig | Mapping[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """Train and evaluate one configuration; return its record (also written to the results store).

    The record holds the resolved config, metrics of the best and the last weights on the
    validation set, the best epoch, the per-epoch history (with the learning rate), timings,
    data counts, library versions and hardware. The run's folder
    (``<results_dir>/runs/<run_id>/``) holds ``best.keras``, ``last.keras``, ``history.csv``
    and ``learning_curves.png``. If training fails, a record with ``status="failed"`` and the
    error is written and the exception re-raised; an interrupted run writes no record. A run
    with a ``trial_id`` backs up every epoch and, rerun after a kill, resumes after its last
    finished epoch (:mod:`carlib.resume`); a diverged run stops at once, fails, keeps its best checkpoint.
    """
    t_start = time.perf_counter()
    started_at = _now()
    config = as_config(config, **overrides)
    # A trial runs in one process at a time (resume.trial_lock); TensorFlow's determinism switch is put back afterwards.
    with _one_process_per_trial(config), training.op_determinism(config.deterministic):
        return _run_configured(config, t_start, started_at)


def _one_process_per_trial(config: ExperimentConfig):
    if not config.trial_id:
        return contextlib.nullcontext()
    from carlib.config import default_results_dir

    return resume.trial_lock(Path(config.results_dir or default_results_dir()).expanduser().resolve(), config.trial_id)


def _run_configured(config: ExperimentConfig, t_start: float, started_at: str) -> dict[str, Any]:
    # The same setup lr_find_for_config uses (carlib.training): seed, data, split, runtime.
    data = training.prepare_run_data(config)
    resolved, images = data.config, data.images
    train_images, val_images = data.train_images, data.val_images
    runtime = training.resolve_runtime(resolved)
    size = resolved.image_size
    t_data = time.perf_counter()

    store = ResultsStore(resolved.results_dir)
    # A trial (trial_id set, e.g. by a sweep) is backed up every epoch; a killed attempt resumes in its run folder.
    backup = (resume.TrialBackup(resolved.results_dir, resolved.trial_id, resolved.to_dict())
              if resolved.trial_id else None)
    state = backup.load() if backup else None
    run_id = state.run_id if state else new_run_id(resolved.study)
    started_at = state.started_at if state else started_at
    run_dir = store.run_dir(run_id)
    has_val = len(val_images) > 0
    # Without a validation set the best checkpoint can only follow the training metric; the record says so.
    monitor = "val_accuracy" if has_val else "accuracy"
    record: dict[str, Any] = {
        "schema": RECORD_SCHEMA,
        "run_id": run_id,
        "study": resolved.study,
        "status": "running",
        "started_at": started_at,
        "config": resolved.to_dict(),
        "data": {
            "root": str(data.root),
            "train_dir": str(data.train_dir),
            "num_classes": len(images.class_names),
            "class_names": list(images.class_names),
            "n_train": len(train_images),
            "n_val": len(val_images),
            # What the run was trained on: every file and folder left out, with the reason (issue 7).
            "n_skipped": len(images.skipped),
            "skipped": [{"path": path, "reason": reason} for path, reason in images.skip_reasons],
            "ignored": [{"path": path, "reason": reason} for path, reason in images.ignored],
            "n_converted": images.n_converted,
            # where decoded images were cached (data_cache="auto" decides by size: issue 6)
            "cache": data.cache_modes,
        },
        "checkpoint": {"monitor": monitor, "mode": "max", "best": str(run_dir / "best.keras"),
                       "last": str(run_dir / "last.keras")},
        "run_dir": str(run_dir),
        "training": runtime.describe(resolved.batch_size),
        **environment_info(),
    }
    print(f"carlib run {run_id}: {resolved.backbone} @ {size}px, lr={resolved.lr:g} ({resolved.schedule}), "
          f"augmentation={resolved.augmentation}, {len(train_images)} train / {len(val_images)} val images, "
          f"best checkpoint monitors {monitor}; finetune={resolved.finetune}, {runtime.strategy_name} strategy "
          f"x{runtime.replicas}, {runtime.precision_policy}", flush=True)
    try:
        train_ds, val_ds = training.make_datasets(data, runtime)
        model = training.build_run_model(resolved, len(images.class_names), runtime)
        lr_callbacks = schedule_callbacks(resolved, monitor="val_loss" if has_val else "loss")
        controller = next(c for c in lr_callbacks if isinstance(c, LearningRateController))
        early = (training.StageSpanningEarlyStopping(monitor=monitor, mode="max",
                                                      patience=resolved.early_stopping_patience)
                 if resolved.early_stopping_patience else None)
        # One instance of each callback for all fine-tuning stages: the best checkpoint, the
        # schedule, early stopping and history.csv (appended) span the whole run.
        checkpoint = _FiniteModelCheckpoint(run_dir / "best.keras", monitor=monitor, mode="max", save_best_only=True)
        # What a resumed trial must get back besides the weights: the callbacks' state.
        stateful = {"checkpoint": (checkpoint, ("best",)), "schedule": (controller, ("reductions", "best", "wait")),
                    **({"early_stopping": (early, ("wait", "best", "best_epoch", "stopped_epoch", "_started"))}
                       if early else {})}
        done = state.epoch if state else 0  # epochs a killed attempt of this trial finished
        if state:
            print(f"carlib run {run_id}: resuming trial {resolved.trial_id} after epoch {done} "
                  f"(backup in {backup.dir})", flush=True)
            resume.TrialBackup.restore_callbacks(state, stateful)
            resume.TrialBackup.restore_run_files(state, run_dir)
        history = list(state.history) if state else []
        callbacks = [
            *lr_callbacks,
            _EpochTimer(),
            _EpochLine(resolved.epochs),  # after the timer, whose epoch time it prints
            checkpoint,
            keras.callbacks.TerminateOnNaN(),
            keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
            # Opt-in (tensorboard: true): `tensorboard --logdir <results_dir>` shows every such run.
            *([keras.callbacks.TensorBoard(log_dir=str(run_dir / "tensorboard"))] if resolved.tensorboard else []),
            *([early] if early else []),
            # Last: it saves what the callbacks above have done this epoch.
            *([backup.callback(run_id, started_at, history=history, checkpoint=checkpoint, stateful=stateful)]
              if backup else []),
        ]
        t_build = time.perf_counter()
        stages, restored = [], state is None
        for stage in training.finetune_stages(resolved):
            stages.append(training.enter_stage(model, stage, resolved, runtime))
            controller.scale = stage.lr_scale
            if stage.end_epoch <= done:
                continue  # finished before the interruption
            if not restored:  # the stage the backup belongs to; at its first epoch, with a fresh optimizer
                resume.TrialBackup.restore_weights(model, state, new_optimizer=done == stage.first_epoch)
                restored = True
            fitted = model.fit(train_ds, validation_data=val_ds, initial_epoch=max(stage.first_epoch, done),
                               epochs=stage.end_epoch, callbacks=callbacks, shuffle=False,
                               verbose=0)  # _EpochLine prints one line per epoch
            history += _history_rows(fitted.history, fitted.epoch)
            if model.stop_training:  # early stopping or a NaN loss ends the run, not only the stage
                break
        if not restored:  # killed after its last epoch: nothing left to train, only to evaluate
            resume.TrialBackup.restore_weights(model, state, new_optimizer=True)
        t_fit = time.perf_counter()
        stopped_early = bool(early and early.stopped_epoch)
        record["training"].update(stages=stages, jit_compile=bool(model.jit_compile),
                                  stopped_early_after_epoch=len(history) if stopped_early else None,
                                  resumed_after_epoch=done or None)
        record["history"] = history
        model.save(run_dir / "last.keras")
        diverged = any(not math.isfinite(row.get("loss", 0.0)) for row in history)
        metrics = _final_metrics(model, run_dir / "best.keras", train_ds, val_ds, history, monitor)
        if resolved.tta_passes and has_val:
            metrics.update(_tta_metrics(run_dir / "best.keras", val_images, resolved))
        t_eval = time.perf_counter()
        metrics["param_count"] = int(model.count_params())
        # Throughput from the median epoch (the first one includes tracing), training part only.
        train_time = float(np.median([row["train_time_s"] for row in history])) if history else None
        metrics["train_images_per_s"] = len(train_images) / train_time if train_time else None
        eval_s = metrics.pop("_eval_s", None)
        metrics["eval_images_per_s"] = len(val_images) / eval_s if eval_s else None
        record["metrics"] = metrics
        record["timings"] = {
            "data_s": t_data - t_start,
            "build_s": t_build - t_data,
            "fit_s": t_fit - t_build,
            "epoch_s": float(np.median([row["epoch_time_s"] for row in history])) if history else None,
            "eval_s": t_eval - t_fit,
            "total_s": t_eval - t_start,
        }
        if diverged or (len(history) < resolved.epochs and not stopped_early):
            record["status"] = "failed"
            bad_epoch = next((row["epoch"] for row in history if not math.isfinite(row.get("loss", 0.0))),
                             len(history))
            record["error"] = divergence_message(bad_epoch)
        else:
            record["status"] = "ok"
        _save_learning_curves(record, run_dir)
    except Exception as err:
        record.update(status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc(),
                      finished_at=_now())
        store.write(record)
        if backup:
            backup.discard()
        raise
    record["finished_at"] = _now()
    store.write(record)
    if backup:  # finished (ok or failed): a rerun starts afresh. Only a killed run leaves its backup.
        backup.discard()
    _print_summary(record)
    return record


def divergence_message(epoch: int) -> str:
    """The error of a run whose loss became NaN or infinite in ``epoch`` (1-based)."""
    return (f"training diverged: the loss became NaN or infinite in epoch {epoch}; training stopped there and the "
            "best checkpoint so far is kept. Lower lr (or add warmup_epochs) and run again.")


def _history_rows(history: dict[str, list], epochs: list[int] | None = None) -> list[dict[str, float]]:
    """One row per epoch; ``epochs`` are the 0-based epoch numbers ``fit`` ran (a later stage starts past 0)."""
    count = len(next(iter(history.values()), []))
    numbers = list(epochs) if epochs is not None else list(range(count))
    return [{"epoch": numbers[i] + 1, **{k: float(v[i]) for k, v in history.items()}} for i in range(count)]


def _final_metrics(model, best_path: Path, train_ds, val_ds, history, monitor) -> dict[str, Any]:
    """Evaluate the last weights and the best checkpoint on the clean validation set (R4)."""
    metrics: dict[str, Any] = {"checkpoint_monitor": monitor}
    # A diverged epoch can still score (an exploded model predicts one class): only finite-loss epochs count.
    finite = [row for row in history
              if math.isfinite(row.get(monitor, float("nan"))) and math.isfinite(row.get("loss", 0.0))]
    best_row = max(finite, key=lambda row: row[monitor]) if finite else None
    metrics["best_epoch"] = best_row["epoch"] if best_row else None
    if history:
        metrics["train_accuracy_last"] = history[-1].get("accuracy")
        metrics["train_loss_last"] = history[-1].get("loss")
    if val_ds is None:
        metrics.update(val_accuracy_best=None, val_loss_best=None, val_accuracy_last=None, val_loss_last=None)
        return metrics
    _evaluate(model, val_ds.take(1))  # warm-up, so the timed pass below measures throughput, not tracing
    started = time.perf_counter()
    last = _evaluate(model, val_ds)
    metrics["_eval_s"] = time.perf_counter() - started
    metrics.update(val_accuracy_last=last["accuracy"], val_loss_last=last["loss"])
    if best_path.is_file():
        # carlib's loader (hub: models); no optimizer: a mixed-precision file's LossScaleOptimizer
        # state would not load into the plain optimizer Keras rebuilds, with a warning each run.
        best_model = backbones.load_model(best_path, compile=False)
        best_model.compile(loss=model.loss, metrics=["accuracy"])
        best = _evaluate(best_model, val_ds)
        metrics.update(val_accuracy_best=best["accuracy"], val_loss_best=best["loss"])
    else:  # no finite epoch was ever checkpointed
        metrics.update(val_accuracy_best=None, val_loss_best=None)
    return metrics


def _tta_metrics(best_path: Path, val_images, config: ExperimentConfig) -> dict[str, Any]:
    """The best checkpoint's validation accuracy with TTA, and whether the passes really differed (R20)."""
    from carlib.tta import tta_predict

    if not best_path.is_file():
        return {"val_accuracy_tta": None}
    result = tta_predict(backbones.load_model(best_path), val_images, preset=config.tta_preset,
                         passes=config.tta_passes, seed=config.seed, batch_size=config.batch_size)
    return {
        "val_accuracy_tta": float((result.predictions == val_images.labels).mean()),
        "tta_changed_images": int(result.diagnostics.n_changed),
        "tta_mean_spread": float(result.diagnostics.mean_spread),
        "tta_identical_passes": bool(result.diagnostics.identical_passes),
    }


def _save_learning_curves(record: dict[str, Any], run_dir: Path) -> None:
    from carlib.plots import plot_learning_curves

    figure = plot_learning_curves([record])
    figure.savefig(run_dir / "learning_curves.png", dpi=90)


def _print_summary(record: dict[str, Any]) -> None:
    m = record["metrics"]

    def fmt(value):
        return "n/a" if value is None else f"{value:.4f}"

    print(f"carlib run {record['run_id']} {record['status']}: val_accuracy best={fmt(m.get('val_accuracy_best'))} "
          f"(epoch {m.get('best_epoch')}), last={fmt(m.get('val_accuracy_last'))}; "
          f"{record['timings']['total_s']:.0f} s; files in {record['run_dir']}", file=sys.stdout, flush=True)
