"""The aggregate a summary ranks configurations by: the mean across seeds (the default), the median, or the worst seed.

The median resists one lucky or unlucky seed; the worst seed is what a configuration guarantees.
Whatever the aggregate, the verdict stays the paired test of :mod:`carlib.studies.stats` on the
mean of the per-seed differences, and :func:`aggregate_note` says so wherever a summary is shown.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import pandas as pd

from carlib.errors import ConfigError
from carlib.studies.stats import deduplicate, summarize

__all__ = ["AGGREGATES", "check_aggregate", "summarize_with", "aggregate_note"]

# Each aggregate and what it takes of a configuration's finished runs (the metric is higher-is-better).
AGGREGATES = {"mean": "mean", "median": "median", "worst": "min"}


def check_aggregate(aggregate: str) -> str:
    """``aggregate`` if it is known; else a :class:`~carlib.errors.ConfigError` naming the choices."""
    if aggregate not in AGGREGATES:
        raise ConfigError(f"aggregate={aggregate!r} is unknown: expected one of {', '.join(AGGREGATES)} (the mean "
                          "across seeds, their median, or the worst seed).")
    return aggregate


def summarize_with(frame: pd.DataFrame, by: Sequence[str], metric: str = "test_accuracy_best",
                   extra: Sequence[str] = (), aggregate: str = "mean") -> pd.DataFrame:
    """:func:`carlib.studies.stats.summarize`, ranked by ``aggregate`` (``mean``, ``median`` or ``worst``).

    ``median`` and ``worst`` add their column after ``n_failed`` and order the configurations by it
    (ties keep the mean's order); ``summary.attrs["aggregate"]`` names the aggregate.
    """
    check_aggregate(aggregate)
    summary = summarize(frame, by, metric, extra)
    summary.attrs["aggregate"] = aggregate
    if aggregate == "mean" or summary.empty:
        return summary
    with warnings.catch_warnings():  # summarize has already warned about repeated trials
        warnings.simplefilter("ignore")
        runs = deduplicate(frame, by)
    finished = runs[(runs["status"] == "ok") & pd.to_numeric(runs[metric], errors="coerce").notna()]
    values = pd.to_numeric(finished[metric]).groupby([finished[name] for name in by], dropna=False)
    per_configuration = values.agg(AGGREGATES[aggregate])
    ranked = summary.copy()
    ranked.insert(2, aggregate, per_configuration.reindex(summary.index).to_numpy(dtype=float))
    ranked = ranked.sort_values(aggregate, ascending=False, kind="stable", na_position="last")
    ranked.attrs.update(summary.attrs)
    return ranked


def aggregate_note(aggregate: str) -> str:
    """One sentence for a summary ranked by ``aggregate``: what it ranks by; the verdict's test is unchanged."""
    what = {"mean": "the mean across seeds", "median": "the median across seeds",
            "worst": "the worst seed (the minimum across seeds)"}[check_aggregate(aggregate)]
    return (f"aggregate: {aggregate}: the summary ranks configurations by {what}; the verdict is the same whatever "
            "the aggregate: it compares means, the best chosen on validation where every run has it, with a paired "
            "test on the mean of their per-seed differences.")
