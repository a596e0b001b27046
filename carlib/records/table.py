"""The combined results table: one row per run, config fields and metrics as columns (R7).

No TensorFlow and no albumentations here: ``carlib results`` reads a store in about a second.
"""

from __future__ import annotations

from typing import Any, Iterable

import pandas as pd

from carlib.config import PARAMETER_NAMES

__all__ = ["records_to_frame", "LEADING_COLUMNS", "COMPACT_COLUMNS"]

# Columns that lead the combined table, in this order; the rest follow alphabetically.
LEADING_COLUMNS = ["run_id", "study", "status", "started_at", "backbone", "image_size", "lr", "schedule",
                   "augmentation", "val_split", "seed", "epochs", "test_accuracy_best", "test_accuracy_last",
                   "val_accuracy_best", "val_accuracy_last", "best_epoch"]
# The columns `carlib results` and the report show by default: the leading ones identify and score each run.
COMPACT_COLUMNS = ("run_id", "study", "status", "backbone", "image_size", "lr", "schedule", "augmentation",
                   "val_split", "seed", "epochs", "test_accuracy_best", "test_accuracy_last", "val_accuracy_best",
                   "best_epoch", "total_s", "error")


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
        row.update({k: v for k, v in record.get("data", {}).items()
                    if k in ("n_train", "n_val", "n_test", "num_classes", "n_skipped", "n_converted")})
        row.update({f"{k}": v for k, v in record.get("timings", {}).items() if k in ("total_s", "fit_s", "epoch_s", "cpu_s")})
        # How the run computed (issue 4): the resolved strategy, replicas, global batch and precision.
        row.update({k: v for k, v in record.get("training", {}).items()
                    if k in ("replicas", "global_batch_size", "precision_policy", "stopped_early_after_epoch")})
        if record.get("rerun_of"):  # carlib rerun: the run this one repeats
            row["rerun_of"] = record["rerun_of"]
        row["error"] = record.get("error")
        row["run_dir"] = record.get("run_dir")
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=LEADING_COLUMNS)
    leading = [c for c in LEADING_COLUMNS if c in frame.columns]
    return frame[leading + sorted(c for c in frame.columns if c not in leading)]


def _cell(value: Any) -> Any:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
