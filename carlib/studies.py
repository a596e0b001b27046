"""Studies: named questions, each with its scientific parameters, run over several seeds.

Following Google's tuning playbook, a study compares values of its *scientific*
parameters; the seed is a nuisance parameter that runs repeat over (R5, R10), and
everything else is held fixed. Notebooks are thin wrappers around :func:`run_study`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import pandas as pd

from carlib.config import PARAMETER_NAMES, ConfigError, ExperimentConfig, check_known
from carlib.results import load_results

__all__ = ["StudySpec", "STUDIES", "run_study", "summarize", "study_summary", "notebook_parameters",
           "STUDY_PARAMETERS"]

STUDY_PARAMETERS: tuple[str, ...] = (*PARAMETER_NAMES, "seeds")


@dataclasses.dataclass(frozen=True)
class StudySpec:
    """A study: the question it answers and the parameters whose effect it measures."""

    name: str
    question: str
    scientific: tuple[str, ...]


STUDIES: dict[str, StudySpec] = {
    "lr_study": StudySpec("lr_study", "Which learning rate and schedule train this backbone best?",
                          ("lr", "schedule")),
}


def get_study(name: str) -> StudySpec:
    """The spec of a known study; an unknown name lists the known ones."""
    try:
        return STUDIES[name]
    except KeyError:
        raise ConfigError(f"unknown study {name!r}. Known studies: {', '.join(sorted(STUDIES))}.") from None


def run_study(study: str, *, seeds: int = 1, **params: Any) -> list[dict[str, Any]]:
    """Run one configuration of ``study`` for ``seeds`` consecutive seeds (``seed``, ``seed+1``, …).

    ``study`` names the group the records belong to (a known study, or any name of yours).
    Returns the records, which are also in the results store. Unknown parameter names fail
    before anything runs.
    """
    check_known(params, PARAMETER_NAMES)
    try:
        seeds = int(seeds)
    except (TypeError, ValueError):
        raise ConfigError(f"seeds={seeds!r} has the wrong type: expected an integer >= 1.") from None
    if seeds < 1:
        raise ConfigError(f"seeds={seeds!r} is out of range: expected an integer >= 1 (runs per configuration).")
    from carlib.experiment import run_experiment  # TensorFlow loads here, not for summaries

    base = ExperimentConfig.from_dict(params, study=study)
    return [run_experiment(base.replace(seed=base.seed + i)) for i in range(seeds)]


def summarize(frame: pd.DataFrame, by: tuple[str, ...] | list[str], metric: str = "val_accuracy_best") -> pd.DataFrame:
    """Per configuration of ``by``: number of finished runs, mean and std of ``metric`` across seeds, best first."""
    columns = ["n", "mean", "std", "min", "max"]
    if frame.empty or metric not in frame:
        return pd.DataFrame(columns=columns)
    done = frame[(frame["status"] == "ok") & frame[metric].notna()]
    if done.empty:
        return pd.DataFrame(columns=columns)
    grouped = done.groupby(list(by), dropna=False)[metric]
    summary = grouped.agg(n="count", mean="mean", std="std", min="min", max="max")
    return summary.sort_values("mean", ascending=False)


def study_summary(study: str, results_dir: str | None = None, metric: str = "val_accuracy_best") -> pd.DataFrame:
    """The summary of every finished run of ``study`` in the store, grouped by its scientific parameters."""
    spec = get_study(study)
    return summarize(load_results(results_dir, study=study), spec.scientific, metric)


_IPYTHON_NAMES = {"In", "Out", "exit", "quit", "get_ipython"}
_SCALARS = (int, float, str, bool, type(None))


def _is_parameter_value(value: Any) -> bool:
    # Parameters are scalars or lists of scalars; results such as a list of records are not.
    if isinstance(value, (list, tuple)):
        return all(isinstance(v, _SCALARS) for v in value)
    return isinstance(value, _SCALARS)


def notebook_parameters(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The study parameters defined in a notebook's namespace (its ``parameters`` cell and papermill's injection).

    Every plain value (number, string, None, list of those) that is not private counts as a
    parameter, so a misspelt ``papermill -p learning_rate …`` fails loudly, with the closest
    valid names, instead of being ignored.
    """
    found = {k: v for k, v in namespace.items()
             if not k.startswith("_") and k not in _IPYTHON_NAMES and _is_parameter_value(v)}
    check_known(found, STUDY_PARAMETERS)
    return found
