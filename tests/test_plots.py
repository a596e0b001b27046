"""plots.plot_tradeoff: accuracy against a cost, with the spread across seeds, a target and a budget drawn."""

from __future__ import annotations

import matplotlib.colors
import numpy as np
import pandas as pd
import pytest

from carlib.errors import ConfigError
from carlib.plots import plot_tradeoff


def _summary() -> pd.DataFrame:
    index = pd.MultiIndex.from_tuples([("efficientnet_lite0", 160), ("cnn_small", 64)], names=["backbone", "image_size"])
    summary = pd.DataFrame({"mean": [0.93, 0.85], "std": [0.01, 0.02], "cpu_s_mean": [1300.0, 650.0]}, index=index)
    summary.attrs["metric"] = "test_accuracy_tta"
    return summary


def test_the_tradeoff_draws_each_configuration_with_its_spread_the_target_and_the_budget():
    figure = plot_tradeoff(_summary(), x="cpu_s_mean", target=0.92, budget=1950, labels=["pretrained", "recipe"])
    ax = figure.axes[0]
    points = ax.containers[0]  # the errorbar container: the points and their bars
    np.testing.assert_allclose(points.lines[0].get_xydata(), [[1300, 0.93], [650, 0.85]])
    bars = points.lines[2][0].get_segments()
    np.testing.assert_allclose([segment[:, 1] for segment in bars], [[0.92, 0.94], [0.83, 0.87]])
    assert [t.get_text() for t in ax.texts] == ["pretrained", "recipe"]
    lines = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}
    assert set(lines) == {"target 0.92", "budget 1,950"}
    assert list(lines["target 0.92"].get_ydata()) == [0.92, 0.92]
    assert list(lines["budget 1,950"].get_xdata()) == [1950, 1950]
    assert ax.get_xscale() == "log" and "test_accuracy_tta" in ax.get_ylabel() and "±1 std" in ax.get_ylabel()
    assert matplotlib.colors.same_color(lines["target 0.92"].get_color(), "C2")


def test_without_labels_the_points_are_named_by_their_values_and_without_std_there_are_no_bars():
    summary = _summary().drop(columns="std")
    ax = plot_tradeoff(summary, x="cpu_s_mean").axes[0]
    assert [t.get_text() for t in ax.texts] == ["efficientnet_lite0 @ 160", "cnn_small @ 64"]
    assert ax.containers[0].has_yerr is False and ax.get_legend() is None


def test_labels_must_name_every_configuration_and_may_sit_apart():
    with pytest.raises(ConfigError, match="labels: 1 names for 2 configurations; give one per row"):
        plot_tradeoff(_summary(), x="cpu_s_mean", labels=["only one"])
    with pytest.raises(ConfigError, match="label_offsets: 1 offsets for 2 configurations"):
        plot_tradeoff(_summary(), x="cpu_s_mean", label_offsets=[(5, 5)])
    ax = plot_tradeoff(_summary(), x="cpu_s_mean", label_offsets=[(5, 5), (5, -12)]).axes[0]
    assert [t.xyann for t in ax.texts] == [(5, 5), (5, -12)]


def test_the_anytime_path_shows_a_single_look_and_counts_seeds_in_whole_numbers():
    from carlib.plots import plot_anytime_path

    one_look = pd.DataFrame({"seeds": [2], "low": [0.57], "high": [0.65], "difference": [0.61]})
    ax = plot_anytime_path(one_look, stop=2).axes[0]
    bars = ax.containers[0].lines[2][0].get_segments()
    np.testing.assert_allclose(bars[0], [[2, 0.57], [2, 0.65]])  # a visible bar, not a band of zero width
    assert ax.get_xlim() == (1.5, 2.5)
    assert all(float(t).is_integer() for t in ax.get_xticks())
    labels = [line.get_label() for line in ax.get_lines()]
    assert "stopped after 2 seeds" in labels

    narrowing = pd.DataFrame({"seeds": [2, 3, 4], "low": [-0.4, 0.01, 0.03], "high": [0.5, 0.2, 0.15],
                              "difference": [0.05, 0.1, 0.09]})
    ax = plot_anytime_path(narrowing, stop=4).axes[0]
    assert len(ax.collections) >= 2  # the band over the looks and the bars
    assert ax.get_xlim() == (1.5, 4.5)
