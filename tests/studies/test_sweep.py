"""The sweep runner: grid × seeds through papermill, failures recorded, killed sweeps resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from carlib.errors import ConfigError
from carlib.records.store import ResultsStore, load_results
from carlib.studies.sweep import expand_trials, load_sweep, parse_shard, run_sweep

ROOT = Path(__file__).resolve().parents[2]


def _write_sweep(tmp_path: Path, tiny_data_dir, **overrides) -> Path:
    spec = {
        "notebook": str(ROOT / "notebooks" / "lr_study.ipynb"),
        "study": "lr_study",
        "base": {"data_dir": str(tiny_data_dir), "image_size": 32, "epochs": 1, "val_split": 0.25},
        "grid": {"lr": [1e-3, 3e-3]},
        "seeds": 2,
        **overrides,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_expansion_is_grid_times_seeds_with_stable_ids(tmp_path, tiny_data_dir):
    spec = load_sweep(_write_sweep(tmp_path, tiny_data_dir, grid={"lr": [1e-3, 3e-3], "schedule": ["constant", "step"]},
                                   seeds=3))
    trials = expand_trials(spec)
    assert len(trials) == 2 * 2 * 3 and len({t.trial_id for t in trials}) == 12
    assert {t.params["seed"] for t in trials} == {0, 1, 2}
    assert [t.trial_id for t in expand_trials(spec)] == [t.trial_id for t in trials]
    shards = [parse_shard(f"{i}/3") for i in (1, 2, 3)]
    ids = sorted(t.trial_id for t in trials)
    parts = [ids[i - 1::n] for i, n in shards]
    assert sorted(sum(parts, [])) == ids and all(parts)


@pytest.mark.parametrize("overrides,message", [
    ({"grid": {"lr": [1e-3, -1]}}, "lr=-1.0 is out of range"),
    ({"grid": {"learning_rate": [1e-3]}}, "Did you mean 'lr'"),
    ({"colour": "red"}, "unknown key(s) 'colour'"),
    ({"notebook": "notebooks/nope.ipynb"}, "does not exist"),
    ({"seeds": 0}, "seeds=0 must be an integer >= 1"),
])
def test_a_bad_sweep_fails_before_anything_runs(tmp_path, tiny_data_dir, overrides, message):
    with pytest.raises(ConfigError) as err:
        load_sweep(_write_sweep(tmp_path, tiny_data_dir, **overrides))
    assert message in str(err.value)


@pytest.mark.parametrize("text", ["0/2", "3/2", "a/b", "1"])
def test_bad_shard(text):
    with pytest.raises(ConfigError, match="expected i/n"):
        parse_shard(text)


def test_killed_sweep_resumes_only_the_missing_trials(tmp_path, tiny_data_dir):
    sweep_file = _write_sweep(tmp_path, tiny_data_dir)
    results = tmp_path / "results"
    child = subprocess.Popen([sys.executable, "-m", "carlib", "sweep", str(sweep_file), "--results-dir", str(results),
                              "--no-progress"], start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    store = ResultsStore(results)
    deadline = time.time() + 300
    while len(store.records()) < 1 and time.time() < deadline:
        time.sleep(0.5)
    os.killpg(child.pid, signal.SIGKILL)  # the sweep and its papermill child, mid-trial
    child.wait()
    finished = {r["config"]["trial_id"] for r in store.records() if r["status"] == "ok"}
    assert 1 <= len(finished) < 4

    report = run_sweep(sweep_file, results_dir=results, workers=2, progress=False)
    assert set(report.skipped) == finished
    logs = {t: (results / "notebooks" / f"{t}.log").read_text()[-2000:] for t in report.failed}
    assert len(report.ok) == 4 - len(finished) and not report.failed, logs
    table = load_results(results)
    assert len(table) == 4 and set(table["status"]) == {"ok"}
    assert sorted(table["lr"].unique()) == [0.001, 0.003]
    assert sorted(table["trial_id"]) == sorted(t.trial_id for t in expand_trials(load_sweep(sweep_file)))
    assert all((results / "notebooks" / f"{trial_id}.ipynb").is_file() for trial_id in table["trial_id"])
    # Every trial is finished now: a third run does nothing.
    assert len(run_sweep(sweep_file, results_dir=results, progress=False).skipped) == 4


def test_a_failing_trial_is_recorded_and_the_others_go_on(tmp_path, tiny_data_dir):
    # Xception needs at least 71 px: at 32 px the model cannot be built, inside the trial.
    sweep_file = _write_sweep(tmp_path, tiny_data_dir, grid={"backbone": ["xception", "simple_cnn"]}, seeds=1)
    report = run_sweep(sweep_file, results_dir=tmp_path / "results", progress=False)
    assert len(report.failed) == 1 and len(report.ok) == 1
    table = load_results(tmp_path / "results").set_index("backbone")
    assert table.loc["xception", "status"] == "failed" and table.loc["simple_cnn", "status"] == "ok"
    assert "ValueError" in table.loc["xception", "error"]
