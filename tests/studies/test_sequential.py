"""Anytime-valid verdicts (issue 22): the boundary against published constants, the mixture interval against its
closed form, A/A under optional stopping, Holm across the comparisons with the leader."""

from __future__ import annotations

import math

import numpy as np
import pytest

from carlib.errors import ConfigError
from carlib.studies.sequential import (SequentialDesign, anytime_interval, boundary_constant, compare_with_leader,
                                       stopping_seeds)
from carlib.studies.stats import decide

# Jennison & Turnbull (2000), "Group Sequential Methods with Applications to Clinical Trials", two-sided alpha 0.05,
# K equally spaced looks: table 2.3 (O'Brien–Fleming C_B) and table 2.1 (Pocock C_P).
PUBLISHED = {("obf", 5): 2.040, ("obf", 10): 2.087, ("pocock", 5): 2.413, ("pocock", 10): 2.555}


@pytest.mark.parametrize("family, looks", list(PUBLISHED))
def test_the_boundary_reproduces_the_published_group_sequential_constants(family, looks):
    shape = 0.0 if family == "obf" else 0.5
    constant = boundary_constant(0.05, tuple(range(1, looks + 1)), shape, "z", paths=400_000)
    assert constant == pytest.approx(PUBLISHED[family, looks], abs=0.012)


def test_the_mixture_interval_beyond_the_horizon_matches_howards_closed_form():
    """Howard et al. (2021) eq. 14: at each end m of the interval, |S_n(m)| = sqrt((V+r) log((V+r) / (r a^2)))."""
    rng = np.random.default_rng(0)
    design = SequentialDesign(horizon=5)
    x, y = rng.normal(0.7, 0.02, 30), rng.normal(0.69, 0.02, 30)
    interval = anytime_interval(x, y, design)
    assert interval.method == "normal-mixture CS" and interval.n == 30
    d = x - y
    for m in (interval.low, interval.high):
        v, r = np.sum((d - m) ** 2), np.sum((d[:5] - m) ** 2)
        closed_form = math.sqrt((v + r) * math.log((v + r) / (r * design.alpha_beyond ** 2)))
        assert abs(np.sum(d - m)) == pytest.approx(closed_form, rel=1e-8)
    assert interval.low < d.mean() < interval.high


def _ever_decisive(rng, sims: int, noise) -> float:
    design = SequentialDesign()
    hits = 0
    for _ in range(sims):
        x, y = noise(rng, design.horizon), noise(rng, design.horizon)
        hits += any(anytime_interval(x[:n], y[:n], design).excludes_zero for n in range(2, design.horizon + 1))
    return hits / sims


def _normal(rng, n):
    return rng.normal(0.0, 1.0, n)


def _collapsing(rng, n):  # 10 % of runs collapse to chance, far below the rest
    return np.where(rng.random(n) < 0.1, -30.0, rng.normal(0.0, 1.0, n))


@pytest.mark.parametrize("noise", [_normal, _collapsing])
def test_reading_after_every_seed_keeps_false_verdicts_at_alpha(noise):
    """Optional stopping: look after every seed up to 20 and stop at the first exclusion of 0 (the fixed-n test: 20 %)."""
    rate = _ever_decisive(np.random.default_rng(11), 1500, noise)
    assert rate <= 0.04 + 2 * math.sqrt(0.04 * 0.96 / 1500)  # the design spends 0.8 * alpha up to the horizon


def test_a_clear_difference_stops_early():
    mean, power = stopping_seeds(2.0, SequentialDesign(), paths=2000)
    assert power > 0.99 and mean < 9
    mean_null, false = stopping_seeds(0.0, SequentialDesign(), paths=2000)
    assert mean_null > 19 and false < 0.06


def test_holm_lets_a_clearly_worse_configuration_leave_before_the_study_is_decided():
    rng = np.random.default_rng(5)
    values = {"good": dict(enumerate(rng.normal(0.80, 0.01, 8))), "close": dict(enumerate(rng.normal(0.795, 0.01, 8))),
              "bad": dict(enumerate(rng.normal(0.60, 0.01, 8)))}
    comparison = compare_with_leader(values, ["good", "close", "bad"], SequentialDesign())
    assert comparison.beaten == ("bad",) and not comparison.decisive
    assert comparison.intervals["bad"].level == pytest.approx(1 - 0.05 / 2)  # the first Holm step: alpha / 2
    assert comparison.intervals["close"].low < 0


def test_a_sequential_study_decides_on_the_anytime_interval_and_says_so():
    rng = np.random.default_rng(2)
    a, b = rng.normal(0.80, 0.01, 6), rng.normal(0.70, 0.01, 6)
    verdict = decide({"A": dict(enumerate(a)), "B": dict(enumerate(b))}, design=SequentialDesign(horizon=10))
    assert verdict.basis == "anytime-valid" and verdict.decisive is True and verdict.beaten == ("B",)
    assert verdict.message.startswith("decisive: A beats B; A − B lies in the anytime-valid 95 % interval")
    assert verdict.anytime.low > 0 and "Not used (valid only at a number of seeds fixed in advance)" in \
        verdict.message


def test_a_fixed_n_study_read_after_more_seeds_than_planned_is_marked_and_decided_anytime():
    values = {"A": {0: 0.70, 1: 0.75, 2: 0.72, 3: 0.74}, "B": {0: 0.66, 1: 0.74, 2: 0.70, 3: 0.71}}
    planned = decide(values, planned_seeds=4)
    assert planned.basis == "fixed-n" and planned.decisive is True  # p = 0.047 at the planned n
    assert "The verdict uses this fixed-n test" in planned.message and planned.anytime is not None
    reread = decide(values, planned_seeds=3)
    assert reread.basis == "anytime-valid" and reread.decisive is False
    assert reread.message.startswith("Read again after more seeds than the 3 planned (4 now)")


def test_equivalence_is_no_difference_larger_than_the_margin_never_equal():
    rng = np.random.default_rng(4)
    shared = rng.normal(0.7, 0.001, 20)
    values = {"A": dict(enumerate(shared + rng.normal(0, 0.001, 20))),
              "B": dict(enumerate(shared + rng.normal(0, 0.001, 20)))}
    verdict = decide(values, design=SequentialDesign(), min_effect=0.01)
    assert verdict.equivalent is True and verdict.decisive is False
    assert "no difference larger than 0.01" in verdict.message and "Not evidence that they are equal" in \
        verdict.message


def test_a_bad_design_is_one_clear_error():
    with pytest.raises(ConfigError, match=r"max_seeds=1: expected an integer >= 2"):
        SequentialDesign(horizon=1)
    with pytest.raises(ConfigError, match="the group-sequential boundary covers 2 to 20 seeds"):
        SequentialDesign().critical_t(21)
