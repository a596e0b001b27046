"""Studies: several seeds per configuration, a summary across seeds, notebook parameters that fail loudly."""

from __future__ import annotations

import pandas as pd
import pytest

import carlib
from carlib.errors import ConfigError
from carlib.studies.parameters import notebook_parameters
from carlib.studies.run import run_study, study_summary
from carlib.studies.stats import summarize


def test_run_study_repeats_over_consecutive_seeds(fast_config):
    records = run_study("lr_study", seeds=2, **{**fast_config, "epochs": 1})
    assert [r["config"]["seed"] for r in records] == [0, 1]
    assert {r["study"] for r in records} == {"lr_study"}
    summary = study_summary("lr_study", fast_config["results_dir"])
    assert list(summary.index.names) == ["lr", "schedule"]
    row = summary.iloc[0]
    assert row["n"] == 2
    values = [r["metrics"]["val_accuracy_best"] for r in records]
    assert row["mean"] == pytest.approx(sum(values) / 2)


@pytest.mark.parametrize("seeds", [0, -1, "two"])
def test_seeds_must_be_a_positive_integer(seeds, fast_config):
    with pytest.raises(ConfigError, match="seeds"):
        run_study("lr_study", seeds=seeds, **fast_config)


def test_summary_ignores_failed_runs_and_ranks_by_mean():
    frame = pd.DataFrame({
        "status": ["ok", "ok", "ok", "failed"],
        "lr": [0.1, 0.1, 0.01, 0.01],
        "schedule": ["constant"] * 4,
        "test_accuracy_best": [0.5, 0.7, 0.8, 0.99],
    })
    summary = summarize(frame, ["lr", "schedule"])
    assert summary["n_failed"].tolist() == [1, 0]
    assert list(summary.index.get_level_values("lr")) == [0.01, 0.1]
    assert summary.loc[(0.01, "constant"), "n"] == 1 and summary.loc[(0.01, "constant"), "mean"] == 0.8
    assert summary.loc[(0.1, "constant"), "std"] == pytest.approx(0.1414, abs=1e-4)


def test_notebook_parameters_take_plain_values_and_reject_typos():
    namespace = {"lr": 1e-3, "seeds": 2, "data_dir": None, "lr_boundaries": [3, 6], "carlib": carlib,
                 "records": [{"run_id": "x"}], "_private": 1, "In": [], "summary": pd.DataFrame()}
    assert notebook_parameters(namespace) == {"lr": 1e-3, "seeds": 2, "data_dir": None, "lr_boundaries": [3, 6]}
    with pytest.raises(ConfigError, match="'learning_rate'.*Did you mean 'lr'"):
        notebook_parameters({**namespace, "learning_rate": 0.1})


def test_unknown_study_summary_lists_known_studies():
    with pytest.raises(ConfigError, match="lr_study"):
        study_summary("no_such_study")
