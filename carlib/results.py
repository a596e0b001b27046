"""The results store: one JSON record per run, and the combined table of all of them (R7).

Layout of a store (``results_dir``)::

    records/<run_id>.json   one finished run: resolved config, metrics, history, timings, versions
    runs/<run_id>/          its files: best.keras, last.keras, history.csv, learning_curves.png

A record is written to a temporary file in ``records/`` and renamed into place, which is
atomic on POSIX filesystems: concurrent writers (parallel notebooks, two sweeps) never
interleave, and a run killed halfway leaves no record at all. Readers skip temporary and
corrupt files with a warning, naming each one.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import secrets
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from carlib.config import PARAMETER_NAMES, default_results_dir

__all__ = ["ResultsStore", "load_results", "new_run_id", "RECORD_SCHEMA"]

RECORD_SCHEMA = 1
# Columns that lead the combined table, in this order; the rest follow alphabetically.
_LEADING = ["run_id", "study", "status", "started_at", "backbone", "image_size", "lr", "schedule",
            "augmentation", "val_split", "seed", "epochs", "val_accuracy_best", "val_accuracy_last", "best_epoch"]


def new_run_id(study: str) -> str:
    """A unique, sortable id: UTC time, study name and random bits (unique across processes)."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    safe_study = "".join(c if c.isalnum() or c in "-_" else "-" for c in study)[:40]
    return f"{stamp}-{safe_study}-{secrets.token_hex(4)}"


class ResultsStore:
    """A folder of run records that many processes can write to at once."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root or default_results_dir()).expanduser()
        self.records_dir = self.root / "records"
        self.runs_dir = self.root / "runs"

    def run_dir(self, run_id: str) -> Path:
        """The folder for a run's files (created)."""
        path = self.runs_dir / run_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def write(self, record: dict[str, Any]) -> Path:
        """Write ``record`` atomically as ``records/<run_id>.json``; returns its path."""
        self.records_dir.mkdir(parents=True, exist_ok=True)
        final = self.records_dir / f"{record['run_id']}.json"
        atomic_write_text(final, json.dumps(record, indent=1, default=_json_default, allow_nan=True))
        return final

    def records(self, study: str | None = None) -> list[dict[str, Any]]:
        """All finished records (optionally of one study), oldest first; unreadable files are skipped with a warning."""
        if not self.records_dir.is_dir():
            return []
        found = []
        for path in sorted(self.records_dir.iterdir()):
            if path.name.startswith(".") or path.suffix != ".json":
                if path.suffix == ".tmp":
                    warnings.warn(f"results store: skipping temporary file {str(path)!r} "
                                  "(a write in progress, or left by an interrupted writer)", stacklevel=2)
                elif not path.name.startswith("."):
                    warnings.warn(f"results store: ignoring foreign file {str(path)!r}", stacklevel=2)
                continue
            try:
                record = json.loads(path.read_text())
                if not isinstance(record, dict) or "run_id" not in record or not isinstance(record.get("config"), dict):
                    raise ValueError("not a carlib run record")
                # A foreign file shaped almost like a record must not crash the table further down.
                wrong = [k for k in ("metrics", "data", "timings", "training", "checkpoint")
                         if k in record and not isinstance(record[k], dict)]
                if wrong:
                    raise ValueError(f"not a carlib run record: {', '.join(wrong)} must be mappings")
            except (OSError, ValueError) as err:
                warnings.warn(f"results store: skipping unreadable record {str(path)!r} ({err})", stacklevel=2)
                continue
            if study is None or record.get("study") == study:
                found.append(record)
        return sorted(found, key=lambda r: (str(r.get("started_at") or ""), str(r["run_id"])))

    def table(self, study: str | None = None) -> pd.DataFrame:
        """The combined results table: one row per run, config fields and metrics as columns."""
        return records_to_frame(self.records(study))


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename.

    Readers see the old file or the whole new one, never a part: a process killed midway
    leaves at most a hidden ``.<name>.*.tmp`` file, which readers skip.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def records_to_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Flatten records into a DataFrame (config fields and metrics become columns; history stays in the record)."""
    rows = []
    for record in records:
        row = {
            "run_id": record["run_id"],
            "study": record.get("study"),
            "status": record.get("status"),
            "started_at": record.get("started_at"),
        }
        row.update({k: _cell(v) for k, v in record.get("config", {}).items() if k in PARAMETER_NAMES})
        row.update({k: _cell(v) for k, v in record.get("metrics", {}).items()})
        row.update({k: v for k, v in record.get("data", {}).items() if k in ("n_train", "n_val", "num_classes", "n_skipped",
                                                                            "n_converted")})
        row.update({f"{k}": v for k, v in record.get("timings", {}).items() if k in ("total_s", "fit_s", "epoch_s")})
        # How the run computed (issue 4): the resolved strategy, replicas, global batch and precision.
        row.update({k: v for k, v in record.get("training", {}).items()
                    if k in ("replicas", "global_batch_size", "precision_policy", "stopped_early_after_epoch")})
        row["error"] = record.get("error")
        row["run_dir"] = record.get("run_dir")
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=_LEADING)
    leading = [c for c in _LEADING if c in frame.columns]
    return frame[leading + sorted(c for c in frame.columns if c not in leading)]


def load_results(results_dir: str | os.PathLike | None = None, study: str | None = None) -> pd.DataFrame:
    """The combined results table of a store (default: ``$CARLIB_RESULTS_DIR`` or ``./results``)."""
    return ResultsStore(results_dir).table(study)


def _cell(value: Any) -> Any:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy arrays and scalars (an array's .item() fails unless it has one element)
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"cannot store {type(value).__name__} in a run record")
