"""Statistics across seeds: confidence intervals, and a verdict that refuses to rank single runs (R5, R10)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

import carlib
from carlib.studies.stats import compare_top_two, summarize


def _frame(groups: dict[float, list[float]]) -> pd.DataFrame:
    rows = [{"status": "ok", "lr": lr, "val_accuracy_best": v} for lr, values in groups.items() for v in values]
    return pd.DataFrame(rows)


def test_summary_has_a_t_confidence_interval():
    values = [0.61, 0.64, 0.66, 0.63]
    summary = summarize(_frame({0.001: values}), ["lr"])
    row = summary.loc[0.001]
    half = scipy_stats.t.ppf(0.975, 3) * np.std(values, ddof=1) / 2
    assert row["n"] == 4 and row["mean"] == pytest.approx(np.mean(values))
    assert (row["ci95_low"], row["ci95_high"]) == pytest.approx((np.mean(values) - half, np.mean(values) + half))


def test_single_runs_are_not_ranked():
    verdict = compare_top_two(_frame({0.001: [0.71], 0.01: [0.685]}), ["lr"])
    assert verdict.distinguishable is None and verdict.p_value is None
    assert "no comparison possible yet" in verdict.message and "n=1" in verdict.message
    assert math.isnan(summarize(_frame({0.001: [0.71]}), ["lr"]).loc[0.001, "ci95_low"])


def test_clear_difference_is_distinguishable_and_noise_is_not():
    clear = compare_top_two(_frame({0.001: [0.80, 0.81, 0.82], 0.01: [0.60, 0.61, 0.62]}), ["lr"])
    assert clear.distinguishable is True and clear.best == "lr=0.001" and clear.p_value < 0.05
    assert clear.message.startswith("distinguishable")
    noisy = compare_top_two(_frame({0.001: [0.70, 0.66, 0.73], 0.01: [0.68, 0.71, 0.65]}), ["lr"])
    assert noisy.distinguishable is False and noisy.message.startswith("not distinguishable")


def test_failed_runs_and_one_configuration():
    frame = _frame({0.001: [0.7, 0.72]})
    frame.loc[len(frame)] = {"status": "failed", "lr": 0.01, "val_accuracy_best": np.nan}
    verdict = compare_top_two(frame, ["lr"])
    assert verdict.distinguishable is None and "nothing to compare" in verdict.message


def test_a_a_check_identical_configurations_are_not_distinguishable(fast_config):
    """Two identical configurations, three seeds each, labelled as two studies: the verdict must not pick one."""
    config = {**fast_config, "epochs": 2, "augmentation": "light"}
    carlib.run_study("aa_first", seeds=3, **config)
    carlib.run_study("aa_second", seeds=3, **{**config, "seed": 3})
    table = carlib.load_results(fast_config["results_dir"])
    verdict = compare_top_two(table, ["study"])
    assert verdict.n_best == 3 and verdict.n_runner_up == 3
    assert verdict.distinguishable is False, verdict.message
