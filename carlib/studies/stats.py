"""Statistics across seeds: summaries with confidence intervals and a verdict on the top two (R5, R10).

One run proves nothing: 68.5% vs 71% after one seed each may be noise. A study's summary
therefore reports, per configuration, the number of finished runs, mean, standard deviation
and a 95% confidence interval (Student's t), and :func:`compare_top_two` says whether the
best configuration is distinguishable from the runner-up (Welch's t-test, which does not
assume equal variances), or that no comparison is possible yet.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["summarize", "compare_top_two", "Comparison", "SUMMARY_COLUMNS"]

SUMMARY_COLUMNS = ["n", "mean", "std", "ci95_low", "ci95_high", "min", "max"]


def _finished(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    if frame.empty or metric not in frame or "status" not in frame:
        return frame.iloc[0:0]
    return frame[(frame["status"] == "ok") & frame[metric].notna()]


def _ci95(values: np.ndarray) -> tuple[float, float]:
    n = len(values)
    if n < 2:
        return (math.nan, math.nan)
    mean, sem = float(np.mean(values)), float(np.std(values, ddof=1) / math.sqrt(n))
    half = float(stats.t.ppf(0.975, df=n - 1)) * sem
    return (mean - half, mean + half)


def summarize(frame: pd.DataFrame, by: Sequence[str], metric: str = "val_accuracy_best",
              extra: Sequence[str] = ()) -> pd.DataFrame:
    """Per configuration of ``by``: n, mean, std, 95% CI, min and max of ``metric`` over finished runs, best first.

    ``extra`` columns (e.g. ``epoch_s``) are averaged per configuration and appended as
    ``<name>_mean``. Failed runs are left out; the index is the configuration.
    """
    done = _finished(frame, metric)
    extra = [c for c in extra if c in frame]
    if done.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS + [f"{c}_mean" for c in extra])
    rows = {}
    for key, group in done.groupby(list(by), dropna=False, sort=False):
        values = group[metric].to_numpy(dtype=float)
        low, high = _ci95(values)
        row = {"n": len(values), "mean": values.mean(), "std": values.std(ddof=1) if len(values) > 1 else math.nan,
               "ci95_low": low, "ci95_high": high, "min": values.min(), "max": values.max()}
        row.update({f"{c}_mean": pd.to_numeric(group[c], errors="coerce").mean() for c in extra})
        rows[key if isinstance(key, tuple) else (key,)] = row
    summary = pd.DataFrame.from_dict(rows, orient="index")
    summary.index = pd.MultiIndex.from_tuples(summary.index, names=list(by)) if len(by) > 1 else \
        pd.Index([k[0] for k in summary.index], name=by[0])
    return summary.sort_values("mean", ascending=False)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The verdict on the best configuration against the runner-up."""

    best: Any
    runner_up: Any
    n_best: int
    n_runner_up: int
    difference: float
    p_value: float | None
    distinguishable: bool | None  # None: no comparison possible yet
    message: str


def _label(by: Sequence[str], key) -> str:
    key = key if isinstance(key, tuple) else (key,)
    return ", ".join(f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}"
                     for name, value in zip(by, key))


def compare_top_two(frame: pd.DataFrame, by: Sequence[str], metric: str = "val_accuracy_best",
                    alpha: float = 0.05) -> Comparison:
    """Is the best configuration (by mean ``metric``) distinguishable from the runner-up?

    Uses Welch's t-test on the per-seed values. With fewer than two finished runs in
    either configuration it does not rank them: the verdict says no comparison is possible.
    """
    summary = summarize(frame, by, metric)
    if len(summary) < 2:
        only = _label(by, summary.index[0]) if len(summary) else None
        return Comparison(only, None, int(summary["n"].iloc[0]) if len(summary) else 0, 0, math.nan, None, None,
                          "only one configuration has finished runs: nothing to compare yet." if only
                          else "no finished runs yet.")
    done = _finished(frame, metric)
    keys = list(summary.index[:2])
    groups = dict(list(done.groupby(list(by), dropna=False, sort=False)))
    values = []
    for key in keys:
        lookup = key if isinstance(key, tuple) or len(by) > 1 else (key,)
        group = groups.get(lookup, groups.get(key))
        values.append(group[metric].to_numpy(dtype=float))
    best, runner = (_label(by, k) for k in keys)
    n1, n2 = len(values[0]), len(values[1])
    difference = float(values[0].mean() - values[1].mean())
    if n1 < 2 or n2 < 2:
        return Comparison(best, runner, n1, n2, difference, None, None,
                          f"no comparison possible yet: best {best} (n={n1}) vs runner-up {runner} (n={n2}); "
                          "run at least 2 seeds of each (3 or more to trust it).")
    spread = max(values[0].std(), values[1].std())
    if spread <= 1e-12 * max(1.0, abs(values[0].mean())):  # no spread: the t statistic is undefined
        p_value = 1.0 if abs(difference) <= 1e-12 else 0.0
    else:
        with warnings.catch_warnings():  # near-identical values: scipy warns about precision, the p-value is fine
            warnings.simplefilter("ignore", RuntimeWarning)
            p_value = float(stats.ttest_ind(values[0], values[1], equal_var=False).pvalue)
    if p_value < alpha:
        message = (f"distinguishable: {best} beats {runner} by {difference:.4f} "
                   f"(Welch's t-test p={p_value:.3g}, n={n1} vs {n2}).")
    else:
        message = (f"not distinguishable: {best} leads {runner} by {difference:.4f}, within the spread across seeds "
                   f"(Welch's t-test p={p_value:.3g}, n={n1} vs {n2}); run more seeds or treat them as equal.")
    return Comparison(best, runner, n1, n2, difference, p_value, p_value < alpha, message)
