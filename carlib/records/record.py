"""A run record, built in one place: what every record holds, and how a run or a dead trial gets one.

A record is one JSON document per run (:class:`~carlib.records.store.ResultsStore` writes it):

- ``schema``, ``run_id``, ``study``, ``status`` (``running`` while it is being filled, then ``ok``
  or ``failed``), ``started_at`` / ``finished_at`` (UTC, ISO 8601);
- ``config``: the resolved config that produced it (every parameter, R7);
- ``data``, ``checkpoint``, ``training``, ``history``, ``metrics``, ``timings``: what the run
  read, saved, how it computed, each epoch, and the scores (filled by
  :func:`carlib.train.experiment.run_experiment`);
- ``versions`` and ``hardware``: the libraries and the machine (its name, and the GPUs the run was given);
- ``sweep``: for a sweep's trial, the engine that ran it and how many attempts it took;
- ``error`` (and ``traceback``) when it failed.

:func:`new_record` makes the skeleton for a run; :func:`failed_trial_record` is what the sweep
runner writes for a trial whose process died before it could write its own.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import secrets
from typing import Any, Mapping

__all__ = ["RECORD_SCHEMA", "new_run_id", "utc_now", "environment_info", "new_record", "failed_trial_record"]

RECORD_SCHEMA = 1
_VERSIONED = ("carlib", "tensorflow", "keras", "albumentations", "numpy")


def new_run_id(study: str) -> str:
    """A unique, sortable id: UTC time, study name and random bits (unique across processes)."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    safe_study = "".join(c if c.isalnum() or c in "-_" else "-" for c in study)[:40]
    return f"{stamp}-{safe_study}-{secrets.token_hex(4)}"


def utc_now() -> str:
    """The current UTC time in ISO 8601, to the second (``started_at``, ``finished_at``)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment_info(gpus: list[str] | None = None) -> dict[str, Any]:
    """Library versions and hardware, recorded with every run (read from package metadata: nothing is imported).

    ``gpus``: the GPU names the run saw (the training runtime knows them); ``None`` when unknown.
    ``host`` and ``cuda_visible_devices`` say where the run ran: the machine, and the GPUs it was given
    (``CUDA_VISIBLE_DEVICES`` as the run saw it, set by a sweep's ``--gpus``, Ray or a scheduler; ``None``
    when unset, i.e. every GPU of the machine).
    """
    return {
        "versions": {"python": platform.python_version(), **{name: _version(name) for name in _VERSIONED}},
        "hardware": {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "gpus": list(gpus) if gpus is not None else None,
            "host": platform.node(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        },
    }


def new_record(*, run_id: str, study: str, config: Mapping[str, Any], started_at: str, status: str = "running",
               **sections: Any) -> dict[str, Any]:
    """The skeleton of a record: identity, status, times and the resolved config; ``sections`` add the rest."""
    return {"schema": RECORD_SCHEMA, "run_id": run_id, "study": study, "status": status, "started_at": started_at,
            "config": dict(config), **sections}


def failed_trial_record(config: Mapping[str, Any], error: str, *, started_at: str, **sections: Any) -> dict[str, Any]:
    """The record of a trial whose process died before writing its own (killed, out of memory, a broken kernel)."""
    study = str(config.get("study") or "adhoc")
    return new_record(run_id=new_run_id(study), study=study, config=config, started_at=started_at, status="failed",
                      metrics={}, error=error, finished_at=utc_now(), **sections)
