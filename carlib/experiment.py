"""The one experiment function (R8): a config goes in, a trained model and one record come out.

It replaces the notebook's pasted training cells: ``model.fit`` (R3), a best-only
checkpoint on validation accuracy (R2), best and last weights saved under different names
and *both* evaluated on the clean validation set (R4), and every number written to the
results store together with the resolved config that produced it (R7).
"""

from __future__ import annotations

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

from carlib import backbones
from carlib.config import ExperimentConfig, optimizer_class_name
from carlib.data.folders import list_class_images, prepare_data, stratified_split
from carlib.data.pipeline import eval_dataset, training_dataset
from carlib.results import RECORD_SCHEMA, ResultsStore, new_run_id
from carlib.schedules import schedule_callbacks

__all__ = ["run_experiment", "as_config", "environment_info"]


def as_config(config: ExperimentConfig | Mapping[str, Any] | None = None, **overrides: Any) -> ExperimentConfig:
    """Accept a config, a mapping of parameters or keyword overrides; unknown names fail loudly."""
    if isinstance(config, ExperimentConfig):
        return config.replace(**overrides) if overrides else config
    return ExperimentConfig.from_dict(config, **overrides)


class _EpochTimer(keras.callbacks.Callback):
    """Adds each epoch's wall time to its logs (``epoch_time_s``)."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_time_s"] = time.perf_counter() - self._start


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
    error is written and the exception re-raised; an interrupted run writes no record.
    """
    t_start = time.perf_counter()
    started_at = _now()
    config = as_config(config, **overrides)
    keras.utils.set_random_seed(config.seed)

    layout = prepare_data(config.data_dir)
    images = list_class_images(layout.train_dir)
    train_idx, val_idx = stratified_split(images.labels, config.val_split, config.seed)
    train_images, val_images = images.subset(train_idx), images.subset(val_idx)
    resolved = config.replace(data_dir=str(layout.root)).resolved()
    size = resolved.image_size
    t_data = time.perf_counter()

    store = ResultsStore(resolved.results_dir)
    run_id = new_run_id(resolved.study)
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
            "root": str(layout.root),
            "train_dir": str(layout.train_dir),
            "num_classes": len(images.class_names),
            "class_names": list(images.class_names),
            "n_train": len(train_images),
            "n_val": len(val_images),
            "n_skipped": len(images.skipped),
            "skipped": list(images.skipped),
        },
        "checkpoint": {"monitor": monitor, "mode": "max", "best": str(run_dir / "best.keras"),
                       "last": str(run_dir / "last.keras")},
        "run_dir": str(run_dir),
        **environment_info(),
    }
    print(f"carlib run {run_id}: {resolved.backbone} @ {size}px, lr={resolved.lr:g} ({resolved.schedule}), "
          f"augmentation={resolved.augmentation}, {len(train_images)} train / {len(val_images)} val images, "
          f"best checkpoint monitors {monitor}", flush=True)
    try:
        train_ds = training_dataset(train_images, size, resolved.batch_size,
                                    augmentation=resolved.augmentation, seed=resolved.seed)
        val_ds = eval_dataset(val_images, size, resolved.batch_size) if has_val else None
        model = backbones.build_model(resolved.backbone, len(images.class_names), size, weights=resolved.weights,
                                      dropout=resolved.dropout, bn_mode=resolved.bn_mode)
        optimizer = getattr(keras.optimizers, optimizer_class_name(resolved.optimizer))(learning_rate=resolved.lr)
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        callbacks = [
            *schedule_callbacks(resolved, monitor="val_loss" if has_val else "loss"),
            _EpochTimer(),
            keras.callbacks.ModelCheckpoint(run_dir / "best.keras", monitor=monitor, mode="max", save_best_only=True),
            keras.callbacks.TerminateOnNaN(),
            keras.callbacks.CSVLogger(str(run_dir / "history.csv")),
        ]
        t_build = time.perf_counter()
        fitted = model.fit(train_ds, validation_data=val_ds, epochs=resolved.epochs, callbacks=callbacks,
                           shuffle=False, verbose=2)
        t_fit = time.perf_counter()
        history = _history_rows(fitted.history)
        record["history"] = history
        model.save(run_dir / "last.keras")
        diverged = any(not math.isfinite(row.get("loss", 0.0)) for row in history)
        metrics = _final_metrics(model, run_dir / "best.keras", train_ds, val_ds, history, monitor)
        t_eval = time.perf_counter()
        record["metrics"] = metrics
        record["timings"] = {
            "data_s": t_data - t_start,
            "build_s": t_build - t_data,
            "fit_s": t_fit - t_build,
            "epoch_s": float(np.median([row["epoch_time_s"] for row in history])) if history else None,
            "eval_s": t_eval - t_fit,
            "total_s": t_eval - t_start,
        }
        if diverged or len(history) < resolved.epochs:
            record["status"] = "failed"
            record["error"] = f"training diverged: the loss became NaN or infinite in epoch {len(history)}"
        else:
            record["status"] = "ok"
        _save_learning_curves(record, run_dir)
    except Exception as err:
        record.update(status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc(),
                      finished_at=_now())
        store.write(record)
        raise
    record["finished_at"] = _now()
    store.write(record)
    _print_summary(record)
    return record


def _history_rows(history: dict[str, list]) -> list[dict[str, float]]:
    epochs = len(next(iter(history.values()), []))
    return [{"epoch": i + 1, **{k: float(v[i]) for k, v in history.items()}} for i in range(epochs)]


def _final_metrics(model, best_path: Path, train_ds, val_ds, history, monitor) -> dict[str, Any]:
    """Evaluate the last weights and the best checkpoint on the clean validation set (R4)."""
    metrics: dict[str, Any] = {"checkpoint_monitor": monitor}
    finite = [row for row in history if math.isfinite(row.get(monitor, float("nan")))]
    best_row = max(finite, key=lambda row: row[monitor]) if finite else None
    metrics["best_epoch"] = best_row["epoch"] if best_row else None
    if history:
        metrics["train_accuracy_last"] = history[-1].get("accuracy")
        metrics["train_loss_last"] = history[-1].get("loss")
    if val_ds is None:
        metrics.update(val_accuracy_best=None, val_loss_best=None, val_accuracy_last=None, val_loss_last=None)
        return metrics
    last = _evaluate(model, val_ds)
    metrics.update(val_accuracy_last=last["accuracy"], val_loss_last=last["loss"])
    if best_path.is_file():
        best = _evaluate(keras.models.load_model(best_path), val_ds)
        metrics.update(val_accuracy_best=best["accuracy"], val_loss_best=best["loss"])
    else:  # no finite epoch was ever checkpointed
        metrics.update(val_accuracy_best=None, val_loss_best=None)
    return metrics


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
