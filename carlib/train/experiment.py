"""The one experiment function (R8): a config goes in, a trained model and one record come out.

It replaces the notebook's pasted training cells: ``model.fit`` (R3), a best-only
checkpoint on validation accuracy (R2), best and last weights saved under different names
and *both* evaluated on the clean validation set (R4), and every number written to the
results store together with the resolved config that produced it (R7).

:func:`run_experiment` reads as its steps: prepare the data and the runtime, start the run
(its folder, record and backup), build the model, make the callbacks, fit the stages,
evaluate, finish the record and write it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import traceback
from pathlib import Path
from typing import Any, Mapping

import keras
import numpy as np

from carlib.base.locks import trial_lock
from carlib.base.project_files import default_results_dir
from carlib.config import ExperimentConfig, as_config
from carlib.data.fingerprint import data_fingerprint
from carlib.evaluate.predict import load_model, model_at_size, predict_images
from carlib.evaluate.tta import tta_predict
from carlib.models.build import ensure_weights, save_model
from carlib.plots import plot_learning_curves
from carlib.records.record import environment_info, new_record, new_run_id, utc_now
from carlib.records.store import ResultsStore
from carlib.train.callbacks import EpochLine, EpochTimer, FiniteModelCheckpoint, StageSpanningEarlyStopping
from carlib.train.resume import ResumeState, TrialBackup
from carlib.train.runtime import Runtime, gpu_names, op_determinism, resolve_runtime
from carlib.train.setup import RunData, TrainingSetup, build_training, prepare_run_data
from carlib.train.stages import enter_stage

__all__ = ["run_experiment", "divergence_message"]


def divergence_message(epoch: int) -> str:
    """The error of a run whose loss became NaN or infinite in ``epoch`` (1-based)."""
    return (f"training diverged: the loss became NaN or infinite in epoch {epoch}; training stopped there and the "
            "best checkpoint so far is kept. Lower lr (or add warmup_epochs) and run again.")


def run_experiment(config: ExperimentConfig | Mapping[str, Any] | None = None, *, rerun_of: str | None = None,
                   **overrides: Any) -> dict[str, Any]:
    """Train and evaluate one configuration; return its record (also written to the results store).

    The record holds the resolved config, metrics of the best and the last weights on the
    validation set, the best epoch, the per-epoch history (with the learning rate), timings,
    data counts, library versions and hardware (:mod:`carlib.records.record`). The run's folder
    (``<results_dir>/runs/<run_id>/``) holds ``best.keras``, ``last.keras``, ``history.csv``
    and ``learning_curves.png``. If training fails, a record with ``status="failed"`` and the
    error is written and the exception re-raised; an interrupted run writes no record. A run
    with a ``trial_id`` backs up every epoch and, rerun after a kill, resumes after its last
    finished epoch (:mod:`carlib.train.resume`); a diverged run stops at once, fails, keeps its
    best checkpoint. ``rerun_of`` names the run this one repeats (``carlib rerun``); the record keeps it.
    """
    clock = _Clock()
    config = as_config(config, **overrides)
    # A trial runs in one process at a time; TensorFlow's determinism switch is put back afterwards.
    with _one_process_per_trial(config), op_determinism(config.deterministic):
        data = prepare_run_data(config)  # seed, data, split, resolved config (bad data fails here, unrecorded)
        ensure_weights(data.config.backbone, data.config.weights)  # missing ImageNet weights fail here, unrecorded
        runtime = resolve_runtime(data.config)
        clock.mark("data")
        run = _start_run(data, runtime, clock, rerun_of)
        try:
            setup = build_training(data, runtime)
            callbacks = _callbacks(setup, run, clock)
            clock.mark("build")
            _fit_stages(setup, run, callbacks)
            clock.mark("fit")
            metrics = _evaluate(setup, run)
            clock.mark("eval")
            _finish_record(run, setup, metrics, clock)
        except Exception as err:
            _write_failure(run, err)
            raise
        _write_record(run)
        return run.record


# ------------------------------------------------------------------------------ the steps
class _Clock:
    """Wall-clock marks of the run's steps, and the process's CPU seconds (``timings`` in the record)."""

    def __init__(self):
        self.start = time.perf_counter()
        self.cpu_start = time.process_time()
        self.started_at = utc_now()
        self.marks: dict[str, float] = {}
        self.cpu_done = self.cpu_start
        self.earlier_cpu_s = 0.0  # a resumed trial: what its killed attempts spent up to their last backup

    def mark(self, step: str) -> None:
        self.marks[step] = time.perf_counter()
        self.cpu_done = time.process_time()

    def cpu_so_far(self) -> float:
        """The trial's CPU seconds until now, its killed attempts' included."""
        return self.earlier_cpu_s + time.process_time() - self.cpu_start

    def timings(self) -> dict[str, float]:
        """Seconds per step (this attempt's); ``cpu_s``: CPU seconds of all the process's threads from the config to
        the last evaluation, plus, for a resumed trial, what its killed attempts spent up to their last backup
        (``cpu_s_earlier_attempts``; the epoch a kill cut short is lost): what a run costs on a shared machine."""
        data, build, fit, done = (self.marks[k] for k in ("data", "build", "fit", "eval"))
        earlier = {"cpu_s_earlier_attempts": self.earlier_cpu_s} if self.earlier_cpu_s else {}
        return {"data_s": data - self.start, "build_s": build - data, "fit_s": fit - build, "eval_s": done - fit,
                "total_s": done - self.start, "cpu_s": self.earlier_cpu_s + self.cpu_done - self.cpu_start, **earlier}


@dataclasses.dataclass
class _Run:
    """A run under way: where it writes, its record so far, and (for a resumed trial) the state it resumes from."""

    store: ResultsStore
    run_id: str
    run_dir: Path
    record: dict[str, Any]
    backup: TrialBackup | None
    state: ResumeState | None
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)
    stages: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    checkpoint: FiniteModelCheckpoint | None = None
    early: StageSpanningEarlyStopping | None = None

    @property
    def resumed_after(self) -> int:
        """Epochs a killed attempt of this trial finished (0: a fresh run)."""
        return self.state.epoch if self.state else 0


def _one_process_per_trial(config: ExperimentConfig):
    if not config.trial_id:
        return contextlib.nullcontext()
    return trial_lock(Path(config.results_dir or default_results_dir()).expanduser().resolve(), config.trial_id)


def _start_run(data: RunData, runtime: Runtime, clock: _Clock, rerun_of: str | None = None) -> _Run:
    """The run's id and folder (a killed trial's own, when it resumes), its backup, and the record's first sections."""
    config = data.config
    store = ResultsStore(config.results_dir)
    # A trial (trial_id set, e.g. by a sweep) is backed up every epoch; a killed attempt resumes in its run folder.
    backup = TrialBackup(config.results_dir, config.trial_id, config.to_dict()) if config.trial_id else None
    state = backup.load() if backup else None
    clock.earlier_cpu_s = state.cpu_s if state else 0.0
    run_id = state.run_id if state else new_run_id(config.study)
    run_dir = store.run_dir(run_id)
    images = data.images
    record = new_record(
        run_id=run_id, study=config.study, config=config.to_dict(),
        started_at=state.started_at if state else clock.started_at,
        data={
            "root": str(data.root),
            # file count, bytes and a hash of the names: a rerun checks its data is the same (carlib rerun)
            "fingerprint": data_fingerprint(data.root),
            "train_dir": str(data.train_dir),
            "num_classes": data.num_classes,
            "class_names": list(images.class_names),
            # the three splits: where each came from (the test set is the same for every seed)
            **data.splits.describe(),
            # What the run was trained on: every file and folder left out, with the reason (issue 7).
            "n_skipped": len(images.skipped),
            "skipped": [{"path": path, "reason": reason} for path, reason in images.skip_reasons],
            "ignored": [{"path": path, "reason": reason} for path, reason in images.ignored],
            "n_converted": images.n_converted,
            # where decoded images were cached (data_cache="auto" decides by size: issue 6)
            "cache": data.cache_modes,
        },
        # Without a validation set the best checkpoint can only follow the training metric; the record says so.
        checkpoint={"monitor": data.monitor, "mode": "max", "best": str(run_dir / "best.keras"),
                    "last": str(run_dir / "last.keras")},
        run_dir=str(run_dir),
        training=runtime.describe(config.batch_size),
        **environment_info(gpus=gpu_names()),
        **({"rerun_of": rerun_of} if rerun_of else {}),
    )
    print(f"carlib run {run_id}: {config.backbone} @ {config.image_size}px, lr={config.lr:g} ({config.schedule}), "
          f"augmentation={config.augmentation}, {len(data.train_images)} train / {len(data.val_images)} val / "
          f"{len(data.test_images)} test images, "
          f"best checkpoint monitors {data.monitor}; finetune={config.finetune}, {runtime.strategy_name} strategy "
          f"x{runtime.replicas}, {runtime.precision_policy}", flush=True)
    return _Run(store, run_id, run_dir, record, backup, state, history=list(state.history) if state else [])


def _callbacks(setup: TrainingSetup, run: _Run, clock: _Clock) -> list[keras.callbacks.Callback]:
    """One instance of each callback for all fine-tuning stages: the schedule, the best checkpoint, early stopping
    and history.csv (appended) span the whole run; a resumed trial gets the callbacks' state back."""
    config, monitor = setup.config, setup.data.monitor
    run.checkpoint = FiniteModelCheckpoint(run.run_dir / "best.keras", monitor=monitor, mode="max",
                                           save_best_only=True, class_names=setup.data.images.class_names)
    run.early = (StageSpanningEarlyStopping(monitor=monitor, mode="max", patience=config.early_stopping_patience)
                 if config.early_stopping_patience else None)
    # What a resumed trial must get back besides the weights: the callbacks' state.
    stateful = {"checkpoint": (run.checkpoint, ("best",)), "schedule": (setup.schedule, ("reductions", "best", "wait")),
                **({"early_stopping": (run.early, ("wait", "best", "best_epoch", "stopped_epoch", "_started"))}
                   if run.early else {})}
    if run.state:
        print(f"carlib run {run.run_id}: resuming trial {config.trial_id} after epoch {run.resumed_after} "
              f"(backup in {run.backup.dir})", flush=True)
        TrialBackup.restore_callbacks(run.state, stateful)
        TrialBackup.restore_run_files(run.state, run.run_dir)
    return [
        setup.schedule,
        EpochTimer(),
        EpochLine(config.epochs),  # after the timer, whose epoch time it prints
        run.checkpoint,
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.CSVLogger(str(run.run_dir / "history.csv"), append=True),
        # Opt-in (tensorboard: true): `tensorboard --logdir <results_dir>` shows every such run.
        *([keras.callbacks.TensorBoard(log_dir=str(run.run_dir / "tensorboard"))] if config.tensorboard else []),
        *([run.early] if run.early else []),
        # Last: it saves what the callbacks above have done this epoch.
        *([run.backup.callback(run.run_id, run.record["started_at"], history=run.history, checkpoint=run.checkpoint,
                               stateful=stateful, cpu_seconds=clock.cpu_so_far)] if run.backup else []),
    ]


def _fit_stages(setup: TrainingSetup, run: _Run, callbacks: list[keras.callbacks.Callback]) -> None:
    """Fit each fine-tuning stage in turn (one ``fit`` call each), skipping what a killed attempt already did."""
    config, model, done = setup.config, setup.model, run.resumed_after
    restored = run.state is None
    for index, stage in enumerate(setup.stages):
        # Stage 1 was entered while the model was built; each later stage recompiles and passes its LR factor in.
        run.stages.append(setup.first_stage if index == 0 else
                          enter_stage(setup.model, stage, config, setup.runtime, setup.schedule))
        if stage.end_epoch <= done:
            continue  # finished before the interruption
        if not restored:  # the stage the backup belongs to; at its first epoch, with a fresh optimizer
            TrialBackup.restore_weights(model, run.state, new_optimizer=done == stage.first_epoch)
            restored = True
        fitted = model.fit(setup.train_ds, validation_data=setup.val_ds, initial_epoch=max(stage.first_epoch, done),
                           epochs=stage.end_epoch, callbacks=callbacks, shuffle=False,
                           verbose=0)  # EpochLine prints one line per epoch
        run.history += _history_rows(fitted.history, fitted.epoch)
        if model.stop_training:  # early stopping or a NaN loss ends the run, not only the stage
            break
    if not restored:  # killed after its last epoch: nothing left to train, only to evaluate
        TrialBackup.restore_weights(model, run.state, new_optimizer=True)
    save_model(model, run.run_dir / "last.keras", setup.data.images.class_names)  # the class names go inside


def _evaluate(setup: TrainingSetup, run: _Run) -> dict[str, Any]:
    """The best checkpoint and the last weights on the clean validation and test sets (R4), TTA if asked, and
    throughput. Validation picked the checkpoint; the test set, which nothing else saw, scores it."""
    config, history, data = setup.config, run.history, setup.data
    best_path = run.run_dir / "best.keras"
    metrics = _checkpoint_metrics(setup.model, best_path, {"val": setup.val_ds, "test": setup.test_ds}, history,
                                  data.monitor)
    if config.test_image_size and best_path.is_file():
        metrics.update(_fixres_metrics(best_path, data, config))
    if config.tta_passes:
        for split, images in (("val", data.val_images), ("test", data.test_images)):
            metrics.update(_tta_metrics(best_path, images, config, split))
    metrics["param_count"] = int(setup.model.count_params())
    # Throughput from the median epoch (the first one includes tracing), training part only.
    train_time = float(np.median([row["train_time_s"] for row in history])) if history else None
    metrics["train_images_per_s"] = len(setup.data.train_images) / train_time if train_time else None
    eval_s = metrics.pop("_eval_s", None)
    metrics["eval_images_per_s"] = len(setup.data.val_images) / eval_s if eval_s else None
    return metrics


def _finish_record(run: _Run, setup: TrainingSetup, metrics: dict[str, Any], clock: _Clock) -> None:
    """Fill in the history, the stages, the metrics and the timings, and decide ``ok`` or ``failed``."""
    config, history, record = setup.config, run.history, run.record
    stopped_early = bool(run.early and run.early.stopped_epoch)
    record["training"].update(stages=run.stages, jit_compile=bool(setup.model.jit_compile),
                              stopped_early_after_epoch=len(history) if stopped_early else None,
                              resumed_after_epoch=run.resumed_after or None)
    record["history"] = history
    record["metrics"] = metrics
    record["timings"] = {**clock.timings(),
                         "epoch_s": float(np.median([row["epoch_time_s"] for row in history])) if history else None}
    diverged = any(not math.isfinite(row.get("loss", 0.0)) for row in history)
    if diverged or (len(history) < config.epochs and not stopped_early):
        bad_epoch = next((row["epoch"] for row in history if not math.isfinite(row.get("loss", 0.0))), len(history))
        record.update(status="failed", error=divergence_message(bad_epoch))
    else:
        record["status"] = "ok"
    plot_learning_curves([record]).savefig(run.run_dir / "learning_curves.png", dpi=90)


def _write_record(run: _Run) -> None:
    """Write the finished record (ok or failed); a finished trial's backup goes (only a killed run leaves one)."""
    run.record["finished_at"] = utc_now()
    run.store.write(run.record)
    if run.backup:
        run.backup.discard()
    _print_summary(run.record)


def _write_failure(run: _Run, err: Exception) -> None:
    """A run that raised: its record says failed, with the error and the traceback."""
    run.record.update(status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc(),
                      finished_at=utc_now())
    run.store.write(run.record)
    if run.backup:
        run.backup.discard()


# ---------------------------------------------------------------------------- helpers
def _history_rows(history: dict[str, list], epochs: list[int] | None = None) -> list[dict[str, float]]:
    """One row per epoch; ``epochs`` are the 0-based epoch numbers ``fit`` ran (a later stage starts past 0)."""
    count = len(next(iter(history.values()), []))
    numbers = list(epochs) if epochs is not None else list(range(count))
    return [{"epoch": numbers[i] + 1, **{k: float(v[i]) for k, v in history.items()}} for i in range(count)]


def _evaluate_dataset(model: keras.Model, dataset) -> dict[str, float]:
    values = model.evaluate(dataset, verbose=0, return_dict=True)
    return {k: float(v) for k, v in values.items()}


def _checkpoint_metrics(model, best_path: Path, datasets: dict[str, Any], history, monitor) -> dict[str, Any]:
    """Evaluate the last weights and the best checkpoint on the clean validation and test sets (R4).

    ``datasets`` maps ``val`` and ``test`` to their dataset, or ``None`` when the run has no such split.
    """
    metrics: dict[str, Any] = {"checkpoint_monitor": monitor}
    # A diverged epoch can still score (an exploded model predicts one class): only finite-loss epochs count.
    finite = [row for row in history
              if math.isfinite(row.get(monitor, float("nan"))) and math.isfinite(row.get("loss", 0.0))]
    best_row = max(finite, key=lambda row: row[monitor]) if finite else None
    metrics["best_epoch"] = best_row["epoch"] if best_row else None
    if history:
        metrics["train_accuracy_last"] = history[-1].get("accuracy")
        metrics["train_loss_last"] = history[-1].get("loss")
    best_model = None
    if best_path.is_file():
        # carlib's loader (hub: models); no optimizer: a mixed-precision file's LossScaleOptimizer
        # state would not load into the plain optimizer Keras rebuilds, with a warning each run.
        best_model = load_model(best_path, compile=False)
        best_model.compile(loss=model.loss, metrics=["accuracy"])
    for split, dataset in datasets.items():
        metrics.update({f"{split}_{name}": None for name in ("accuracy_best", "loss_best", "accuracy_last",
                                                             "loss_last")})
        if dataset is None:
            continue
        if split == "val":  # warm-up, so the timed pass below measures throughput, not tracing
            _evaluate_dataset(model, dataset.take(1))
        started = time.perf_counter()
        last = _evaluate_dataset(model, dataset)
        if split == "val":
            metrics["_eval_s"] = time.perf_counter() - started
        metrics.update({f"{split}_accuracy_last": last["accuracy"], f"{split}_loss_last": last["loss"]})
        if best_model is not None:  # else no finite epoch was ever checkpointed
            best = _evaluate_dataset(best_model, dataset)
            metrics.update({f"{split}_accuracy_best": best["accuracy"], f"{split}_loss_best": best["loss"]})
    return metrics


def _best_at_test_size(best_path: Path, config: ExperimentConfig) -> keras.Model:
    """The best checkpoint, rebuilt at ``test_image_size`` when one is set (FixRes, R21)."""
    model = load_model(best_path)
    return model_at_size(model, config.test_image_size) if config.test_image_size else model


def _fixres_metrics(best_path: Path, data: RunData, config: ExperimentConfig) -> dict[str, Any]:
    """The best checkpoint's accuracy at ``test_image_size`` on the clean validation and test images (FixRes, R21)."""
    model = _best_at_test_size(best_path, config)
    metrics: dict[str, Any] = {"test_image_size": config.test_image_size}
    for split, images in (("val", data.val_images), ("test", data.test_images)):
        probabilities = predict_images(model, images, batch_size=config.batch_size) if len(images) else None
        metrics[f"{split}_accuracy_fixres"] = (float((probabilities.argmax(axis=1) == images.labels).mean())
                                               if probabilities is not None else None)
    return metrics


def _tta_metrics(best_path: Path, images, config: ExperimentConfig, split: str) -> dict[str, Any]:
    """The best checkpoint's accuracy on ``split`` with TTA (at ``test_image_size`` when set), and (on validation)
    whether the passes really differed (R20)."""
    if not best_path.is_file() or not len(images):
        return {f"{split}_accuracy_tta": None}
    result = tta_predict(_best_at_test_size(best_path, config), images, preset=config.tta_preset,
                         passes=config.tta_passes, seed=config.seed, batch_size=config.batch_size)
    metrics = {f"{split}_accuracy_tta": float((result.predictions == images.labels).mean())}
    if split == "val":
        metrics.update(tta_changed_images=int(result.diagnostics.n_changed),
                       tta_mean_spread=float(result.diagnostics.mean_spread),
                       tta_identical_passes=bool(result.diagnostics.identical_passes))
    return metrics


def _print_summary(record: dict[str, Any]) -> None:
    m = record["metrics"]

    def fmt(value):
        return "n/a" if value is None else f"{value:.4f}"

    print(f"carlib run {record['run_id']} {record['status']}: val_accuracy best={fmt(m.get('val_accuracy_best'))} "
          f"(epoch {m.get('best_epoch')}), last={fmt(m.get('val_accuracy_last'))}; test_accuracy "
          f"best={fmt(m.get('test_accuracy_best'))}, last={fmt(m.get('test_accuracy_last'))}; "
          f"{record['timings']['total_s']:.0f} s; files in {record['run_dir']}", flush=True)
