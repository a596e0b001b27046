"""Statistics across seeds: intervals and verdicts checked against scipy, every branch, and an A/A check (R5, R10)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

import carlib
from carlib.errors import CarlibWarning
from carlib.studies.stats import (PLAN_CONFIDENCE, compare_top_two, decide, deduplicate, seeds_needed,
                                  spread_upper_bound, summarize)

METRIC = "test_accuracy_best"


def _frame(groups: dict, *, by: str = "lr", seeds: dict | None = None) -> pd.DataFrame:
    """Rows of finished runs: ``groups[value]`` lists one metric value per seed (seeds 0, 1, … unless given)."""
    rows = []
    for value, metrics in groups.items():
        for i, metric in enumerate(metrics):
            seed = (seeds or {}).get(value, range(len(metrics)))[i]
            rows.append({"status": "ok", by: value, "seed": seed, METRIC: metric, "run_id": f"{value}-{seed}",
                         "started_at": f"2026-12-01T00:00:{len(rows):02d}"})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- summary
def test_summary_has_a_t_confidence_interval():
    values = [0.61, 0.64, 0.66, 0.63]
    summary = summarize(_frame({0.001: values}), ["lr"])
    row = summary.loc[0.001]
    half = scipy_stats.t.ppf(0.975, 3) * np.std(values, ddof=1) / 2
    assert row["n"] == 4 and row["n_failed"] == 0 and row["mean"] == pytest.approx(np.mean(values))
    assert (row["ci95_low"], row["ci95_high"]) == pytest.approx((np.mean(values) - half, np.mean(values) + half))
    assert summary.attrs["metric"] == METRIC


def test_summary_counts_failures_per_configuration_and_breaks_ties_by_label():
    frame = _frame({0.1: [0.5, 0.7], 0.01: [0.7, 0.5], 0.001: [0.4]})
    frame.loc[len(frame)] = {"status": "failed", "lr": 0.1, "seed": 2, METRIC: np.nan, "run_id": "x",
                             "started_at": "2026-12-01T00:01:00"}
    summary = summarize(frame, ["lr"])
    assert list(summary.index) == [0.01, 0.1, 0.001]  # equal means: "lr=0.01" sorts before "lr=0.1"
    assert summary["n_failed"].tolist() == [0, 1, 0] and summary["n"].tolist() == [2, 2, 1]
    assert math.isnan(summary.loc[0.001, "ci95_low"])


def test_a_repeated_trial_counts_once_and_the_latest_wins():
    frame = _frame({0.01: [0.6, 0.7]})
    repeat = frame.iloc[[0]].assign(**{METRIC: 0.9, "run_id": "again", "started_at": "2026-12-02T00:00:00"})
    frame = pd.concat([frame, repeat], ignore_index=True)
    with pytest.warns(CarlibWarning, match=r"1 record\(s\) repeat a trial.*\['0.01-0'\]"):
        kept = deduplicate(frame)
    assert sorted(kept[METRIC]) == [0.7, 0.9]
    with pytest.warns(CarlibWarning):
        assert summarize(frame, ["lr"]).loc[0.01, "n"] == 2


# ----------------------------------------------------------------------------- verdicts
@pytest.mark.parametrize("seed", range(5))
def test_paired_verdict_matches_scipy_on_random_data(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 8))
    shared = rng.normal(0.6, 0.05, n)  # what a seed does to both configurations
    a, b = shared + rng.normal(0.02, 0.02, n), shared + rng.normal(0, 0.02, n)
    verdict = decide({"A": dict(enumerate(a)), "B": dict(enumerate(b))})
    best, other = (a, b) if a.mean() > b.mean() else (b, a)
    d = best - other
    assert verdict.test == "paired t-test" and verdict.n_pairs == n
    assert verdict.p_value == pytest.approx(scipy_stats.ttest_rel(best, other).pvalue, rel=1e-9)
    low, high = scipy_stats.t.interval(0.95, n - 1, loc=d.mean(), scale=scipy_stats.sem(d))
    assert verdict.interval == pytest.approx((low, high), rel=1e-9)
    assert verdict.difference == pytest.approx(d.mean())
    assert verdict.decisive == (verdict.p_value < 0.05)


@pytest.mark.parametrize("seed", range(5))
def test_welch_verdict_matches_scipy_when_the_seeds_differ(seed):
    rng = np.random.default_rng(100 + seed)
    a, b = rng.normal(0.7, 0.03, int(rng.integers(2, 6))), rng.normal(0.68, 0.05, int(rng.integers(2, 6)))
    verdict = decide({"A": {f"a{i}": v for i, v in enumerate(a)}, "B": {f"b{i}": v for i, v in enumerate(b)}})
    best, other = (a, b) if a.mean() > b.mean() else (b, a)
    result = scipy_stats.ttest_ind(best, other, equal_var=False)
    assert verdict.test == "Welch's t-test" and verdict.n_pairs == 0
    assert verdict.p_value == pytest.approx(result.pvalue, rel=1e-9)
    low, high = result.confidence_interval(0.95)
    assert verdict.interval == pytest.approx((low, high), rel=1e-9)
    # a Student's t-test gives another p-value: the test must be Welch's
    if abs(best.var(ddof=1) - other.var(ddof=1)) > 1e-6 and len(best) != len(other):
        assert verdict.p_value != pytest.approx(scipy_stats.ttest_ind(best, other).pvalue, rel=1e-6)


def test_alpha_decides_where_the_line_is():
    values = {"A": {0: 0.70, 1: 0.75, 2: 0.72}, "B": {0: 0.66, 1: 0.74, 2: 0.70}}
    p_value = decide(values).p_value
    assert 0.01 < p_value < 0.2
    assert decide(values, alpha=p_value * 1.01).decisive is True
    assert decide(values, alpha=p_value * 0.99).decisive is False


def test_inconclusive_reads_as_an_interval_never_as_equal():
    verdict = compare_top_two(_frame({0.001: [0.70, 0.66, 0.73], 0.01: [0.68, 0.71, 0.65]}), ["lr"])
    assert verdict.decisive is False
    low, high = verdict.interval
    assert low < 0 < high
    assert verdict.message.startswith(f"inconclusive: the difference lr=0.001 − lr=0.01 lies between {low:+.4f} and "
                                      f"{high:+.4f}")
    assert "equal" not in verdict.message.replace("Not evidence that they are equal", "")


def test_clear_paired_difference_is_decisive():
    verdict = compare_top_two(_frame({0.001: [0.80, 0.71, 0.62], 0.01: [0.70, 0.60, 0.53]}), ["lr"])
    assert verdict.decisive is True and verdict.best == "lr=0.001" and verdict.test == "paired t-test"
    assert verdict.message.startswith("decisive: lr=0.001 beats lr=0.01 by +0.1000")
    # Welch, which ignores the pairing, cannot see it in the seed-to-seed spread
    unpaired = compare_top_two(_frame({0.001: [0.80, 0.71, 0.62], 0.01: [0.70, 0.60, 0.53]},
                                      seeds={0.01: [10, 11, 12]}), ["lr"])
    assert unpaired.test == "Welch's t-test" and unpaired.decisive is False


def test_zero_variance_differences_never_declare_a_winner_by_accident():
    identical = decide({"A": {0: 0.7, 1: 0.7, 2: 0.7}, "B": {0: 0.7, 1: 0.7, 2: 0.7}})
    assert identical.test == "sign test" and identical.p_value == 1.0 and identical.decisive is False
    constant = decide({"A": {s: 0.71 + s / 100 for s in range(3)}, "B": {s: 0.70 + s / 100 for s in range(3)}})
    assert constant.test == "sign test" and constant.p_value == pytest.approx(0.25) and constant.decisive is False
    assert constant.interval == pytest.approx((0.01, 0.01))
    assert constant.message.startswith("inconclusive: A − B = +0.0100 on every one of 3 seeds")
    six = decide({"A": {s: 0.71 + s / 100 for s in range(6)}, "B": {s: 0.70 + s / 100 for s in range(6)}})
    assert six.p_value == pytest.approx(2 * 0.5 ** 6) and six.decisive is True  # 6 of 6 the same way: evidence
    flat = decide({"A": {"a": 0.8, "b": 0.8}, "B": {"c": 0.7, "d": 0.7}})  # no spread and no pairs
    assert flat.p_value is None and flat.decisive is False and "cannot be estimated" in flat.message


def test_single_runs_are_not_ranked():
    verdict = compare_top_two(_frame({0.001: [0.71], 0.01: [0.685]}), ["lr"])
    assert verdict.decisive is None and verdict.p_value is None
    assert "no comparison possible yet" in verdict.message and "n=1" in verdict.message


def test_failed_runs_name_the_configuration_and_the_best_cannot_win_on_its_survivors():
    frame = _frame({0.3: [0.80, 0.83, 0.82], 0.01: [0.60, 0.61, 0.63]})
    for seed in (3, 4):
        frame.loc[len(frame)] = {"status": "failed", "lr": 0.3, "seed": seed, METRIC: np.nan, "run_id": f"f{seed}",
                                 "started_at": "2026-12-01T00:02:00"}
    verdict = compare_top_two(frame, ["lr"])
    assert verdict.failed == {"lr=0.3": 2} and verdict.decisive is False
    assert verdict.message.startswith("not decided: lr=0.3 leads") and "failed 2 run(s)" in verdict.message
    only_one = _frame({0.001: [0.7, 0.72]})
    only_one.loc[len(only_one)] = {"status": "failed", "lr": 0.01, "seed": 0, METRIC: np.nan, "run_id": "f",
                                   "started_at": "2026-12-01T00:03:00"}
    verdict = compare_top_two(only_one, ["lr"])
    assert verdict.decisive is None and "nothing to compare" in verdict.message and "lr=0.01 failed 1" in \
        verdict.message


def test_two_scientific_parameters_label_each_configuration_with_both():
    frame = pd.concat([_frame({0.01: [0.8, 0.7, 0.75]}).assign(schedule="cosine"),
                       _frame({0.01: [0.7, 0.6, 0.66]}).assign(schedule="constant")], ignore_index=True)
    verdict = compare_top_two(frame, ["lr", "schedule"])
    assert verdict.best == "lr=0.01, schedule=cosine" and verdict.runner_up == "lr=0.01, schedule=constant"
    assert verdict.n_pairs == 3
    assert "schedule=cosine − schedule=constant" in verdict.message or "schedule=cosine beats schedule=constant" in \
        verdict.message  # the message names them by what differs


def test_winners_curse_is_flagged_among_three_or_more():
    verdict = compare_top_two(_frame({0.1: [0.8, 0.7, 0.75], 0.01: [0.7, 0.6, 0.66], 0.001: [0.5, 0.4, 0.45]}),
                              ["lr"])
    assert verdict.k == 3 and "Winner's curse: lr=0.1 is the best of 3 configurations" in verdict.message


# ----------------------------------------------------------------------------- seed plan
def test_seed_plan_matches_a_simulation_of_the_paired_test():
    spread, effect = 0.02, 0.015
    n = seeds_needed(spread, effect)
    rng = np.random.default_rng(0)

    def power(pairs: int) -> float:
        d = rng.normal(effect, spread, (4000, pairs))
        return float((scipy_stats.ttest_1samp(d, 0, axis=1).pvalue < 0.05).mean())

    assert power(n) >= 0.78 and power(n - 1) < 0.8  # the smallest n with 80 % power (simulation noise ±0.01)
    assert seeds_needed(0.0) is None and seeds_needed(float("nan")) is None
    assert seeds_needed(1.0, 0.001) == 1001  # more than the planner looks for


def test_the_verdict_states_the_plan_for_the_min_effect():
    verdict = compare_top_two(_frame({0.001: [0.70, 0.66, 0.73], 0.01: [0.68, 0.71, 0.65]}), ["lr"], min_effect=0.05)
    spread = np.std(np.array([0.70, 0.66, 0.73]) - np.array([0.68, 0.71, 0.65]), ddof=1)
    assert verdict.seeds_needed == seeds_needed(spread_upper_bound(spread, 2), 0.05)  # the bound, not the estimate
    assert f"{verdict.seeds_needed} seeds per configuration would detect a difference of 0.05" in verdict.message



def test_the_seed_plan_is_sized_for_the_verdicts_alpha():
    values = {"A": {0: 0.70, 1: 0.75, 2: 0.72}, "B": {0: 0.66, 1: 0.74, 2: 0.70}}
    spread = np.std(np.array([0.70, 0.75, 0.72]) - np.array([0.66, 0.74, 0.70]), ddof=1)
    strict = decide(values, alpha=0.01)
    upper = spread_upper_bound(spread, 2)
    assert strict.seeds_needed == seeds_needed(upper, alpha=0.01) > seeds_needed(upper)
    assert "adding seeds until p < 0.01 inflates" in strict.message

def test_a_plan_from_a_three_seed_pilot_keeps_its_power_promise():
    """Issue 22: planned from the pilot's spread itself, "80 % power" is about 65 %; from its upper bound, >= 80 %."""
    rng = np.random.default_rng(3)
    effect, spread = 1.0, 1.0

    def true_power(n: int) -> float:
        critical = scipy_stats.t.isf(0.025, n - 1)
        return float(scipy_stats.nct.sf(critical, n - 1, effect * math.sqrt(n) / spread))

    pilots = rng.normal(0, spread, (300, 3)).std(axis=1, ddof=1)
    from_bound = np.mean([true_power(seeds_needed(spread_upper_bound(s, 2), effect)) for s in pilots])
    from_estimate = np.mean([true_power(seeds_needed(s, effect)) for s in pilots])
    assert from_bound >= 0.8 > 0.7 > from_estimate
    assert spread_upper_bound(1.0, 2) == pytest.approx(math.sqrt(2 / scipy_stats.chi2.ppf(1 - PLAN_CONFIDENCE, 2)))


# ----------------------------------------------------------------------------- A/A
def test_a_a_simulation_rate_is_pinned():
    """A small seeded A/A simulation of the real verdict code: a regression in the test shows here."""
    rng = np.random.default_rng(1234)
    decisive = 0
    for _ in range(400):
        shared = rng.normal(0, 1, 3)
        values = {label: dict(enumerate(0.5 * shared + rng.normal(0, 1, 3) * math.sqrt(0.75)))
                  for label in ("A", "B")}
        decisive += bool(decide(values, plan=False).decisive)
    assert decisive == 15  # 3.75 % of these 400 (a paired t-test at alpha 0.05: 5 % expected, 20 ± 4.4 of 400)


def test_a_a_check_identical_configurations_are_not_distinguishable(fast_config):
    """Two identical configurations, three seeds each, labelled as two studies: the verdict must not pick one."""
    config = {**fast_config, "epochs": 2, "augmentation": "light"}
    carlib.run_study("aa_first", seeds=3, **config)
    carlib.run_study("aa_second", seeds=3, **config)
    table = carlib.load_results(fast_config["results_dir"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", CarlibWarning)  # two studies: not repeats of one trial
        verdict = compare_top_two(table, ["study"])
    assert verdict.n_best == 3 and verdict.n_runner_up == 3 and verdict.n_pairs == 3
    assert verdict.decisive is False, verdict.message
    low, high = verdict.interval
    assert low <= 0 <= high  # identical runs: the interval contains 0 (here the runs are bit-for-bit the same)


def test_a_configuration_with_a_none_parameter_keeps_its_runs_and_reads_none():
    """weights None is NaN in the table: NaN never equals itself, so the summary must not look rows up by key."""
    rows = [{"backbone": "efficientnet_lite0", "weights": weights, "seed": seed, "status": "ok", "run_id": f"{weights}{seed}",
             "accuracy": base + 0.01 * seed + (0.02 * seed if weights else 0)}
            for weights, base in ((None, 0.5), ("imagenet", 0.8)) for seed in range(3)]
    frame = pd.DataFrame(rows)
    summary = summarize(frame, ["backbone", "weights"], "accuracy")
    assert list(summary["n"]) == [3, 3] and summary["mean"].iloc[0] == pytest.approx(0.83)
    assert "weights=imagenet beats weights=None" in compare_top_two(frame, ["backbone", "weights"], "accuracy").message


# ----------------------------------------------------------------------------- issue 22, item 5
def test_a_constant_image_count_difference_in_float32_is_a_sign_test():
    """Two images better on each of two seeds, stored as float32 accuracies: a constant difference, not p=1e-6."""
    n_test = 300
    correct = {0: 150, 1: 215}  # images B classifies correctly on each seed; A gets two more
    a = {seed: float(np.float32((count + 2) / n_test)) for seed, count in correct.items()}
    b = {seed: float(np.float32(count / n_test)) for seed, count in correct.items()}
    assert len({a[s] - b[s] for s in a}) == 2  # the float32 values do differ in their last bits
    verdict = decide({"A": a, "B": b}, n_images=n_test)
    assert verdict.test == "sign test" and verdict.p_value == pytest.approx(0.5) and verdict.decisive is False
    # without the image count, float32 rounding (~1e-7) is still not taken for a spread
    assert decide({"A": a, "B": b}).test == "sign test"
    frame = _frame({0.01: list(a.values()), 0.001: list(b.values())}).assign(n_test=n_test)
    assert compare_top_two(frame, ["lr"]).test == "sign test"


def test_differences_of_distinct_image_counts_are_a_t_test():
    n_test = 300
    a = {seed: (200 + 7 * seed + 2 + seed) / n_test for seed in range(3)}
    b = {seed: (200 + 7 * seed) / n_test for seed in range(3)}
    assert decide({"A": a, "B": b}, n_images=n_test).test == "paired t-test"


@pytest.mark.parametrize("alpha", [0.20, 0.10, 0.01])
def test_the_interval_level_follows_alpha(alpha):
    """At alpha 0.20 (p = 0.118) a decisive verdict must not print a 95 % interval that contains 0."""
    values = {"A": {0: 0.70, 1: 0.75, 2: 0.72}, "B": {0: 0.66, 1: 0.74, 2: 0.70}}
    d = np.array([0.04, 0.01, 0.02])
    verdict = decide(values, alpha=alpha)
    low, high = scipy_stats.t.interval(1 - alpha, 2, loc=d.mean(), scale=scipy_stats.sem(d))
    assert verdict.interval == pytest.approx((low, high), rel=1e-9) and verdict.level == pytest.approx(1 - alpha)
    assert verdict.decisive == (low > 0)
    assert f"{100 * (1 - alpha):.3g} % CI" in verdict.message


def test_the_best_is_chosen_on_validation_and_reported_on_test():
    """Issue 22, item 4: the test images report the winner's lead; they do not pick the winner."""
    frame = _frame({0.1: [0.80, 0.70, 0.75], 0.01: [0.78, 0.69, 0.74], 0.001: [0.5, 0.4, 0.45]})
    frame["val_accuracy_best"] = frame["lr"].map({0.1: 0.60, 0.01: 0.70, 0.001: 0.30})  # validation prefers 0.01
    verdict = compare_top_two(frame, ["lr"])
    assert verdict.best == "lr=0.01" and verdict.difference < 0  # its test lead over lr=0.1 is reported as it is
    assert "Chosen on val_accuracy_best, reported on test_accuracy_best" in verdict.message
    assert "Winner's curse" not in verdict.message and verdict.shrunken_difference is None


def test_chosen_on_the_test_metric_the_winners_curse_is_a_shrunken_number():
    values = {"A": {0: 0.80, 1: 0.70, 2: 0.75}, "B": {0: 0.78, 1: 0.69, 2: 0.74}, "C": {0: 0.79, 1: 0.70, 2: 0.73}}
    verdict = decide(values)
    assert 0 <= verdict.shrunken_difference < verdict.difference
    assert f"its lead over C is {verdict.shrunken_difference:+.4f}, not {verdict.difference:+.4f}" in verdict.message
    spread_out = decide({"A": {0: 0.9, 1: 0.91, 2: 0.92}, "B": {0: 0.6, 1: 0.61, 2: 0.62},
                         "C": {0: 0.3, 1: 0.31, 2: 0.32}})
    assert spread_out.shrunken_difference == pytest.approx(spread_out.difference, rel=0.01)  # real spread: no shrink
