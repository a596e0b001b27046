"""Faults lose nothing (issue 7): divergence, killed runs (resume), killed sweep workers, junk in the store.

The kill tests run real processes: training processes stopped with SIGINT/SIGTERM leave no
record and a backup, from which a rerun resumes at the next epoch; two sweeps share one store
while their papermill workers are killed (SIGKILL), and a rerun of both finishes every trial
exactly once, the one killed after a finished epoch resuming from it.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml

import carlib
from carlib.cli import main
from carlib.records.store import ResultsStore, load_results
from carlib.train import schedules
from carlib.train.experiment import divergence_message
from carlib.train.resume import backup_dir_for


# ----------------------------------------------------------------- divergence
def test_divergence_stops_at_once_fails_the_run_and_keeps_the_best_checkpoint(fast_config, monkeypatch):
    real = schedules.lr_at_epoch
    # A sane first epoch, then a learning rate that blows the weights up.
    monkeypatch.setattr(schedules, "lr_at_epoch", lambda epoch, **kw: real(epoch, **kw) if epoch == 0 else 1e30)
    record = carlib.run_experiment(fast_config, optimizer="sgd", lr=1e-2, epochs=4, augmentation="none")
    assert record["status"] == "failed"
    assert record["error"] == divergence_message(2) == (
        "training diverged: the loss became NaN or infinite in epoch 2; training stopped there and the best "
        "checkpoint so far is kept. Lower lr (or add warmup_epochs) and run again.")
    history = record["history"]
    assert [row["epoch"] for row in history] == [1, 2]  # stopped at once: epochs 3 and 4 never ran
    assert np.isfinite(history[0]["loss"]) and not np.isfinite(history[1]["loss"])
    metrics = record["metrics"]
    assert metrics["best_epoch"] == 1
    assert metrics["val_accuracy_best"] == pytest.approx(history[0]["val_accuracy"], abs=1e-6)
    best = carlib.load_model(record["checkpoint"]["best"])
    assert all(np.isfinite(w).all() for w in best.get_weights())
    assert load_results(fast_config["results_dir"])["status"].tolist() == ["failed"]


# ------------------------------------------------------- killed training runs
TRAINER = textwrap.dedent(
    """
    import json, signal, sys, time
    import carlib
    from carlib.train.callbacks import EpochTimer

    # Ctrl-C as in a terminal, also when the suite was started in the background (a non-interactive shell starts
    # background jobs with SIGINT ignored, every child inherits that, and Python then installs no handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    params, delay = json.loads(sys.argv[1]), float(sys.argv[2])
    timed = EpochTimer.on_epoch_end

    def slow_epoch_end(self, epoch, logs=None):
        # Epoch 1 is backed up after this; epoch 2 then waits for the kill, so it lands between the first and the
        # second backup however loaded the machine is.
        timed(self, epoch, logs)
        time.sleep(delay if epoch == 0 else 300)

    EpochTimer.on_epoch_end = slow_epoch_end
    carlib.run_experiment(params)
    """
)


def _start_trainer(params: dict, delay: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", TRAINER, json.dumps(params), str(delay)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _backed_up_epochs(results_dir: Path, trial_id: str) -> int:
    try:
        return json.loads((backup_dir_for(results_dir, trial_id) / "state.json").read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        return 0


def _signal_after_first_backup(results_dir: Path, procs: dict[str, tuple[subprocess.Popen, str]],
                               timeout: float = 240) -> None:
    """Send each process its signal as soon as its trial has backed up one epoch."""
    deadline = time.time() + timeout
    waiting = dict(procs)
    while waiting:
        for sig, (proc, trial) in list(waiting.items()):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            if _backed_up_epochs(results_dir, trial) >= 1:
                proc.send_signal(getattr(signal, sig))
                del waiting[sig]
        assert time.time() < deadline, "no epoch was backed up in time"
        time.sleep(0.02)


def test_a_killed_run_leaves_no_record_and_its_rerun_resumes_at_the_next_epoch(fast_config, capsys):
    # (kill -9 of a sweep's worker, and its resume through the sweep: test_two_sweeps_... below)
    results = Path(fast_config["results_dir"])
    base = {**fast_config, "epochs": 4, "augmentation": "none", "results_dir": str(results)}
    trials = {"SIGTERM": "lr_study-terminated", "SIGINT": "lr_study-interrupted"}
    procs = {sig: _start_trainer({**base, "trial_id": trial}, delay=1.0) for sig, trial in trials.items()}
    _signal_after_first_backup(results, {sig: (procs[sig], trials[sig]) for sig in trials})
    outputs = {sig: proc.communicate(timeout=120) for sig, proc in procs.items()}
    assert procs["SIGTERM"].returncode == -signal.SIGTERM
    assert procs["SIGINT"].returncode != 0 and "KeyboardInterrupt" in outputs["SIGINT"][1]
    store = ResultsStore(results)
    assert store.records() == []  # a killed run leaves no record
    assert all(_backed_up_epochs(results, trial) == 1 for trial in trials.values())  # and a backup to resume

    state = json.loads((backup_dir_for(results, trials["SIGTERM"]) / "state.json").read_text())
    record = carlib.run_experiment({**base, "trial_id": trials["SIGTERM"]})
    assert f"resuming trial {trials['SIGTERM']} after epoch 1" in capsys.readouterr().out
    assert record["status"] == "ok" and record["training"]["resumed_after_epoch"] == 1
    assert record["run_id"] == state["run_id"] and record["started_at"] == state["started_at"]
    assert [row["epoch"] for row in record["history"]] == [1, 2, 3, 4]  # epoch 1 ran before the kill, 2-4 after
    assert record["history"][0]["loss"] == state["history"][0]["loss"]
    # the run's CPU time counts what the killed attempt spent up to its backup, not only the resumed part
    assert state["cpu_s"] > 0 and record["timings"]["cpu_s_earlier_attempts"] == pytest.approx(state["cpu_s"])
    assert record["timings"]["cpu_s"] > state["cpu_s"]
    assert [r["run_id"] for r in store.records()] == [record["run_id"]]
    history_csv = (Path(record["run_dir"]) / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history_csv[1:]] == ["0", "1", "2", "3"]
    assert not backup_dir_for(results, trials["SIGTERM"]).exists()  # finished: the backup is gone


def test_a_trial_runs_in_one_process_at_a_time(fast_config, monkeypatch):
    from carlib.base import locks
    from carlib.base.locks import trial_lock
    from carlib.errors import TrialBusyError

    monkeypatch.setattr(locks, "TRIAL_LOCK_WAIT_S", 0.2)

    results = Path(fast_config["results_dir"]).resolve()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from carlib.base.locks import trial_lock
        with trial_lock({str(results)!r}, "lr_study-busy"):
            print("locked", flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(TrialBusyError) as err:
            carlib.run_experiment(fast_config, trial_id="lr_study-busy")
        lock = results / "backups" / "lr_study-busy.lock"
        assert str(err.value) == (f"trial 'lr_study-busy' is already running in another process (it holds "
                                  f"{str(lock)!r}); wait for it to finish, or stop it first.")
    finally:
        holder.kill()
        holder.wait()
    with trial_lock(results, "lr_study-busy"):  # the lock died with its holder
        pass


# ------------------------------------------------ concurrent sweeps, killed workers
MINIMAL_NOTEBOOK = {
    "cells": [
        {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "execution_count": None, "outputs": [],
         "source": "study = 'lr_study'\nresults_dir = None\nseeds = 1"},
        {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
         "source": "import carlib\nrecords = carlib.run_study(**carlib.notebook_parameters(globals()))"},
    ],
    "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    "nbformat": 4, "nbformat_minor": 5,
}


def _papermill_workers(sweeps: list[subprocess.Popen]) -> list[psutil.Process]:
    workers = []
    for sweep in sweeps:
        try:
            workers += [c for c in psutil.Process(sweep.pid).children() if "carlib.studies.notebook_run" in c.cmdline()]
        except psutil.Error:
            pass
    return workers


def _trial_of(worker: psutil.Process) -> str | None:
    try:
        return next(Path(a).stem for a in worker.cmdline() if a.endswith(".ipynb") and "/notebooks/" in a)
    except (psutil.Error, StopIteration):
        return None


def test_two_sweeps_on_one_store_with_killed_workers_finish_every_trial_exactly_once(tmp_path, tiny_data_dir):
    from carlib.studies.sweep import expand_trials, load_sweep

    notebook = tmp_path / "trial.ipynb"
    notebook.write_text(json.dumps(MINIMAL_NOTEBOOK))
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "notebook": str(notebook), "study": "lr_study",
        "base": {"data_dir": str(tiny_data_dir), "image_size": 32, "epochs": 2, "val_split": 0.25,
                 "augmentation": "none", "batch_size": 16},
        "grid": {"lr": [1e-3, 3e-3]}, "seeds": 1}))
    trial_ids = sorted(t.trial_id for t in expand_trials(load_sweep(sweep_file)))
    results = tmp_path / "results"

    def start_sweeps() -> list[subprocess.Popen]:
        # --retries 0: a killed worker is recorded failed at once (with retries the sweep would run it again itself)
        command = [sys.executable, "-m", "carlib", "sweep", str(sweep_file), "--results-dir", str(results),
                   "--no-progress", "--retries", "0"]
        return [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for _ in range(2)]

    sweeps = start_sweeps()
    rng = random.Random(7)
    killed: dict[str, str] = {}  # trial id -> when it was killed
    deadline = time.time() + 400
    # Kill 1: the worker of the first trial with a backed-up epoch (its rerun must resume). Kill 2: another worker
    # at a random moment of its run.
    while len(killed) < 2 and any(s.poll() is None for s in sweeps) and time.time() < deadline:
        workers = [(w, _trial_of(w)) for w in _papermill_workers(sweeps)]
        workers = [(w, t) for w, t in workers if t and t not in killed]
        backed_up = [(w, t) for w, t in workers if _backed_up_epochs(results, t) >= 1]
        if not killed and backed_up:
            worker, trial = backed_up[0]
            worker.kill()
            killed[trial] = "after epoch 1"
        elif killed and workers:
            time.sleep(rng.uniform(0, 4))
            worker, trial = workers[0]
            if worker.is_running():
                worker.kill()
                killed[trial] = "random"
        time.sleep(0.05)
    outputs = [s.communicate(timeout=400)[0] for s in sweeps]
    assert killed and all(s.returncode in (0, 1) for s in sweeps), outputs

    time.sleep(1.5)  # a killed papermill's kernel exits within a second (ipykernel's parent poller)
    reruns = start_sweeps()
    outputs += [s.communicate(timeout=400)[0] for s in reruns]
    assert all(s.returncode == 0 for s in reruns), outputs

    records = [json.loads(p.read_text()) for p in sorted((results / "records").glob("*.json"))]  # all parse
    ok = [r for r in records if r["status"] == "ok"]
    assert sorted(r["config"]["trial_id"] for r in ok) == trial_ids, outputs  # every trial exactly once
    failed = [r for r in records if r["status"] != "ok"]
    assert {r["config"]["trial_id"] for r in failed} <= set(killed)
    assert all(r["error"] == "papermill was killed by SIGKILL (stopped from outside: kill, or the out-of-memory "
               "killer); a rerun resumes it from its last finished epoch" for r in failed), [r["error"] for r in failed]
    first = next(t for t, when in killed.items() if when == "after epoch 1")
    resumed = next(r for r in ok if r["config"]["trial_id"] == first)
    if not any(r["config"]["trial_id"] == first for r in failed):
        pytest.fail(f"the kill of {first} was not recorded: {outputs}")
    assert resumed["training"]["resumed_after_epoch"] >= 1 and [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert not list((results / "backups").glob("*/state.json"))  # every finished trial discarded its backup
    assert main(["results", "--results-dir", str(results)]) == 0


# --------------------------------------------------------------- the store
def test_carlib_results_survives_corrupt_and_foreign_files(results_dir, capsys):
    store = ResultsStore(results_dir)
    store.write({"run_id": "good", "study": "adhoc", "status": "ok", "started_at": "2024",
                 "config": {"lr": 0.001}, "metrics": {"val_accuracy_best": 0.5}})
    junk = {
        "truncated.json": '{"run_id": "half", "config": {"lr"',
        "foreign.json": json.dumps({"name": "not a carlib record"}),
        "list.json": "[1, 2, 3]",
        "wrong-shapes.json": json.dumps({"run_id": "odd", "config": {"lr": 1}, "metrics": [1, 2], "data": "x"}),
        "binary.json": "\udcff",
        "notes.txt": "hello",
    }
    for name, text in junk.items():
        (store.records_dir / name).write_bytes(text.encode("utf-8", "surrogateescape"))
    (store.records_dir / "folder.json").mkdir()
    with pytest.warns(UserWarning) as caught:
        assert main(["results", "--results-dir", str(results_dir), "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].startswith("good,") and len(out.splitlines()) == 2
    warned = " ".join(str(w.message) for w in caught)
    for name in [*junk, "folder.json"]:
        assert name in warned, name
