"""The results store: one JSON record per run, and the combined table of all of them (R7).

Layout of a store (``results_dir``)::

    records/<run_id>.json   one finished run (carlib.records.record): resolved config, metrics, history, timings, versions
    runs/<run_id>/          its files: best.keras, last.keras, history.csv, learning_curves.png

A record is written to a temporary file in ``records/`` and renamed into place, which is
atomic on POSIX filesystems: concurrent writers (parallel notebooks, two sweeps) never
interleave, and a run killed halfway leaves no record at all. Readers skip temporary and
corrupt files with a warning, naming each one.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from carlib.base.files import atomic_write_text
from carlib.base.project_files import default_results_dir
from carlib.errors import MissingFileError
from carlib.records.table import records_to_frame

__all__ = ["ResultsStore", "load_results"]


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

    def record(self, run_id: str) -> dict[str, Any]:
        """The record of ``run_id``; a :class:`~carlib.errors.MissingFileError` naming the latest ids when absent."""
        found = next((r for r in self.records() if r["run_id"] == run_id), None)
        if found is None:
            latest = [r["run_id"] for r in self.records()[-3:]]
            raise MissingFileError(f"no run {run_id!r} in the results store {str(self.root)!r} "
                                   + (f"(its latest runs: {', '.join(latest)}); " if latest else "(it has no runs); ")
                                   + "check the id (carlib results --results-dir DIR lists them) and --results-dir.")
        return found

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
        return sorted(found, key=_record_order)

    def table(self, study: str | None = None) -> pd.DataFrame:
        """The combined results table: one row per run, config fields and metrics as columns."""
        return records_to_frame(self.records(study))


def load_results(results_dir: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
                 study: str | None = None) -> pd.DataFrame:
    """The combined results table of a store (default: ``$CARLIB_RESULTS_DIR`` or ``./results``).

    A list of stores (the shards of one sweep, each machine's own) gives one table of all their
    runs; a run found in several (a store and its copy) counts once.
    """
    if results_dir is None or isinstance(results_dir, (str, os.PathLike)):
        return ResultsStore(results_dir).table(study)
    runs = {r["run_id"]: r for store in results_dir for r in ResultsStore(store).records(study)}
    return records_to_frame(sorted(runs.values(), key=_record_order))


def _record_order(record: dict[str, Any]) -> tuple[str, str]:
    return (str(record.get("started_at") or ""), str(record["run_id"]))


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy arrays and scalars (an array's .item() fails unless it has one element)
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"cannot store {type(value).__name__} in a run record")
