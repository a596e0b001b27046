"""The HTML report: every study's summary, verdict and plots, from the store and executed notebooks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import carlib
from carlib.studies.report import build_report
from carlib.studies.sweep import KERNEL_START_TIMEOUT_S

ROOT = Path(__file__).resolve().parents[2]


def test_report_shows_each_study_with_summary_verdict_and_plots(fast_config, tmp_path):
    carlib.run_study("lr_study", seeds=2, **{**fast_config, "epochs": 1})
    carlib.run_study("augmentation_study", seeds=1, **{**fast_config, "epochs": 1, "augmentation": "none"})
    notebooks = tmp_path / "executed"
    notebooks.mkdir()
    subprocess.run([sys.executable, "-m", "papermill", str(ROOT / "notebooks" / "augmentation_study.ipynb"),
                    str(notebooks / "aug.ipynb"), "-p", "data_dir", fast_config["data_dir"], "-p", "results_dir",
                    fast_config["results_dir"], "-p", "epochs", "1", "-p", "image_size", "32", "-k", "python3",
                    "--log-level", "ERROR", "--start-timeout", str(KERNEL_START_TIMEOUT_S)], check=True, capture_output=True)
    out = build_report(fast_config["results_dir"], tmp_path / "report.html", notebook_dirs=[notebooks])
    page = out.read_text()
    assert "<h2>lr_study</h2>" in page and "<h2>augmentation_study</h2>" in page
    assert page.count("Verdict:") == 2
    assert "no comparison possible yet" in page or "nothing to compare" in page
    assert "What the model is trained on" in page  # the augmentation gallery from the executed notebook
    assert page.count("data:image/png;base64,") >= 5
    assert "Combined results table" in page and page.count("<tr>") >= 5
