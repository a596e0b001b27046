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

from carlib.base.values import shown_value
from carlib.config import PARAMETER_NAMES
from carlib.errors import CarlibWarning
from carlib.studies.sequential import (HORIZON, AnytimeInterval, LeaderComparison, SequentialDesign,
                                       compare_with_leader, stopping_seeds)

__all__ = ["summarize", "compare_top_two", "decide", "deduplicate", "seeds_needed", "spread_upper_bound", "Verdict",
           "Comparison", "rank_by_mean", "config_label", "configuration_values", "selection_metric", "SUMMARY_COLUMNS", "ALPHA", "MIN_EFFECT", "POWER", "PLAN_CONFIDENCE"]

SUMMARY_COLUMNS = ["n", "n_failed", "mean", "std", "ci95_low", "ci95_high", "min", "max"]
ALPHA = 0.05  # a verdict is decisive when p < ALPHA
MIN_EFFECT = 0.01  # the difference a seed plan is sized for: 1 point of accuracy
POWER = 0.8  # the chance a seed plan gives of detecting MIN_EFFECT when it is real
MAX_PLANNED_SEEDS = 1000
PLAN_CONFIDENCE = 0.7  # a seed plan sizes for this upper confidence bound of the spread, not the estimate
FLOAT32_RESOLUTION = 1e-6  # accuracies differ by >= 1e-6 per image up to a million images; float32 rounding is ~1e-7
# Config fields that do not make two runs different trials.
_NOT_TRIAL = {"results_dir", "trial_id"}


# --------------------------------------------------------------------------- the table
def config_label(by: Sequence[str], key) -> str:
    """A configuration's name in summaries and verdicts: ``lr=0.001, schedule=cosine`` for ``by`` and its values."""
    key = key if isinstance(key, tuple) else (key,)
    return ", ".join(f"{name}={shown_value(value)}" for name, value in zip(by, key))


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
        rows[key], labels[key] = row, config_label(by, key)
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
class Comparison:
    """best − other by one fixed-n test: the difference, its interval at level 1 − alpha, the p-value.

    ``spread``: the standard deviation the seed plan sizes for (of the paired differences, or of
    single runs for Welch); ``None`` when there is none to estimate.
    """

    test: str | None
    difference: float
    interval: tuple[float, float] | None
    p_value: float | None
    n_pairs: int
    spread: float | None


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The verdict on the best configuration against the others.

    ``difference`` is best − runner-up (the mean of the paired differences, or the difference of the
    means for Welch); ``interval`` its fixed-n confidence interval at ``level`` = 1 − alpha; ``test`` the
    fixed-n test (``paired t-test``, ``sign test``, ``Welch's t-test``, or ``None`` when no comparison is
    possible). ``anytime``: the anytime-valid interval (:mod:`carlib.studies.sequential`), valid however
    often the study is read; ``basis`` says which of the two decided: ``"fixed-n"`` at the planned
    number of seeds, ``"anytime-valid"`` for a study run until decisive or holding more seeds than
    ``planned_seeds``. ``decisive``: the best is better (``True``), the data cannot tell (``False``), or
    no comparison yet (``None``). ``beaten``: the configurations the best decisively beats (anytime
    basis, Holm across the comparisons); ``equivalent``: no difference larger than ``min_effect``
    (anytime basis). ``seeds_needed``: seeds per configuration that detect ``min_effect`` with 80 %
    power, planned from an upper confidence bound of the spread. ``shrunken_difference``: the
    best's lead over the runner-up shrunk for having picked the best of ``k`` (empirical Bayes).
    """

    metric: str
    best: str | None
    runner_up: str | None
    n_best: int
    n_runner_up: int
    n_pairs: int
    test: str | None
    difference: float
    interval: tuple[float, float] | None
    p_value: float | None
    decisive: bool | None
    failed: dict[str, int]
    k: int
    min_effect: float
    seeds_needed: int | None
    message: str
    level: float = 1 - ALPHA
    anytime: AnytimeInterval | None = None
    basis: str = "fixed-n"
    planned_seeds: int | None = None
    beaten: tuple[str, ...] = ()
    equivalent: bool = False
    shrunken_difference: float | None = None
    sequential_mean_seeds: float | None = None

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
    is unknown or zero, :data:`MAX_PLANNED_SEEDS` + 1 when more than that would be needed. Pass an
    upper bound of the spread (:func:`spread_upper_bound`), not the estimate: a plan from the
    estimate falls short of its power about half the time.
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


def spread_upper_bound(spread: float, df: int, confidence: float = PLAN_CONFIDENCE) -> float:
    """The one-sided ``confidence`` upper bound of a standard deviation estimated with ``df`` degrees of freedom (chi²).

    Planning from it keeps the seed plan's promise: from a 3-seed pilot, the plan planned from the
    70 % bound gives at least 80 % power on average (tests/studies/test_stats.py simulates it), the
    plan from the estimate itself about 65 %.
    """
    if df < 1 or not math.isfinite(spread):
        return math.nan
    return spread * math.sqrt(df / stats.chi2.ppf(1 - confidence, df))


def _fmt(value: float) -> str:
    return f"{value:+.4f}"


def _percent(level: float) -> str:
    return f"{100 * level:.3g} %"


def _differing(best: str, runner: str, parameters: Mapping[str, Mapping[str, Any]] | None) -> tuple[str, str]:
    """The two configurations' names in a message: only the parameters in which they differ (all when none do)."""
    if not parameters or best not in parameters or runner not in parameters:
        return best, runner
    a, b = parameters[best], parameters[runner]
    keys = [k for k in a if str(a.get(k)) != str(b.get(k))] or list(a)
    return config_label(keys, tuple(a[k] for k in keys)), config_label(keys, tuple(b[k] for k in keys))


# The steps of a verdict: rank, compare the best with the runner-up (fixed-n), read the anytime-valid
# interval, decide on the basis that applies, then write the message sentence by sentence.
def rank_by_mean(values: Mapping[str, Mapping[Any, float]]) -> list[str]:
    """The labels by mean, best first; ties by label, so the ranking is deterministic."""
    means = {label: sum(v.values()) / len(v) for label, v in values.items() if len(v)}
    return sorted(means, key=lambda label: (-means[label], label))


def _is_constant(d: np.ndarray, n_images: int | None) -> bool:
    """Every pair differs by the same amount: the same count of images when ``n_images`` is known.

    Accuracies stored as float32 carry rounding of about 1e-7, so comparing floats would take a
    constant 2-image difference for a tiny spread (and a paired t of p = 1e-6); counts are exact.
    """
    if n_images:
        counts = np.round(d * n_images)
        return bool(np.all(counts == counts[0]))
    return float(np.ptp(d)) < FLOAT32_RESOLUTION


def _paired(d: np.ndarray, alpha: float, n_images: int | None) -> Comparison:
    n = len(d)
    if _is_constant(d, n_images):  # the t statistic is undefined; n identical signs is the evidence
        constant = float(np.round(d[0] * n_images) / n_images) if n_images else float(np.median(d))
        p_value = 1.0 if abs(constant) < FLOAT32_RESOLUTION else min(1.0, 2 * 0.5 ** n)
        return Comparison("sign test", constant, (constant, constant), p_value, n, None)
    difference, spread = float(d.mean()), float(d.std(ddof=1))
    half = float(stats.t.ppf(1 - alpha / 2, n - 1)) * spread / math.sqrt(n)
    p_value = float(stats.ttest_rel(d, np.zeros(n)).pvalue)
    return Comparison("paired t-test", difference, (difference - half, difference + half), p_value, n, spread)


def _welch(x: np.ndarray, y: np.ndarray, alpha: float) -> Comparison:
    difference = float(x.mean() - y.mean())
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    if vx + vy <= 1e-24:  # no spread in either: the noise cannot be estimated
        return Comparison("Welch's t-test", difference, None, None, 0, None)
    df = (vx + vy) ** 2 / ((vx ** 2 / (len(x) - 1) if vx else 0) + (vy ** 2 / (len(y) - 1) if vy else 0))
    half = float(stats.t.ppf(1 - alpha / 2, df)) * math.sqrt(vx + vy)
    with warnings.catch_warnings():  # near-identical values: scipy warns about precision, the p-value is fine
        warnings.simplefilter("ignore", RuntimeWarning)
        p_value = float(stats.ttest_ind(x, y, equal_var=False).pvalue)
    spread = math.sqrt((x.var(ddof=1) + y.var(ddof=1)) / 2)
    return Comparison("Welch's t-test", difference, (difference - half, difference + half), p_value, 0, spread)


def _compare(a: Mapping[Any, float], b: Mapping[Any, float], alpha: float, n_images: int | None) -> Comparison | None:
    """The fixed-n comparison of best ``a`` with ``b``: paired on 2+ shared seeds, else Welch, else ``None``."""
    shared = sorted(set(a) & set(b), key=str)
    if len(shared) >= 2:
        return _paired(np.array([a[s] - b[s] for s in shared], dtype=float), alpha, n_images)
    if len(a) >= 2 and len(b) >= 2:
        return _welch(np.array(list(a.values()), dtype=float), np.array(list(b.values()), dtype=float), alpha)
    return None


def _shrunken_lead(values: Mapping[str, Mapping[Any, float]], ranked: Sequence[str]) -> float | None:
    """The best's lead over the runner-up, shrunk for having been picked as the best (normal-normal empirical Bayes).

    Each mean is its configuration's true mean plus noise of variance s²/n (s pooled over the
    configurations); the spread of the true means is what the means' spread exceeds that by. The
    lead shrinks by the share of the means' variance that is real: 0 when the means scatter no more
    than noise alone would make them.
    """
    groups = [np.array(list(values[label].values()), dtype=float) for label in ranked]
    if len(groups) < 2 or any(len(g) < 2 for g in groups):
        return None
    means = np.array([g.mean() for g in groups])
    noise = float(np.mean([g.var(ddof=1) for g in groups]) * np.mean([1 / len(g) for g in groups]))
    real = max(0.0, float(means.var(ddof=1)) - noise)
    share = real / (real + noise) if real + noise > 0 else 0.0
    return share * float(means[0] - means[1])


def _anytime_basis(n_now: int, design: SequentialDesign | None, planned_seeds: int | None) -> str:
    """``"anytime-valid"`` for a sequential study or one holding more seeds than planned, else ``"fixed-n"``."""
    if design is not None or (planned_seeds is not None and n_now > planned_seeds):
        return "anytime-valid"
    return "fixed-n"


def _fixed_sentence(c: Comparison, best: str, runner: str, level: float, sizes: tuple[int, int], unstable: int,
                    significant: bool) -> str:
    """The verdict's sentence on the fixed-n test (``significant``: p < alpha and the best ahead)."""
    p_text = f"p={c.p_value:.3g}"
    ci = _percent(level) + " CI"
    if c.test == "sign test":
        basis = f"all {c.n_pairs} seeds both ran differ by exactly {_fmt(c.difference)}; sign test, {p_text}"
        low = high = c.difference
    else:
        basis = (f"{c.test} on {c.n_pairs} seeds both ran" if c.n_pairs else
                 f"{c.test}, n={sizes[0]} vs {sizes[1]}: they share fewer than 2 seeds") + f", {p_text}"
        low, high = c.interval
    if c.test == "sign test" and not significant and not unstable:
        n = c.n_pairs
        return (f"inconclusive: {best} − {runner} = {_fmt(c.difference)} on every one of {n} seeds ({basis}): "
                f"{n} identical outcomes are too few to tell (6 the same way would be). Not evidence that they "
                "are equal.")
    if significant and unstable:
        return (f"not decided: {best} leads {runner} by {_fmt(c.difference)} ({ci} {_fmt(low)} to {_fmt(high)}; "
                f"{basis}), but {best} failed {unstable} run(s): it must not win on its survivors; "
                "lower its learning rate or add warm-up, and run it again.")
    if significant:
        return f"decisive: {best} beats {runner} by {_fmt(c.difference)} ({ci} {_fmt(low)} to {_fmt(high)}; {basis})."
    return (f"inconclusive: the difference {best} − {runner} lies between {_fmt(low)} and {_fmt(high)} "
            f"({ci}, mean {_fmt(c.difference)}; {basis}). Not evidence that they are equal.")


def _interval_text(interval: AnytimeInterval) -> str:
    if interval.method == "none":
        return f"anytime-valid interval: none yet (it needs 2 or more seeds both ran; they share {interval.n})"
    return (f"anytime-valid {_percent(interval.level)} interval {_fmt(interval.low)} to {_fmt(interval.high)} after "
            f"{interval.n} seeds ({interval.method}, valid however often it is read)")


def _anytime_sentence(leader: LeaderComparison, runner_label: str, best: str, runner: str, min_effect: float,
                      unstable: int) -> str:
    """The verdict's sentence on the anytime-valid intervals (a sequential study, or one read again)."""
    interval = leader.intervals[runner_label]
    text = _interval_text(interval)
    if unstable:
        return (f"not decided: {best} − {runner} lies in the {text}, but {best} failed {unstable} run(s): it must "
                "not win on its survivors; lower its learning rate or add warm-up, and run it again.")
    if leader.decisive:
        others = "each of the others" if len(leader.intervals) > 1 else runner
        return f"decisive: {best} beats {others}; {best} − {runner} lies in the {text}."
    if leader.equivalent(min_effect):
        return (f"no difference larger than {min_effect:g}: every configuration's difference from {best} lies inside "
                f"±{min_effect:g}; {best} − {runner}: {text}. Not evidence that they are equal.")
    beaten = f" {best} decisively beats {', '.join(leader.beaten)}." if leader.beaten else ""
    return (f"inconclusive: {best} − {runner} lies in the {text}.{beaten} Not evidence that they are equal.")


def _plan_sentence(needed: int | None, min_effect: float, n_now: int, alpha: float,
                   mean_seeds: float | None) -> str:
    if needed is None:
        return "the spread across seeds is not known yet, so no seed plan; run at least 3 seeds of each"
    count = f"more than {MAX_PLANNED_SEEDS}" if needed > MAX_PLANNED_SEEDS else str(needed)
    sequential = (f"; or run it --until-decisive: at that difference it stops after {mean_seeds:.1f} seeds on average"
                  if mean_seeds is not None else "")
    return (f"{count} seeds per configuration would detect a difference of {min_effect:g} with "
            f"{POWER:.0%} power, planned from the {PLAN_CONFIDENCE:.0%} upper bound of the spread (this has {n_now}); "
            f"fix the number before running: adding seeds until p < {alpha:g} inflates false verdicts{sequential}")


def _curse_sentence(k: int, best: str, runner: str, raw: float, shrunken: float | None) -> str:
    number = (f"; shrunk for that selection (empirical Bayes over the {k} means) its lead over {runner} is "
              f"{_fmt(shrunken)}, not {_fmt(raw)}" if shrunken is not None else "")
    return (f" Winner's curse: {best} is the best of {k} configurations on this very metric, so its mean is "
            f"optimistic{number}; confirm it with fresh seeds before quoting it.")


def _seed_plan(comparison: Comparison, a: Mapping[Any, float], b: Mapping[Any, float], alpha: float,
               min_effect: float) -> tuple[int | None, float | None]:
    """(seeds per configuration for 80 % power at ``min_effect`` from the spread's upper bound, the mean seeds a
    sequential study would spend there)."""
    if not comparison.spread:
        return None, None
    df = comparison.n_pairs - 1 if comparison.n_pairs else len(a) + len(b) - 2
    needed = seeds_needed(spread_upper_bound(comparison.spread, df), min_effect, alpha=alpha,
                          paired=bool(comparison.n_pairs))
    run_spread = math.sqrt((np.var(list(a.values()), ddof=1) + np.var(list(b.values()), ddof=1)) / 2)
    mean_seeds = stopping_seeds(min_effect / run_spread, SequentialDesign(alpha=alpha))[0] if run_spread > 0 else None
    return needed, mean_seeds


def _selection_sentence(chosen_apart: bool, selection_metric: str | None, metric: str, k: int, best: str,
                        runner: str, raw: float, shrunken: float | None) -> str:
    """How the best was chosen: on another split (no curse), or on this metric among 3+ (the curse, as a number)."""
    if chosen_apart:
        return (f" Chosen on {selection_metric or 'the selection figure'}, reported on {metric}: the images "
                "reported on played no part in picking the best, so its lead is not inflated by the choice.")
    return _curse_sentence(k, best, runner, raw, shrunken) if k >= 3 else ""


def _failures_sentence(failed: Mapping[str, int]) -> str:
    if not failed:
        return ""
    return " Failed runs: " + "; ".join(f"{label} failed {n}" for label, n in sorted(failed.items())) + "."


def decide(values: Mapping[str, Mapping[Any, float]], *, failed: Mapping[str, int] | None = None,
           metric: str = "test_accuracy_best", alpha: float = ALPHA, min_effect: float = MIN_EFFECT,
           plan: bool = True, parameters: Mapping[str, Mapping[str, Any]] | None = None,
           n_images: int | None = None, design: SequentialDesign | None = None,
           planned_seeds: int | None = None, selection: Mapping[str, Mapping[Any, float]] | None = None,
           selection_metric: str | None = None) -> Verdict:
    """The verdict on numbers: ``values[label][seed]`` is a finished run's metric; ``failed[label]`` counts failures.

    Ranks the configurations by mean (ties by label), compares the best with the runner-up by the
    fixed-n test (the module's docstring), reads the anytime-valid interval of the best against each
    other configuration, decides on the basis that applies (``design`` given: a sequential study;
    more seeds than ``planned_seeds``: a fixed-n study read again), and writes the message.
    ``n_images``: the images an accuracy is counted on (constant differences are detected on counts).
    ``plan=False`` skips the seed plan (faster, for simulations). ``parameters[label]`` (each
    configuration's scientific parameters) lets the message name the two by what differs.
    ``selection[label][seed]``: the figure the best is *chosen* on (``selection_metric``, e.g. the
    validation accuracy), so the reported ``values`` (test images) played no part in picking it;
    without it the best is chosen on ``values`` themselves and the winner's curse is quantified.
    """
    failed = {label: int(n) for label, n in (failed or {}).items() if n}
    chosen_apart = bool(selection) and all(selection.get(label) for label in values)
    ranked = rank_by_mean({label: selection[label] for label in values} if chosen_apart else values)
    k = len(ranked)
    named_failures = f" ({'; '.join(f'{label} failed {n} run(s)' for label, n in sorted(failed.items()))})" \
        if failed else ""
    base = dict(metric=metric, best=None, runner_up=None, n_best=0, n_runner_up=0, n_pairs=0, test=None,
                difference=math.nan, interval=None, p_value=None, decisive=None, failed=failed, k=k,
                min_effect=min_effect, seeds_needed=None, level=1 - alpha, planned_seeds=planned_seeds)  # filled in as it goes
    if k < 2:
        only = ranked[0] if ranked else None
        message = ("only one configuration has finished runs: nothing to compare yet." if only else
                   "no finished runs yet.") + named_failures
        return Verdict(**{**base, "best": only, "n_best": len(values[only]) if only else 0, "message": message})
    best_label, runner_label = ranked[0], ranked[1]
    a, b = values[best_label], values[runner_label]
    best, runner = _differing(best_label, runner_label, parameters)  # what the message calls them
    base.update(best=best_label, runner_up=runner_label, n_best=len(a), n_runner_up=len(b))
    comparison = _compare(a, b, alpha, n_images)
    if comparison is None:
        message = (f"no comparison possible yet: best {best} (n={len(a)}) vs runner-up {runner} (n={len(b)}); run "
                   "at least 2 seeds of each, the same seeds for both (3 or more to trust it).")
        return Verdict(**base, message=message + named_failures)
    base.update(test=comparison.test, difference=comparison.difference, interval=comparison.interval,
                p_value=comparison.p_value, n_pairs=comparison.n_pairs)
    if comparison.p_value is None:
        message = (f"inconclusive: {best} leads {runner} by {_fmt(comparison.difference)}, but neither varies across "
                   f"seeds (n={len(a)} vs {len(b)}), so the noise cannot be estimated; run them on the same seeds.")
        return Verdict(**{**base, "decisive": False}, message=message + named_failures)

    n_now = max(len(a), len(b))
    basis = _anytime_basis(n_now, design, planned_seeds)
    leader = compare_with_leader(values, ranked, design or SequentialDesign(alpha=alpha,
                                                                            horizon=max(HORIZON, n_now)))
    unstable = failed.get(best_label, 0)
    significant = comparison.p_value < alpha and comparison.difference > 0
    fixed = _fixed_sentence(comparison, best, runner, 1 - alpha, (len(a), len(b)), unstable, significant)
    if basis == "fixed-n":
        decisive = significant and not unstable
        message = (fixed + " The verdict uses this fixed-n test, valid at the planned number of seeds; the "
                   + _interval_text(leader.intervals[runner_label]) + ".")
    else:
        decisive = leader.decisive and not unstable
        reread = (f"Read again after more seeds than the {planned_seeds} planned ({n_now} now): the fixed-n test no "
                  "longer holds, so the anytime-valid interval decides. " if design is None else "")
        message = (reread + _anytime_sentence(leader, runner_label, best, runner, min_effect, unstable)
                   + " Not used (valid only at a number of seeds fixed in advance): " + fixed)
    needed, mean_seeds = _seed_plan(comparison, a, b, alpha, min_effect) if plan else (None, None)
    if needed is not None or (plan and not decisive and comparison.test != "sign test"):
        message += " Seed plan: " + _plan_sentence(needed, min_effect, min(len(a), len(b)), alpha, mean_seeds) + "."
    shrunken = _shrunken_lead(values, ranked) if k >= 3 and not chosen_apart else None
    message += _selection_sentence(chosen_apart, selection_metric, metric, k, best, runner, comparison.difference,
                                   shrunken)
    message += _failures_sentence({label: n for label, n in failed.items() if label != best_label or not unstable})
    base.update(decisive=decisive, seeds_needed=needed)
    return Verdict(**base, message=message,
                   anytime=leader.intervals[runner_label], basis=basis,
                   beaten=() if unstable else leader.beaten,
                   equivalent=basis == "anytime-valid" and not unstable and leader.equivalent(min_effect),
                   shrunken_difference=shrunken, sequential_mean_seeds=mean_seeds)


def _images_counted(frame: pd.DataFrame, metric: str) -> int | None:
    """How many images an accuracy ``metric`` is counted on (``n_test`` or ``n_val``), when every run agrees."""
    column = {"test": "n_test", "val": "n_val"}.get(metric.split("_")[0])
    if "accuracy" not in metric or column not in frame:
        return None
    counts = pd.to_numeric(frame[column], errors="coerce").dropna().unique()
    return int(counts[0]) if len(counts) == 1 and counts[0] > 0 else None


def compare_top_two(frame: pd.DataFrame, by: Sequence[str], metric: str = "test_accuracy_best",
                    alpha: float = ALPHA, min_effect: float = MIN_EFFECT, *, design: SequentialDesign | None = None,
                    planned_seeds: int | None = None) -> Verdict:
    """Is the best configuration (by mean ``metric``) better than the others? See :func:`decide`.

    ``frame`` is a results table (one row per run: the ``by`` columns, ``seed``, ``status`` and
    ``metric``); repeated trials count once (:func:`deduplicate`). ``design``: the study runs until
    decisive; ``planned_seeds``: the seeds its sweep file planned (more than that: read again).
    """
    values, failed, parameters = configuration_values(frame, by, metric)
    select_on = selection_metric(frame, metric)
    selection = configuration_values(frame, by, select_on)[0] if select_on else None
    return decide({label: v for label, v in values.items() if v}, failed=failed, metric=metric, alpha=alpha,
                  min_effect=min_effect, parameters=parameters, n_images=_images_counted(frame, metric),
                  design=design, planned_seeds=planned_seeds, selection=selection, selection_metric=select_on)


def selection_metric(frame: pd.DataFrame, metric: str) -> str | None:
    """The figure a study's best is chosen on: the validation twin of a test ``metric`` (``test_accuracy_best`` →
    ``val_accuracy_best``) when every finished run has it, so test images only report; else ``None``."""
    if not metric.startswith("test_"):
        return None
    twin = "val_" + metric[len("test_"):]
    if twin not in frame:
        return None
    finished = _finished(frame, metric)
    twin_values = pd.to_numeric(frame.loc[finished, twin], errors="coerce")
    return twin if finished.any() and twin_values.notna().all() else None


def configuration_values(frame: pd.DataFrame, by: Sequence[str], metric: str = "test_accuracy_best") \
        -> tuple[dict[str, dict[Any, float]], dict[str, int], dict[str, dict[str, Any]]]:
    """Per configuration label: ``{seed: metric}`` of its finished runs, its failed runs, and its ``by`` values.

    Repeated trials count once (:func:`deduplicate`); what :func:`decide` and the report's interval
    plot read.
    """
    frame = deduplicate(frame, by)
    values: dict[str, dict[Any, float]] = {}
    failed: dict[str, int] = {}
    parameters: dict[str, dict[str, Any]] = {}
    if frame.empty or any(name not in frame for name in by):
        return values, failed, parameters
    finished = _finished(frame, metric)
    for index, (key, group) in enumerate(_groups(frame, by)):
        label = config_label(by, key)
        parameters[label] = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        ok = group[finished.loc[group.index]]
        seeds = ok["seed"] if "seed" in ok else pd.Series(range(len(ok)), index=ok.index) + index * 10**6
        values[label] = dict(zip(seeds.tolist(), pd.to_numeric(ok[metric]).astype(float).tolist()))
        failed[label] = int((group["status"] != "ok").sum())
    return values, failed, parameters
