"""The log of a sequential study (``carlib sweep --until-decisive``): its design, each round's decision, why it stopped.

One JSON file per sweep in ``<results_dir>/sequential/<study>-<sweep hash>.json``, written
atomically after every round. It is what lets a killed study resume without deciding twice on the
same seeds (a round in the log is never decided again), what fixes the design for the whole study
(a resume with another ``--max-seeds`` or ``--min-effect`` is refused: the boundaries were spent
for the first), and what the summary and the report read to say why a study stopped, after how
many seeds, and how many runs its early stops saved.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from carlib.base.files import atomic_write_text
from carlib.errors import ConfigError
from carlib.studies.sequential import SequentialDesign
from carlib.studies.stats import MIN_EFFECT, Verdict, compare_top_two

__all__ = ["LOG_FOLDER", "PLAN_FOLDER", "log_path", "read_log", "write_log", "study_logs", "design_of",
           "stop_sentence", "write_plan", "planned_seeds", "verdict_in_store"]

LOG_FOLDER = "sequential"
PLAN_FOLDER = "plans"  # the seeds each fixed-n sweep of a study planned: more than that in the store is a re-read


def log_path(results_dir: str | os.PathLike, study: str, sweep_key: str) -> Path:
    """Where the log of the sweep ``sweep_key`` (a hash of its grid and fixed parameters) of ``study`` lives."""
    return Path(results_dir) / LOG_FOLDER / f"{study}-{sweep_key}.json"


def read_log(path: str | os.PathLike) -> dict[str, Any] | None:
    """The log at ``path``, or ``None`` when the study has not started; a damaged file is a clear error."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        log = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: the log of a sequential study cannot be read ({err}); move it away to start the "
                          "study's decisions afresh.") from None
    if not isinstance(log, dict) or "design" not in log or "rounds" not in log:
        raise ConfigError(f"{path}: not the log of a sequential study (no design or rounds); move it away.")
    return log


def write_log(path: str | os.PathLike, log: dict[str, Any]) -> Path:
    """Write the log atomically (a kill leaves the previous round's log, never half of one)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(log, indent=1, sort_keys=True))


def study_logs(results_dir: str | os.PathLike | None, study: str) -> list[dict[str, Any]]:
    """The logs of ``study``'s sequential sweeps in a store, oldest first."""
    if results_dir is None:
        return []
    folder = Path(results_dir) / LOG_FOLDER
    paths = sorted(folder.glob(f"{study}-*.json"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    return [log for log in (read_log(p) for p in paths) if log is not None]


def design_of(log: dict[str, Any]) -> SequentialDesign:
    """The sequential design a log fixed when its study started."""
    design = log["design"]
    return SequentialDesign(alpha=float(design["alpha"]), horizon=int(design["max_seeds"]))


def stop_sentence(log: dict[str, Any]) -> str:
    """Why the study stopped, after how many seeds, and how many runs the early stops saved (or that it runs on)."""
    stopped = log.get("stopped")
    design = log["design"]
    if not stopped:
        return (f"Sequential study (--until-decisive, at most {design['max_seeds']} seeds): not stopped yet, "
                f"{len(log['rounds'])} round(s) decided; rerun the sweep to go on.")
    reason = {"decisive": "decisive: the best beats each of the others",
              "equivalent": f"equivalent: no difference larger than {design['min_effect']:g}",
              "cap": f"cap: {design['max_seeds']} seeds reached without a decision"}[stopped["reason"]]
    return (f"Sequential study stopped after {stopped['seeds']} seed(s) ({reason}); it ran {stopped['runs']} runs, and "
            f"its early stops saved {stopped['runs_saved']} of the {stopped['runs'] + stopped['runs_saved']} a full "
            f"{design['max_seeds']}-seed study would run.")


def write_plan(results_dir: str | os.PathLike, study: str, sweep_key: str, seeds: int) -> Path:
    """Record that a fixed-n sweep of ``study`` planned ``seeds`` seeds per configuration (its file's ``seeds:``).

    The first plan stands: raising ``seeds:`` in the file and rerunning is adding seeds after a look.
    """
    path = Path(results_dir) / PLAN_FOLDER / f"{study}-{sweep_key}.json"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps({"study": study, "seeds": int(seeds)}))


def planned_seeds(results_dir: str | os.PathLike | None, study: str) -> int | None:
    """The most seeds any fixed-n sweep of ``study`` in the store planned, or ``None`` when none recorded a plan."""
    folder = Path(results_dir) / PLAN_FOLDER if results_dir is not None else None
    if folder is None or not folder.is_dir():
        return None
    plans = []
    for path in folder.glob(f"{study}-*.json"):
        try:
            plans.append(int(json.loads(path.read_text(encoding="utf-8"))["seeds"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a damaged plan only loses the re-read marking, never a verdict
    return max(plans) if plans else None


def verdict_in_store(frame, scientific, metric: str, results_dir: str | os.PathLike | None, *,
                     min_effect: float = MIN_EFFECT) -> Verdict:
    """The verdict on a study's runs ``frame`` as its store knows it: a sequential study (a log) decided on its
    anytime-valid intervals with why it stopped, a fixed-n study on more seeds than its plan marked as read again.

    What :func:`carlib.studies.run.study_verdict`, ``carlib results --summary`` and the report all say.
    """
    study = str(frame["study"].iloc[0]) if "study" in frame and len(frame) else ""
    logs = study_logs(results_dir, study) if study else []
    verdict = compare_top_two(frame, list(scientific), metric, min_effect=min_effect,
                              design=design_of(logs[-1]) if logs else None,
                              planned_seeds=None if logs or not study else planned_seeds(results_dir, study))
    if not logs:
        return verdict
    return dataclasses.replace(verdict, message=verdict.message + " " + stop_sentence(logs[-1]))
