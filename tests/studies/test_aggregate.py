"""The summary's aggregate (mean, median, worst seed) for `carlib results --summary` and the report; the verdict
stays the paired test on means and says so."""

from __future__ import annotations

import io

import pandas as pd
import pytest

from carlib import cli
from carlib.cli import main
from carlib.config import ExperimentConfig
from carlib.errors import ConfigError
from carlib.records.record import new_record, new_run_id
from carlib.records.store import ResultsStore
from carlib.studies.aggregate import AGGREGATES, aggregate_note, summarize_with
from carlib.studies.report import build_report

METRIC = "test_accuracy_best"
# lr=0.01 has the best mean (one lucky seed), lr=0.001 the best median and the best worst seed.
SCORES = {0.01: (0.50, 0.52, 0.95), 0.001: (0.60, 0.61, 0.62), 0.1: (0.40, 0.55, 0.58)}


def _frame() -> pd.DataFrame:
    rows = [{"status": "ok", "lr": lr, "seed": seed, METRIC: score, "run_id": f"{lr}-{seed}",
             "started_at": f"2026-12-01T00:00:{i:02d}"}
            for i, (lr, scores) in enumerate(SCORES.items()) for seed, score in enumerate(scores)]
    rows.append({"status": "failed", "lr": 0.001, "seed": 3, METRIC: None, "run_id": "x",
                 "started_at": "2026-12-01T00:01:00"})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("aggregate, order, column", [("mean", [0.01, 0.001, 0.1], None),
                                                       ("median", [0.001, 0.1, 0.01], [0.61, 0.55, 0.52]),
                                                       ("worst", [0.001, 0.01, 0.1], [0.60, 0.50, 0.40])])
def test_the_summary_ranks_configurations_by_the_chosen_aggregate(aggregate, order, column):
    summary = summarize_with(_frame(), ["lr"], METRIC, aggregate=aggregate)
    assert list(summary.index) == order and summary.attrs == {"metric": METRIC, "aggregate": aggregate}
    assert summary.loc[0.001, "n"] == 3 and summary.loc[0.001, "n_failed"] == 1  # the failed run is not a score
    if column is None:
        assert "median" not in summary and "worst" not in summary
    else:
        assert list(summary.columns[:3]) == ["n", "n_failed", aggregate]
        assert summary[aggregate].tolist() == pytest.approx(column)
        assert summary.loc[0.01, "mean"] == pytest.approx(sum(SCORES[0.01]) / 3)  # the mean is still shown


def test_an_unknown_aggregate_names_the_choices():
    with pytest.raises(ConfigError, match="aggregate='best' is unknown: expected one of mean, median, worst"):
        summarize_with(_frame(), ["lr"], aggregate="best")
    assert tuple(AGGREGATES) == cli._AGGREGATES  # the CLI spells the same choices without importing scipy


@pytest.fixture
def store(results_dir):
    """lr_study with the scores above, as records."""
    store = ResultsStore(results_dir)
    for lr, scores in SCORES.items():
        for seed, score in enumerate(scores):
            config = {**ExperimentConfig().to_dict(), "study": "lr_study", "lr": lr, "seed": seed}
            store.write(new_record(run_id=new_run_id("lr_study"), study="lr_study", config=config,
                                   started_at="2026-12-01T00:00:00+00:00", status="ok", metrics={METRIC: score}))
    return store


def test_results_summary_aggregate_and_the_unchanged_verdict(store, capsys):
    assert main(["results", "--results-dir", str(store.root), "--study", "lr_study", "--summary",
                 "--aggregate", "median", "--format", "csv"]) == 0
    summary = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert summary["lr"].tolist() == [0.001, 0.1, 0.01] and summary["median"].tolist() == [0.61, 0.55, 0.52]
    assert main(["results", "--results-dir", str(store.root), "--study", "lr_study", "--summary",
                 "--aggregate", "worst"]) == 0
    out = capsys.readouterr().out
    assert "verdict: " in out and aggregate_note("worst") in out
    assert "paired test on the mean of their per-seed differences" in aggregate_note("worst")
    assert main(["results", "--results-dir", str(store.root), "--aggregate", "median"]) == 2
    assert "--aggregate applies to --summary" in capsys.readouterr().err


def test_the_report_ranks_by_the_aggregate_and_says_the_verdict_is_unchanged(store, tmp_path, capsys):
    assert main(["report", "--results-dir", str(store.root), "--out", str(tmp_path / "r.html"),
                 "--aggregate", "worst"]) == 0
    page = (tmp_path / "r.html").read_text()
    assert "aggregate: worst" in page and "<th>worst</th>" in page and "Verdict:" in page
    mean_page = build_report(store.root, tmp_path / "mean.html").read_text()
    assert "aggregate:" not in mean_page and "<th>worst</th>" not in mean_page
