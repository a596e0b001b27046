"""``carlib bench sweep``: its figures from timed sweeps, its table, and its arguments checked before anything runs
(the sweeps themselves are measured by running the command, never in a unit test)."""

from __future__ import annotations

import pytest

from carlib.bench.sweep import _figures, format_sweep_figures
from carlib.cli import main


def test_figures_per_trial_overhead_and_speed_ups():
    samples = {("local", 1): [{"wall_s": 40.0, "run_s": 20.0, "trials": 4}],
               ("ray", 1): [{"wall_s": 50.0, "run_s": 22.0, "trials": 4}],
               ("local", 2): [{"wall_s": 25.0, "run_s": 30.0, "trials": 4}],
               ("ray", 2): [{"wall_s": 30.0, "run_s": 31.0, "trials": 4}]}
    figures = {f["figure"]: f for f in _figures(samples, 6.5, trials=4, image_size=32, epochs=1, rounds=1,
                                                data_dir=None)}
    assert figures["sweep_local_s_per_trial"]["value"] == 10.0 and figures["sweep_ray_s_per_trial"]["value"] == 12.5
    # Around the runs: local (40 - 20) / 4 = 5 s, ray (50 - 22) / 4 = 7 s per trial.
    overhead = figures["sweep_ray_overhead_s"]
    assert overhead["value"] == 2.0 and overhead["met"] and overhead["wall_difference_s"] == 2.5
    assert figures["sweep_ray_start_s"]["value"] == 6.5
    assert figures["sweep_local_speedup_2_workers"]["value"] == 1.6
    assert figures["sweep_ray_speedup_2_workers"]["value"] == pytest.approx(50 / 30)
    table = format_sweep_figures(list(figures.values()))
    assert "sweep_ray_overhead_s" in table and "<= 2  met" in table and "4 trials per sweep" in table


def test_bad_arguments_fail_before_any_sweep(capsys):
    assert main(["bench", "sweep", "--trials", "1"]) == 2
    assert "at least 2" in capsys.readouterr().err
