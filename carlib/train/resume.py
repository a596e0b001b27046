"""Resuming a killed trial from its last finished epoch.

A run with a ``trial_id`` (every sweep trial has one) backs up its training state at the end
of every epoch into ``<results_dir>/backups/<trial_id>/``: the weights with the optimizer
state, the epoch count, the history so far, the run id (so the rerun continues the same run
folder: ``best.keras``, ``history.csv``), the best checkpoint's value and a copy of
``best.keras``, and the state of the stateful callbacks (the plateau schedule, early stopping).
A rerun of the same trial (same parameters) after a kill — SIGINT, SIGTERM, ``kill -9``, a
lost machine — continues at the next epoch, and its record's history spans the interruption.
The backup is deleted when the run finishes (ok or failed); only a killed run leaves one.

This is Keras' ``BackupAndRestore`` idea, done by carlib because that callback (a) overwrites
its files in place, so a kill during the save leaves a backup that cannot be loaded, and
(b) restores inside every ``fit`` call, which breaks runs of several fine-tuning stages
(each stage has its own optimizer). Here every file is written to a temporary name and
renamed, the state file last, so a backup is always complete; the rerun picks the stage
the backup belongs to.

A lock file (``backups/<trial_id>.lock``, :func:`carlib.base.locks.trial_lock`) keeps two processes
from running the same trial at once; the operating system releases it when its process dies.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import keras

from carlib.base.files import atomic_copy, atomic_path, atomic_write_text
from carlib.base.locks import TrialBusyError, trial_lock

__all__ = ["ResumeState", "TrialBackup", "EpochBackup", "TrialBusyError", "backup_dir_for", "trial_lock"]

STATE_FILE = "state.json"
STATE_VERSION = 1


def backup_dir_for(results_dir: str | os.PathLike, trial_id: str) -> Path:
    """Where the backup of ``trial_id`` lives: ``<results_dir>/backups/<trial_id>``."""
    return Path(results_dir) / "backups" / trial_id


def _plain(value: Any) -> Any:
    """A JSON-safe copy of a callback attribute (numpy scalars become floats; NaN stays a float)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@dataclasses.dataclass(frozen=True)
class ResumeState:
    """A complete backup: ``epoch`` epochs are finished; their ``history`` rows, weights and callback states, and
    ``cpu_s``, the CPU seconds the killed attempts spent up to it (0 in a backup from before carlib saved them)."""

    run_id: str
    started_at: str
    epoch: int
    history: list[dict[str, float]]
    weights: Path
    best_copy: Path | None
    callbacks: dict[str, dict[str, Any]]
    cpu_s: float = 0.0


class TrialBackup:
    """The backup of one trial: load it at the start of a run, save it every epoch, discard it at the end."""

    def __init__(self, results_dir: str | os.PathLike, trial_id: str, config: Mapping[str, Any]):
        self.trial_id = trial_id
        self.dir = backup_dir_for(results_dir, trial_id)
        self.config = dict(config)

    def load(self) -> ResumeState | None:
        """The last complete state, or None (no backup, another config, or an unreadable one: warned)."""
        path = self.dir / STATE_FILE
        if not path.is_file():
            return None
        try:
            state = json.loads(path.read_text())
            if state.get("version") != STATE_VERSION:
                raise ValueError(f"version {state.get('version')!r}, expected {STATE_VERSION}")
            weights = self.dir / state["weights"]
            if not weights.is_file():
                raise ValueError(f"its weights file {weights.name} is missing")
        except (OSError, ValueError, KeyError, TypeError) as err:
            warnings.warn(f"trial {self.trial_id}: ignoring the unreadable backup in {str(self.dir)!r} ({err}); "
                          "training starts from epoch 1.", stacklevel=2)
            return None
        if state.get("config") != json.loads(json.dumps(self.config, default=str)):
            warnings.warn(f"trial {self.trial_id}: the backup in {str(self.dir)!r} was made with other parameters; "
                          "training starts from epoch 1.", stacklevel=2)
            return None
        best = self.dir / "best.keras"
        return ResumeState(state["run_id"], state["started_at"], int(state["epoch"]), list(state["history"]),
                           weights, best if best.is_file() else None, dict(state.get("callbacks", {})),
                           float(state.get("cpu_s") or 0.0))

    def callback(self, run_id: str, started_at: str, *, history: list[dict[str, float]],
                 checkpoint: keras.callbacks.ModelCheckpoint,
                 stateful: Mapping[str, tuple[keras.callbacks.Callback, tuple[str, ...]]],
                 cpu_seconds: Callable[[], float] | None = None) -> "EpochBackup":
        """The callback that saves this backup at the end of every epoch (put it last in the callback list).

        ``cpu_seconds()``: the trial's CPU seconds so far (earlier attempts included), saved with each epoch so
        that a resumed run's ``cpu_s`` counts what the killed attempts spent.
        """
        return EpochBackup(self, run_id, started_at, history, checkpoint, stateful, cpu_seconds)

    def discard(self) -> None:
        """Delete the backup (the run finished)."""
        shutil.rmtree(self.dir, ignore_errors=True)

    @staticmethod
    def restore_weights(model: keras.Model, state: ResumeState, *, new_optimizer: bool) -> None:
        """Load the backed-up weights (and the optimizer state unless the stage starts a ``new_optimizer``)."""
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        with warnings.catch_warnings():
            if new_optimizer:  # a stage boundary: the saved optimizer belongs to the previous stage, and is not wanted
                warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model.load_weights(state.weights)

    @staticmethod
    def restore_callbacks(state: ResumeState,
                          stateful: Mapping[str, tuple[keras.callbacks.Callback, tuple[str, ...]]]) -> None:
        """Put back the saved attributes of the stateful callbacks (schedule, early stopping)."""
        for name, (callback, attributes) in stateful.items():
            for attribute in attributes:
                if attribute in state.callbacks.get(name, {}):
                    setattr(callback, attribute, state.callbacks[name][attribute])

    @staticmethod
    def restore_run_files(state: ResumeState, run_dir: Path) -> None:
        """``best.keras`` from the backup's copy, ``history.csv`` cut back to the finished epochs."""
        if state.best_copy is not None:
            atomic_copy(state.best_copy, run_dir / "best.keras")
        rows = state.history
        if rows:
            keys = sorted(k for k in rows[0] if k != "epoch")
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=["epoch", *keys], lineterminator="\n")
            writer.writeheader()
            for row in rows:  # CSVLogger's layout: 0-based epoch, then the logs in sorted order
                writer.writerow({"epoch": int(row["epoch"]) - 1, **{k: row.get(k) for k in keys}})
            atomic_write_text(run_dir / "history.csv", buffer.getvalue())


class EpochBackup(keras.callbacks.Callback):
    """Saves the trial's state after every finished epoch (weights first, the state file last)."""

    def __init__(self, backup: TrialBackup, run_id: str, started_at: str, history: list[dict[str, float]],
                 checkpoint: keras.callbacks.ModelCheckpoint,
                 stateful: Mapping[str, tuple[keras.callbacks.Callback, tuple[str, ...]]],
                 cpu_seconds: Callable[[], float] | None = None):
        super().__init__()
        self.backup, self.run_id, self.started_at = backup, run_id, started_at
        self.cpu_seconds = cpu_seconds
        self.history = list(history)
        self.checkpoint = checkpoint
        self.stateful = dict(stateful)
        self._best_seen = checkpoint.best

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        if not math.isfinite(float(logs.get("loss", 0.0))):
            return  # a diverged epoch is never a state to resume from
        directory = self.backup.dir
        directory.mkdir(parents=True, exist_ok=True)
        self.history.append({"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}})
        name = f"epoch-{epoch + 1:04d}.weights.h5"
        with atomic_path(directory / name, suffix=".weights.h5") as temporary:  # Keras wants the .weights.h5 ending
            self.model.save_weights(temporary)
        best_model = Path(self.checkpoint.filepath)
        if self.checkpoint.best != self._best_seen and best_model.is_file():  # improved this epoch
            atomic_copy(best_model, directory / "best.keras")
            self._best_seen = self.checkpoint.best
        state = {
            "version": STATE_VERSION, "trial_id": self.backup.trial_id, "run_id": self.run_id,
            "started_at": self.started_at, "config": self.backup.config, "epoch": epoch + 1, "weights": name,
            "history": self.history, "cpu_s": self.cpu_seconds() if self.cpu_seconds else None,
            "callbacks": {key: {a: _plain(getattr(cb, a, None)) for a in attributes}
                          for key, (cb, attributes) in self.stateful.items()},
        }
        atomic_write_text(directory / STATE_FILE, json.dumps(state, default=str))
        for old in directory.glob("epoch-*.weights.h5"):
            if old.name != name:
                old.unlink(missing_ok=True)
