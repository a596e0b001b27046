"""tools/gpu_check.sh, the GPU path's one script, in its tiny CPU mode: every step runs and lands in one table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "gpu_check.sh"


def test_the_cpu_mode_runs_every_step_into_one_table(tiny_data_dir, tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "DATA_DIR": str(tiny_data_dir)}
    run = subprocess.run(["bash", str(SCRIPT), "--cpu", str(tmp_path / "out")], env=env, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    table = run.stdout
    assert table.startswith("gpu_check (cpu mode)") and (tmp_path / "out" / "table.txt").read_text() == table
    rows = table.splitlines()[2:]
    steps = [row.split()[0] for row in rows]
    assert steps.count("lite0") == 1 and steps.count("b0") == 1 and steps.count("ray") == 2, table
    assert "feed" in steps and "feed_ratio" in table
    assert all(row.rstrip().endswith("ok") for row in rows), table
    assert "efficientnet_lite0 (imagenet)" in table  # the pretrained weights, offline


def test_the_gpu_mode_refuses_a_machine_without_a_gpu(tmp_path):
    if subprocess.run(["bash", "-c", "command -v nvidia-smi && nvidia-smi -L"], capture_output=True).returncode == 0:
        pytest.skip("this machine has a GPU")
    run = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "no NVIDIA GPU here" in run.stderr and "--cpu" in run.stderr
