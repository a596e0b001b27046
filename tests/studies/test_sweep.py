"""The sweep runner: grid × seeds through papermill, failures recorded, killed sweeps resume; shards, GPUs and dry runs
for real (the local engine here; the Ray engine in test_ray_sweep.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml

from carlib.base.devices import parse_visible_devices, visible_gpus
from carlib.cli import main
from carlib.errors import ConfigError, DeviceError
from carlib.records.record import new_record
from carlib.records.store import ResultsStore, load_results
from carlib.studies.sweep import expand_trials, load_sweep, parse_shard, run_sweep
from carlib.studies.trials import death_message, gpu_slots
from carlib.train.resume import backup_dir_for

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
    # The shards run_sweep itself picks (a dry run): disjoint, together every trial.
    parts = [[t.trial_id for t in run_sweep(spec, shard=f"{i}/3", dry_run=True, results_dir=tmp_path / "r").trials]
             for i in (1, 2, 3)]
    assert sorted(sum(parts, [])) == sorted(t.trial_id for t in trials) and all(len(p) == 4 for p in parts)


_SCHEDULER_VARIABLES = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_STEP",
                        "JOB_COMPLETION_INDEX", "JOB_COMPLETIONS")


@pytest.mark.parametrize("scheduler,environments", [
    # sbatch --array=1-3: ids 1, 2, 3
    ("slurm", [{"SLURM_ARRAY_TASK_ID": str(i), "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "1"}
               for i in (1, 2, 3)]),
    # sbatch --array=0-4:2: ids 0, 2, 4
    ("slurm-step", [{"SLURM_ARRAY_TASK_ID": str(i), "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "0",
                     "SLURM_ARRAY_TASK_STEP": "2"} for i in (0, 2, 4)]),
    # an Indexed Job with completions: 3, whose manifest passes JOB_COMPLETIONS
    ("kubernetes", [{"JOB_COMPLETION_INDEX": str(i), "JOB_COMPLETIONS": "3"} for i in (0, 1, 2)]),
])
def test_shard_auto_splits_a_sweep_into_disjoint_complete_parts(tmp_path, write_sweep, monkeypatch, scheduler,
                                                                environments):
    spec = load_sweep(write_sweep(grid={"lr": [1e-3, 2e-3, 3e-3, 4e-3]}, seeds=2))
    parts = []
    for environment in environments:
        for name in _SCHEDULER_VARIABLES:
            monkeypatch.delenv(name, raising=False)
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        parts.append([t.trial_id for t in run_sweep(spec, shard="auto", dry_run=True, results_dir=tmp_path).trials])
    assert sorted(sum(parts, [])) == sorted(t.trial_id for t in expand_trials(spec))
    assert [len(p) for p in parts] == [3, 3, 2]


@pytest.mark.parametrize("environment,message", [
    ({}, "neither a Slurm job array"),
    ({"JOB_COMPLETION_INDEX": "0"}, "must also set JOB_COMPLETIONS"),
    ({"JOB_COMPLETION_INDEX": "3", "JOB_COMPLETIONS": "3"}, "outside 0..2"),
    ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "1"}, "--array=0-2"),
    ({"SLURM_ARRAY_TASK_ID": "1"}, "SLURM_ARRAY_TASK_COUNT is not set"),
])
def test_shard_auto_without_a_usable_scheduler_says_what_is_missing(environment, message):
    with pytest.raises(ConfigError, match=message):
        parse_shard("auto", environ=environment)


@pytest.mark.parametrize("overrides,message", [
    ({"grid": {"lr": [1e-3, -1]}}, "lr=-1.0 is out of range"),
    ({"grid": {"learning_rate": [1e-3]}}, "Did you mean 'lr'"),
    ({"colour": "red"}, "unknown key(s) 'colour'"),
    ({"notebook": "notebooks/nope.ipynb"}, "does not exist"),
    ({"seeds": 0}, "seeds=0 must be an integer >= 1"),
    # the notebook's summary would fail after the first trial trained: a variant keeps the name, in its own store
    ({"study": "lr_study_v2"}, "unknown study 'lr_study_v2'. Did you mean 'lr_study'? Known: augmentation_study"),
])
def test_a_bad_sweep_fails_before_anything_runs(tmp_path, tiny_data_dir, overrides, message):
    with pytest.raises(ConfigError) as err:
        load_sweep(_write_sweep(tmp_path, tiny_data_dir, **overrides))
    assert message in str(err.value)


@pytest.mark.parametrize("text", ["0/2", "3/2", "a/b", "1", "automatic"])
def test_bad_shard(text):
    with pytest.raises(ConfigError, match="expected i/n"):
        parse_shard(text)


def test_dry_run_lists_this_shards_trials_and_marks_the_finished_ones(tmp_path, write_sweep, capsys):
    sweep_file = write_sweep(grid={"lr": [1e-3, 2e-3, 3e-3, 4e-3]})
    results = tmp_path / "results"
    first_half = [t.trial_id for t in run_sweep(sweep_file, shard="1/2", dry_run=True, results_dir=results).trials]
    finished = first_half[0]
    params = next(t.params for t in expand_trials(load_sweep(sweep_file)) if t.trial_id == finished)
    ResultsStore(results).write(new_record(run_id="done-before", study="lr_study", config=params, started_at="2026",
                                           status="ok", metrics={}))
    assert main(["sweep", str(sweep_file), "--dry-run", "--shard", "1/2", "--results-dir", str(results)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == first_half  # this shard's trials only, and nothing ran
    assert [line.endswith("(finished)") for line in lines] == [True, False]
    assert all("'lr': " in line and "'epochs': 1" in line for line in lines)
    assert [r["run_id"] for r in ResultsStore(results).records()] == ["done-before"]


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

    # Two workers, one GPU each (the ids reach the trials as CUDA_VISIBLE_DEVICES; this machine has no GPU)
    report = run_sweep(sweep_file, results_dir=results, workers=2, gpus=["0", "1"], progress=False)
    assert set(report.skipped) == finished
    logs = {t: (results / "notebooks" / f"{t}.log").read_text()[-2000:] for t in report.failed}
    assert len(report.ok) == 4 - len(finished) and not report.failed, logs
    table = load_results(results)
    assert len(table) == 4 and set(table["status"]) == {"ok"}
    assert sorted(table["lr"].unique()) == [0.001, 0.003]
    assert sorted(table["trial_id"]) == sorted(t.trial_id for t in expand_trials(load_sweep(sweep_file)))
    assert all((results / "notebooks" / f"{trial_id}.ipynb").is_file() for trial_id in table["trial_id"])
    rerun = [r for r in ResultsStore(results).records() if r["config"]["trial_id"] in report.ok]
    assert {r["hardware"]["cuda_visible_devices"] for r in rerun} == ({"0", "1"} if len(rerun) > 1 else {"0"})
    assert all(r["sweep"] == {"engine": "local", "attempts": 1} for r in rerun)
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


def test_a_killed_training_kernel_is_recorded_failed_and_a_rerun_resumes_it(tmp_path, write_sweep, processes):
    """The out-of-memory killer's case: the kernel that trains dies, not papermill. Without retries the trial is
    recorded failed, saying so; a rerun resumes it after its last finished epoch. Only this shard's trial runs."""
    sweep_file = write_sweep(epochs=3)
    results = tmp_path / "results"
    (trial,) = run_sweep(sweep_file, shard="2/2", dry_run=True, results_dir=results).trials
    reports = []
    sweep = threading.Thread(target=lambda: reports.append(
        run_sweep(sweep_file, shard="2/2", retries=0, results_dir=results, progress=False, machine_gpus=[])))
    sweep.start()
    deadline, killed = time.time() + 300, None
    while killed is None and sweep.is_alive() and time.time() < deadline:
        if (backup_dir_for(results, trial.trial_id) / "state.json").is_file():
            kernels = [processes.kernel(p) for p in processes.papermill(psutil.Process(), trial.trial_id)]
            killed = next((k for k in kernels if k is not None), None)
            if killed:
                killed.kill()
        time.sleep(0.05)
    sweep.join(timeout=300)
    assert killed is not None, "the trial finished before its kernel could be killed"
    (report,) = reports
    assert report.failed == [trial.trial_id] and report.attempts == {trial.trial_id: 1}
    (failed,) = ResultsStore(results).records()
    assert failed["status"] == "failed" and failed["error"] == death_message("the notebook's kernel died")
    assert failed["sweep"] == {"engine": "local", "attempts": 1}
    assert (backup_dir_for(results, trial.trial_id) / "state.json").is_file()  # what the rerun resumes from

    report = run_sweep(sweep_file, shard="2/2", retries=0, results_dir=results, progress=False, machine_gpus=[])
    assert report.ok == [trial.trial_id]
    ok = [r for r in ResultsStore(results).records() if r["status"] == "ok"]
    assert len(ok) == 1 and ok[0]["training"]["resumed_after_epoch"] >= 1
    assert [row["epoch"] for row in ok[0]["history"]] == [1, 2, 3]
    # The other shard's trial never ran.
    assert {r["config"]["trial_id"] for r in ResultsStore(results).records()} == {trial.trial_id}


def test_a_dead_kernel_is_retried_and_the_record_says_how_many_attempts(tmp_path, write_sweep, dying_notebook, capsys):
    sweep_file = write_sweep(grid={"lr": [1e-3]}, notebook=dying_notebook)
    results = tmp_path / "results"
    assert main(["sweep", str(sweep_file), "--results-dir", str(results), "--no-progress"]) == 0  # --retries 1
    assert "1 trial(s) ran, 0 failed, 0 already finished (skipped); 1 retried after their process died" in (
        capsys.readouterr().out)
    (record,) = ResultsStore(results).records()  # the dead attempt left no record
    assert record["status"] == "ok" and record["sweep"] == {"engine": "local", "attempts": 2}
    assert (Path(record["run_dir"]) / "history.csv").is_file()


# ------------------------------------------------------------------------------------------- GPU safety
def test_gpus_are_found_without_tensorflow():
    assert parse_visible_devices("0,2") == ["0", "2"] and parse_visible_devices("") == []
    assert parse_visible_devices("-1") == [] and parse_visible_devices("1,-1,2") == ["1"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "3"}) == ["3"]

    def nvidia_smi(command, **kwargs):
        assert command == ["nvidia-smi", "-L"]
        return subprocess.CompletedProcess(command, 0, stdout="GPU 0: NVIDIA H100 (UUID: GPU-a)\n"
                                                              "GPU 1: NVIDIA H100 (UUID: GPU-b)\n")

    assert visible_gpus({}, run=nvidia_smi) == ["0", "1"]

    def no_driver(command, **kwargs):
        raise FileNotFoundError(command[0])

    assert visible_gpus({}, run=no_driver) == []


def test_each_local_worker_gets_its_own_gpu_or_shares_one_deliberately():
    two = ["0", "1"]
    assert gpu_slots(2, gpus=None, gpus_per_trial=None, machine_gpus=two) == [
        {"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}]
    assert gpu_slots(1, gpus=None, gpus_per_trial=None, machine_gpus=two) == [{}]  # one trial sees every GPU
    assert gpu_slots(1, gpus=["1"], gpus_per_trial=None, machine_gpus=[]) == [{"CUDA_VISIBLE_DEVICES": "1"}]
    assert gpu_slots(3, gpus=None, gpus_per_trial=None, machine_gpus=[]) == [{}] * 3  # a CPU machine
    shared = gpu_slots(4, gpus=None, gpus_per_trial=0.5, machine_gpus=two)
    assert sorted(s["CUDA_VISIBLE_DEVICES"] for s in shared) == ["0", "0", "1", "1"]
    assert all(s["TF_FORCE_GPU_ALLOW_GROWTH"] == "true" for s in shared)  # no trial grabs a whole shared GPU
    assert gpu_slots(1, gpus=None, gpus_per_trial=2, machine_gpus=["0", "1", "2"]) == [{"CUDA_VISIBLE_DEVICES": "0,1"}]
    assert gpu_slots(2, gpus=None, gpus_per_trial=0, machine_gpus=two) == [{"CUDA_VISIBLE_DEVICES": ""}] * 2


@pytest.mark.parametrize("workers,gpus,gpus_per_trial,machine,error,message", [
    (3, None, None, ["0", "1"], ConfigError, "--gpus-per-trial 0.5"),
    (2, ["0"], None, [], ConfigError, "room for 1 trial(s)"),
    (5, None, 0.5, ["0", "1"], ConfigError, "room for 4 trial(s)"),
    (1, None, 1, [], DeviceError, "no GPU"),
    (1, None, 3, ["0", "1"], DeviceError, "only 2 GPU(s)"),
    (1, None, 1.5, ["0", "1"], ConfigError, "out of range"),
    (1, ["0"], 0, [], ConfigError, "drop one of them"),
])
def test_more_trials_than_the_gpus_allow_are_refused(workers, gpus, gpus_per_trial, machine, error, message):
    with pytest.raises(error) as raised:
        gpu_slots(workers, gpus=gpus, gpus_per_trial=gpus_per_trial, machine_gpus=machine)
    assert message in str(raised.value)


def test_the_sweep_refuses_before_any_trial_starts(tmp_path, write_sweep, capsys):
    sweep_file = write_sweep()
    with pytest.raises(ConfigError, match="--gpus-per-trial"):
        run_sweep(sweep_file, workers=2, results_dir=tmp_path / "r", machine_gpus=["0"], progress=False)
    assert not (tmp_path / "r").exists()
    # The command line says it in one line.
    assert main(["sweep", str(sweep_file), "--workers", "3", "--gpus", "0,1", "--results-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("carlib: error: 3 workers but 2 GPU(s)")


def test_engine_ray_without_ray_installed_says_how_to_install_it(tmp_path, write_sweep):
    # None in sys.modules makes `import ray` fail as if the package were missing.
    code = ("import sys; sys.modules['ray'] = None; from carlib.cli import main; "
            "sys.exit(main(['sweep', sys.argv[1], '--engine', 'ray', '--results-dir', sys.argv[2]]))")
    run = subprocess.run([sys.executable, "-c", code, str(write_sweep()), str(tmp_path / "r")], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().splitlines() == ['carlib: error: the ray engine needs Ray, an optional extra: pip install '
                                               '"carlib[ray]" (or leave --engine out: the local engine needs nothing '
                                               'more)']


def test_carlib_results_reads_the_shards_stores_as_one_table(tmp_path, capsys):
    shards = [tmp_path / "shard-0", tmp_path / "shard-1"]
    for index, store in enumerate(shards):
        ResultsStore(store).write(new_record(run_id=f"run-{index}", study="lr_study", config={"lr": 1e-3 * (index + 1)},
                                             started_at=f"2026-01-0{index + 1}", status="ok", metrics={}))
    ResultsStore(shards[1]).write(new_record(run_id="run-0", study="lr_study", config={"lr": 1e-3},
                                             started_at="2026-01-01", status="ok", metrics={}))  # a copy of run-0
    assert main(["results", "--results-dir", str(shards[0]), "--results-dir", str(shards[1]), "--format", "csv"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [row.split(",")[0] for row in rows] == ["run-0", "run-1"]  # each run once, oldest first
    assert list(load_results([str(s) for s in shards])["run_id"]) == ["run-0", "run-1"]
