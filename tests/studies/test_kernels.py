"""Sweeps run their notebooks in this interpreter's environment, and a missing kernel fails before any trial."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from carlib.cli import main
from carlib.records.store import load_results
from carlib.studies.sweep import check_kernel

SWEEP = Path(__file__).resolve().parents[2] / "params" / "lr_study" / "sweep-quick.yaml"


def test_the_default_kernel_runs_this_environment():
    program = check_kernel("python3")
    assert os.path.realpath(os.path.dirname(program)) == os.path.realpath(os.path.dirname(sys.executable))


def test_a_missing_kernel_fails_the_sweep_before_any_trial(tmp_path, capsys):
    results = tmp_path / "results"
    assert main(["sweep", str(SWEEP), "--results-dir", str(results), "--kernel", "no-such-kernel"]) == 2
    err = capsys.readouterr().err
    assert "carlib: error: Jupyter kernel 'no-such-kernel' is not installed" in err
    assert "python3" in err  # the installed kernels are listed
    assert f"{sys.executable} -m ipykernel install --sys-prefix --name no-such-kernel" in err
    assert load_results(results).empty


def test_a_kernel_of_another_environment_is_named_in_a_warning(tmp_path, monkeypatch):
    other = tmp_path / "other-env" / "bin" / "python"
    spec = tmp_path / "jupyter" / "kernels" / "other"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(other), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python (other env)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    with pytest.warns(UserWarning, match=r"'other' runs .*other-env/bin/python, not this interpreter"):
        assert check_kernel("other") == str(other)
