"""Notebooks under papermill: parameters arrive as numbers or strings; concurrent runs both land."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from carlib.results import load_results

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def _papermill(notebook: Path, out: Path, *params: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "papermill", str(notebook), str(out), "-k", "python3", "--log-level", "ERROR",
               *params]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_concurrent_papermill_runs_add_two_intact_rows_with_numeric_lr(tiny_data_dir, tmp_path):
    results = tmp_path / "results"
    common = ["-p", "data_dir", str(tiny_data_dir), "-p", "results_dir", str(results), "-p", "epochs", "1",
              "-p", "image_size", "32"]
    # -p parses 1e-3 as a float; -r passes the raw string "1e-3": both must record lr == 0.001.
    runs = [_papermill(NOTEBOOKS / "lr_study.ipynb", tmp_path / "a.ipynb", "-p", "lr", "1e-3", *common),
            _papermill(NOTEBOOKS / "lr_study.ipynb", tmp_path / "b.ipynb", "-r", "lr", "1e-3", *common)]
    for run in runs:
        output, _ = run.communicate(timeout=600)
        assert run.returncode == 0, output
    table = load_results(results)
    assert len(table) == 2
    assert list(table["status"]) == ["ok", "ok"]
    assert table["lr"].tolist() == [0.001, 0.001] and table["lr"].dtype.kind == "f"
    assert table["val_accuracy_best"].notna().all()


def test_a_misspelt_papermill_parameter_fails_loudly(tmp_path):
    run = _papermill(NOTEBOOKS / "lr_study.ipynb", tmp_path / "typo.ipynb", "-p", "learning_rate", "0.1",
                     "-p", "results_dir", str(tmp_path / "results"))
    output, _ = run.communicate(timeout=300)
    assert run.returncode != 0
    assert "unknown parameter 'learning_rate'" in output and "Did you mean 'lr'" in output
    assert not (tmp_path / "results" / "records").exists()


@pytest.mark.parametrize("preset", sorted(Path(__file__).resolve().parent.parent.glob("params/*/*.yaml")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_preset_names_only_known_parameters(preset):
    from carlib.cli import load_params_file
    from carlib.config import ExperimentConfig

    params = load_params_file(preset)
    params.pop("seeds", None)
    data_dir = params.pop("data_dir", None)
    weights = params.pop("weights", None)
    assert weights in (None, "imagenet")
    assert data_dir is None or isinstance(data_dir, str)
    ExperimentConfig.from_dict(params)
