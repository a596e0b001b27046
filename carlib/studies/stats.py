"""Statistics across seeds: summaries with confidence intervals, paired verdicts and seed plans (R5, R10).

One run proves nothing: 68.5 % vs 71 % after one seed each may be noise. A study's summary
reports, per configuration, the finished runs and the failed ones, the mean, standard deviation
and 95 % confidence interval (Student's t) of its primary metric, and the verdict compares the best
configuration with the runner-up:

- **paired** on the seeds both ran (runs that share a seed share their split, initial weights,
  data order and augmentation draws, so most of the seed-to-seed noise cancels): a paired t-test
  on the per-seed differences; if every difference is exactly the same, the exact sign test (the
  t statistic is undefined, and a constant difference of two discrete accuracies is weak evidence
  at small n); Welch's t-test when the two share fewer than two seeds;
- it reports the mean difference with its 95 % confidence interval, the p-value and the number of
  pairs; *decisive* when p < ``alpha``, else *inconclusive: the difference lies between −x and
  +y* (never "equal");
- a configuration with failed or diverged runs is named, and the best one cannot win on its
  survivors;
- the **seed plan**: from the spread of the paired differences seen so far, how many seeds per
  configuration would detect a difference of ``min_effect`` with 80 % power. Plan it before
  running: re-testing after each extra seed and stopping at the first p < 0.05 (optional
  stopping) raises the rate of false verdicts well above 5 %.

Records of one trial (same configuration and seed) count once, the latest winning (with a
warning); ties between configurations are broken by their label, so the ranking is deterministic.
:func:`decide` is the verdict on plain numbers; ``carlib bench verdicts`` runs it on simulated
studies to measure its false-verdict rate and power.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from carlib.config import PARAMETER_NAMES
from carlib.errors import CarlibWarning

__all__ = ["summarize", "compare_top_two", "decide", "deduplicate", "seeds_needed", "Verdict", "SUMMARY_COLUMNS",
           "ALPHA", "MIN_EFFECT", "POWER"]

SUMMARY_COLUMNS = ["n", "n_failed", "mean", "std", "ci95_low", "ci95_high", "min", "max"]
ALPHA = 0.05  # a verdict is decisive when p < ALPHA
MIN_EFFECT = 0.01  # the difference a seed plan is sized for: 1 point of accuracy
POWER = 0.8  # the chance a seed plan gives of detecting MIN_EFFECT when it is real
MAX_PLANNED_SEEDS = 1000
# Config fields that do not make two runs different trials.
_NOT_TRIAL = {"results_dir", "trial_id"}


# --------------------------------------------------------------------------- the table
def _label(by: Sequence[str], key) -> str:
    key = key if isinstance(key, tuple) else (key,)
    return ", ".join(f"{name}={_shown(value)}" for name, value in zip(by, key))


def _shown(value) -> str:
    """A parameter's value as a person wrote it: None where the table holds NaN (weights None), floats short."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "None"
    return f"{value:g}" if isinstance(value, float) else str(value)


def deduplicate(frame: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """One row per trial: rows with the same configuration (every config column, ``study`` and ``by``) and seed
    count once, the latest winning.

    A trial recorded twice (rerun by hand, two stores merged) would otherwise count as two
    seeds. The dropped run ids are named in a :class:`~carlib.errors.CarlibWarning`.
    """
    keys = [c for c in frame.columns if (c in PARAMETER_NAMES or c in by or c == "study") and c not in _NOT_TRIAL]
    if frame.empty or not keys or "seed" not in keys:
        return frame
    ordered = frame.sort_values("started_at", kind="stable") if "started_at" in frame else frame
    signature = ordered[keys].apply(lambda column: column.map(repr)).agg("|".join, axis=1)
    duplicated = signature.duplicated(keep="last")
    if duplicated.any():
        dropped = ordered.loc[duplicated, "run_id"].tolist() if "run_id" in ordered else duplicated.sum()
        warnings.warn(f"{int(duplicated.sum())} record(s) repeat a trial already in the store (same configuration "
                      f"and seed) and are left out, the latest of each counting once: {dropped}", CarlibWarning,
                      stacklevel=3)
    return ordered.loc[~duplicated].sort_index()


def _finished(frame: pd.DataFrame, metric: str) -> pd.Series:
    if frame.empty or metric not in frame or "status" not in frame:
        return pd.Series(False, index=frame.index)
    return (frame["status"] == "ok") & pd.to_numeric(frame[metric], errors="coerce").notna()


def _ci95(values: np.ndarray) -> tuple[float, float]:
    n = len(values)
    if n < 2:
        return (math.nan, math.nan)
    mean, sem = float(np.mean(values)), float(np.std(values, ddof=1) / math.sqrt(n))
    half = float(stats.t.ppf(0.975, df=n - 1)) * sem
    return (mean - half, mean + half)


def _groups(frame: pd.DataFrame, by: Sequence[str]):
    """(key, group) per configuration, in a deterministic order."""
    return list(frame.groupby(list(by), dropna=False, sort=True))


def summarize(frame: pd.DataFrame, by: Sequence[str], metric: str = "test_accuracy_best",
              extra: Sequence[str] = ()) -> pd.DataFrame:
    """Per configuration of ``by``: n finished runs, n_failed, mean, std, 95 % CI, min and max of ``metric``; best first.

    ``extra`` columns (e.g. ``epoch_s``, ``val_accuracy_best``) are averaged over the finished runs
    and appended as ``<name>_mean``. Repeated trials count once (:func:`deduplicate`); failed runs
    count in ``n_failed`` only. Ties in the mean are ordered by the configuration's label.
    """
    frame = deduplicate(frame, by)
    extra = [c for c in extra if c in frame and c != metric]
    columns = SUMMARY_COLUMNS + [f"{c}_mean" for c in extra]
    if frame.empty or any(name not in frame for name in by):
        return pd.DataFrame(columns=columns)
    finished = _finished(frame, metric)
    rows, labels = {}, {}
    for key, group in _groups(frame, by):
        ok = group[finished.loc[group.index]]
        values = pd.to_numeric(ok[metric], errors="coerce").to_numpy(dtype=float) if metric in ok else np.zeros(0)
        n_failed = int((group["status"] != "ok").sum())
        if not len(values) and not n_failed:
            continue
        low, high = _ci95(values)
        row = {"n": len(values), "n_failed": n_failed,
               "mean": values.mean() if len(values) else math.nan,
               "std": values.std(ddof=1) if len(values) > 1 else math.nan, "ci95_low": low, "ci95_high": high,
               "min": values.min() if len(values) else math.nan, "max": values.max() if len(values) else math.nan}
        row.update({f"{c}_mean": pd.to_numeric(ok[c], errors="coerce").mean() for c in extra})
        key = key if isinstance(key, tuple) else (key,)
        rows[key], labels[key] = row, _label(by, key)
    if not rows:
        return pd.DataFrame(columns=columns)
    # Rows by position, not by key: a key holding NaN (weights None) never equals itself, so pandas would lose it.
    summary = pd.DataFrame(list(rows.values()))
    summary["_label"], summary["_key"] = list(labels.values()), list(rows)
    summary = summary.sort_values(["mean", "_label"], ascending=[False, True], na_position="last", kind="stable")
    keys = list(summary.pop("_key"))
    summary = summary.drop(columns="_label")
    summary.index = pd.MultiIndex.from_tuples(keys, names=list(by)) if len(by) > 1 else \
        pd.Index([k[0] for k in keys], name=by[0])
    summary.attrs["metric"] = metric
    return summary[columns]


# ------------------------------------------------------------------------- the verdict
@dataclasses.dataclass(frozen=True)
class Verdict:
    """The verdict on the best configuration against the runner-up.

    ``difference`` is best − runner-up (the mean of the paired differences, or the difference of the
    means for Welch); ``ci95`` its 95 % confidence interval; ``test`` the test used (``paired t-test``,
    ``sign test``, ``Welch's t-test``, or ``None`` when no comparison is possible); ``decisive``: the
    best is better (``True``), the data cannot tell (``False``), or no comparison yet (``None``).
    ``seeds_needed``: seeds per configuration that detect ``min_effect`` with 80 % power, from the
    spread seen so far (``None`` when it cannot be estimated).
    """

    metric: str
    best: str | None
    runner_up: str | None
    n_best: int
    n_runner_up: int
    n_pairs: int
    test: str | None
    difference: float
    ci95: tuple[float, float] | None
    p_value: float | None
    decisive: bool | None
    failed: dict[str, int]
    k: int
    min_effect: float
    seeds_needed: int | None
    message: str

    @property
    def distinguishable(self) -> bool | None:
        """Same as :attr:`decisive` (the name of earlier versions)."""
        return self.decisive

    @property
    def n_pairs_or_runs(self) -> str:
        """How many runs the comparison rests on, in words."""
        return f"{self.n_pairs} pairs" if self.n_pairs else f"n={self.n_best} vs {self.n_runner_up}"


def seeds_needed(spread: float, min_effect: float = MIN_EFFECT, *, alpha: float = ALPHA, power: float = POWER,
                 paired: bool = True) -> int | None:
    """Seeds per configuration that detect a difference of ``min_effect`` with ``power``, two-sided at ``alpha``.

    ``spread``: the standard deviation of the per-seed differences (paired), or of single runs
    (unpaired: two groups of n each). Exact for normal data (noncentral t); ``None`` when the spread
    is unknown or zero, :data:`MAX_PLANNED_SEEDS` + 1 when more than that would be needed.
    """
    if not spread or not math.isfinite(spread) or spread <= 0 or min_effect <= 0:
        return None
    for n in range(2, MAX_PLANNED_SEEDS + 1):
        df = n - 1 if paired else 2 * n - 2
        noncentrality = min_effect / (spread / math.sqrt(n) if paired else spread * math.sqrt(2 / n))
        critical = stats.t.ppf(1 - alpha / 2, df)
        achieved = stats.nct.sf(critical, df, noncentrality) + stats.nct.cdf(-critical, df, noncentrality)
        if achieved >= power:
            return n
    return MAX_PLANNED_SEEDS + 1


def _fmt(value: float) -> str:
    return f"{value:+.4f}"


def _plan_text(needed: int | None, min_effect: float, n_now: int, alpha: float) -> str:
    if needed is None:
        return "the spread across seeds is not known yet, so no seed plan; run at least 3 seeds of each"
    count = f"more than {MAX_PLANNED_SEEDS}" if needed > MAX_PLANNED_SEEDS else str(needed)
    return (f"{count} seeds per configuration would detect a difference of {min_effect:g} with "
            f"{POWER:.0%} power (this has {n_now}); fix the number before running: adding seeds until p < "
            f"{alpha:g} inflates false verdicts")


def _differing(best: str, runner: str, parameters: Mapping[str, Mapping[str, Any]] | None) -> tuple[str, str]:
    """The two configurations' names in a message: only the parameters in which they differ (all when none do)."""
    if not parameters or best not in parameters or runner not in parameters:
        return best, runner
    a, b = parameters[best], parameters[runner]
    keys = [k for k in a if str(a.get(k)) != str(b.get(k))] or list(a)
    return _label(keys, tuple(a[k] for k in keys)), _label(keys, tuple(b[k] for k in keys))


def decide(values: Mapping[str, Mapping[Any, float]], *, failed: Mapping[str, int] | None = None,
           metric: str = "test_accuracy_best", alpha: float = ALPHA, min_effect: float = MIN_EFFECT,
           plan: bool = True, parameters: Mapping[str, Mapping[str, Any]] | None = None) -> Verdict:
    """The verdict on numbers: ``values[label][seed]`` is a finished run's metric; ``failed[label]`` counts failures.

    Ranks the configurations by mean (ties by label), compares the best with the runner-up as the
    module's docstring says, and writes the message. ``plan=False`` skips the seed plan (faster, for
    simulations). ``parameters[label]`` (each configuration's scientific parameters) lets the
    message name the two by the parameters in which they differ.
    """
    failed = {label: int(n) for label, n in (failed or {}).items() if n}
    means = {label: float(np.mean(list(v.values()))) for label, v in values.items() if len(v)}
    ranked = sorted(means, key=lambda label: (-means[label], label))
    k = len(ranked)
    named_failures = "; ".join(f"{label} failed {n} run(s)" for label, n in sorted(failed.items()))

    def verdict(message: str, **fields) -> Verdict:
        base = dict(metric=metric, best=None, runner_up=None, n_best=0, n_runner_up=0, n_pairs=0, test=None,
                    difference=math.nan, ci95=None, p_value=None, decisive=None, failed=failed, k=k,
                    min_effect=min_effect, seeds_needed=None)
        base.update(fields)
        return Verdict(message=message, **base)

    if k < 2:
        only = ranked[0] if ranked else None
        message = ("only one configuration has finished runs: nothing to compare yet." if only else
                   "no finished runs yet.") + (f" ({named_failures})" if named_failures else "")
        return verdict(message, best=only, n_best=len(values[only]) if only else 0)
    best_label, runner_label = ranked[0], ranked[1]
    a, b = values[best_label], values[runner_label]
    best, runner = _differing(best_label, runner_label, parameters)  # what the message calls them
    shared = sorted(set(a) & set(b), key=str)
    common = dict(best=best_label, runner_up=runner_label, n_best=len(a), n_runner_up=len(b))
    if len(shared) >= 2:
        d = np.array([a[s] - b[s] for s in shared], dtype=float)
        n, difference = len(d), float(d.mean())
        spread = float(d.std(ddof=1))
        if spread <= 1e-12 * max(1.0, abs(difference)):  # every pair differs by the same amount
            test, ci = "sign test", (difference, difference)
            p_value = 1.0 if abs(difference) <= 1e-12 else min(1.0, 2 * 0.5 ** n)
            needed = None
        else:
            test = "paired t-test"
            half = float(stats.t.ppf(0.975, n - 1)) * spread / math.sqrt(n)
            ci = (difference - half, difference + half)
            p_value = float(stats.ttest_rel(d, np.zeros(n)).pvalue)
            needed = seeds_needed(spread, min_effect, alpha=alpha) if plan else None
        fields = dict(common, n_pairs=n, test=test, difference=difference, ci95=ci, p_value=p_value,
                      seeds_needed=needed)
        basis = f"{test} on {n} seeds both ran"
    elif len(a) >= 2 and len(b) >= 2:
        x, y = np.array(list(a.values()), dtype=float), np.array(list(b.values()), dtype=float)
        difference = float(x.mean() - y.mean())
        vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
        test = "Welch's t-test"
        if vx + vy <= 1e-24:  # no spread in either: the noise cannot be estimated
            fields = dict(common, test=test, difference=difference, ci95=None, p_value=None)
            message = (f"inconclusive: {best} leads {runner} by {_fmt(difference)}, but neither varies across seeds "
                       f"(n={len(x)} vs {len(y)}), so the noise cannot be estimated; run them on the same seeds.")
            return verdict(message + (f" ({named_failures})" if named_failures else ""), decisive=False, **fields)
        df = (vx + vy) ** 2 / ((vx ** 2 / (len(x) - 1) if vx else 0) + (vy ** 2 / (len(y) - 1) if vy else 0))
        half = float(stats.t.ppf(0.975, df)) * math.sqrt(vx + vy)
        with warnings.catch_warnings():  # near-identical values: scipy warns about precision, the p-value is fine
            warnings.simplefilter("ignore", RuntimeWarning)
            p_value = float(stats.ttest_ind(x, y, equal_var=False).pvalue)
        spread = math.sqrt((x.var(ddof=1) + y.var(ddof=1)) / 2)
        fields = dict(common, test=test, difference=difference, ci95=(difference - half, difference + half),
                      p_value=p_value,
                      seeds_needed=seeds_needed(spread, min_effect, alpha=alpha, paired=False) if plan else None)
        basis = f"{test}, n={len(x)} vs {len(y)}: they share fewer than 2 seeds"
    else:
        message = (f"no comparison possible yet: best {best} (n={len(a)}) vs runner-up {runner} (n={len(b)}); run "
                   "at least 2 seeds of each, the same seeds for both (3 or more to trust it).")
        return verdict(message + (f" ({named_failures})" if named_failures else ""), **common)

    low, high = fields["ci95"]
    p_value = fields["p_value"]
    p_text = f"p={p_value:.3g}"
    decisive = p_value < alpha and difference > 0
    unstable = failed.get(best_label, 0)
    if fields["test"] == "sign test":  # every pair differs by the same amount: no interval to give
        n = fields["n_pairs"]
        basis = f"all {n} seeds both ran differ by exactly {_fmt(difference)}; sign test, {p_text}"
        low = high = difference
    if fields["test"] == "sign test" and not decisive and not unstable:
        message = (f"inconclusive: {best} − {runner} = {_fmt(difference)} on every one of {n} seeds ({basis}): "
                   f"{n} identical outcomes are too few to tell (6 the same way would be). Not evidence that they "
                   "are equal.")
    elif decisive and unstable:
        decisive = False
        message = (f"not decided: {best} leads {runner} by {_fmt(difference)} (95 % CI {_fmt(low)} to {_fmt(high)}; "
                   f"{basis}, {p_text}), but {best} failed {unstable} run(s): it must not win on its survivors; "
                   "lower its learning rate or add warm-up, and run it again.")
    elif decisive:
        message = (f"decisive: {best} beats {runner} by {_fmt(difference)} (95 % CI {_fmt(low)} to {_fmt(high)}; "
                   f"{basis}, {p_text}).")
    else:
        message = (f"inconclusive: the difference {best} − {runner} lies between {_fmt(low)} and {_fmt(high)} "
                   f"(95 % CI, mean {_fmt(difference)}; {basis}, {p_text}). Not evidence that they are equal.")
    if fields.get("seeds_needed") is not None or (plan and not decisive and fields["test"] != "sign test"):
        message += " Seed plan: " + _plan_text(fields.get("seeds_needed"), min_effect, min(len(a), len(b)), alpha) + "."
    if k >= 3:
        message += (f" Winner's curse: {best} is the best of {k} configurations on this very metric, so its mean is "
                    "optimistic; confirm it with fresh seeds before quoting it.")
    others = {label: n for label, n in failed.items() if label != best_label or not unstable}
    if others:
        message += " Failed runs: " + "; ".join(f"{label} failed {n}" for label, n in sorted(others.items())) + "."
    return verdict(message, decisive=decisive, **fields)


def compare_top_two(frame: pd.DataFrame, by: Sequence[str], metric: str = "test_accuracy_best",
                    alpha: float = ALPHA, min_effect: float = MIN_EFFECT) -> Verdict:
    """Is the best configuration (by mean ``metric``) better than the runner-up? See :func:`decide`.

    ``frame`` is a results table (one row per run: the ``by`` columns, ``seed``, ``status`` and
    ``metric``); repeated trials count once (:func:`deduplicate`).
    """
    frame = deduplicate(frame, by)
    if frame.empty or any(name not in frame for name in by):
        return decide({}, metric=metric, alpha=alpha, min_effect=min_effect)
    finished = _finished(frame, metric)
    values: dict[str, dict[Any, float]] = {}
    failed: dict[str, int] = {}
    parameters: dict[str, dict[str, Any]] = {}
    for index, (key, group) in enumerate(_groups(frame, by)):
        label = _label(by, key)
        parameters[label] = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        ok = group[finished.loc[group.index]]
        seeds = ok["seed"] if "seed" in ok else pd.Series(range(len(ok)), index=ok.index) + index * 10**6
        values[label] = dict(zip(seeds.tolist(), pd.to_numeric(ok[metric]).astype(float).tolist()))
        failed[label] = int((group["status"] != "ok").sum())
    return decide({label: v for label, v in values.items() if v}, failed=failed, metric=metric, alpha=alpha,
                  min_effect=min_effect, parameters=parameters)
