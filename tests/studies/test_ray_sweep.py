"""The Ray engine (``carlib sweep --engine ray``): one task per trial, GPUs assigned by Ray, the driver the store's only
writer, worker and kernel deaths retried, a killed driver losing nothing. Tiny trials (16 px, 1–3 epochs); one Ray
instance for the whole run (the ``ray_instance`` fixture), a simulated two-node cluster for the driver test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from carlib.records.store import ResultsStore
from carlib.studies.ray_engine import trial_folder_key
from carlib.studies.rounds import run_until_decisive
from carlib.studies.sweep import expand_trials, load_sweep, run_sweep

pytest.importorskip("ray", reason="the Ray tests need the ray extra: pip install -e '.[dev,ray]'")

RUN_FILES = {"best.keras", "last.keras", "history.csv", "learning_curves.png"}


def _worker_folder(results: Path, trial_id: str) -> Path:
    return Path(tempfile.gettempdir()) / "carlib-trials" / trial_folder_key(ResultsStore(results), trial_id)


def _assert_in_the_store(record: dict, results: Path, files=RUN_FILES) -> None:
    """Every path of the record names the store, the run's files are there, and the worker's folder is gone."""
    root = str(results.resolve())
    assert record["config"]["results_dir"] == root and record["run_dir"].startswith(root + "/runs/")
    if "checkpoint" in record:
        assert {record["checkpoint"]["best"], record["checkpoint"]["last"]} <= {
            str(p) for p in Path(record["run_dir"]).iterdir()}
    assert {p.name for p in Path(record["run_dir"]).iterdir()} == set(files)
    assert "carlib-trials" not in json.dumps(record["config"]) + record["run_dir"]
    worker = record["sweep"]["worker_results_dir"]
    assert "carlib-trials" in worker and not Path(worker).exists()  # ran in a private folder, since removed


def test_a_ray_sweep_gives_each_trial_its_own_gpu_and_the_store_every_record_once(ray_instance, tmp_path, write_sweep):
    sweep_file = write_sweep(seeds=2)  # 4 trials; this shard runs 2, at once (2 CPUs, 2 declared GPUs)
    results = tmp_path / "results"
    mine = sorted(t.trial_id for t in run_sweep(sweep_file, shard="1/2", dry_run=True, results_dir=results).trials)
    report = run_sweep(sweep_file, engine="ray", shard="1/2", results_dir=results, progress=False)
    assert sorted(report.ok) == mine and not report.failed and report.attempts == {t: 1 for t in mine}
    records = ResultsStore(results).records()
    assert sorted(r["config"]["trial_id"] for r in records) == mine  # each once; the other shard's none
    assert {r["hardware"]["cuda_visible_devices"] for r in records} == {"0", "1"}  # Ray gave each its own GPU
    for record in records:
        assert record["status"] == "ok" and record["sweep"]["engine"] == "ray" and record["sweep"]["attempts"] == 1
        _assert_in_the_store(record, results)
    for trial_id in mine:
        notebook = (results / "notebooks" / f"{trial_id}.ipynb").read_text()
        assert json.loads(notebook)["cells"] and "carlib-trials" not in notebook  # paths rewritten to the store
        assert (results / "notebooks" / f"{trial_id}.log").is_file()
    # A second run finds every trial of the shard finished.
    assert sorted(run_sweep(sweep_file, engine="ray", shard="1/2", results_dir=results, progress=False).skipped) == mine


def test_a_killed_ray_worker_is_retried_and_resumes_from_its_last_epoch(ray_instance, tmp_path, write_sweep,
                                                                        processes):
    sweep_file = write_sweep(grid={"lr": [2e-3]}, epochs=3)
    results = tmp_path / "results"
    (trial,) = expand_trials(load_sweep(sweep_file))
    backup = _worker_folder(results, trial.trial_id) / "backups" / trial.trial_id / "state.json"
    reports = []
    sweep = threading.Thread(target=lambda: reports.append(
        run_sweep(sweep_file, engine="ray", results_dir=results, progress=False)))
    sweep.start()
    deadline, killed = time.time() + 300, []
    while not killed and sweep.is_alive() and time.time() < deadline:
        if backup.is_file():  # an epoch is finished: kill the Ray worker that runs the trial
            for papermill in processes.papermill(psutil.Process(), trial.trial_id):
                worker = papermill.parent()
                assert "ray::" in " ".join([worker.name(), *worker.cmdline()]), worker.cmdline()
                killed = [worker, papermill, processes.kernel(papermill)]
                worker.kill()
        time.sleep(0.05)
    sweep.join(timeout=300)
    assert killed, "the trial finished before its worker could be killed"
    (report,) = reports
    assert report.ok == [trial.trial_id] and report.attempts == {trial.trial_id: 2}
    (record,) = ResultsStore(results).records()  # the dead attempt left no record
    assert record["status"] == "ok" and record["sweep"]["attempts"] == 2
    assert record["training"]["resumed_after_epoch"] >= 1 and [h["epoch"] for h in record["history"]] == [1, 2, 3]
    _assert_in_the_store(record, results)
    # The dead worker's papermill and kernel did not train on as orphans.
    assert not any(p is not None and p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in killed)


def test_a_killed_driver_on_a_two_node_cluster_loses_nothing_and_a_rerun_runs_only_the_missing(tmp_path,
                                                                                               write_sweep,
                                                                                               quick_notebook):
    from ray.cluster_utils import Cluster

    # The driver joins the head node, which runs no trial: every trial runs on the other node, one at a time.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    driver = None
    try:
        sweep_file = write_sweep(notebook=quick_notebook)  # each trial records a run after 2 s
        results = tmp_path / "results"
        command = [sys.executable, "-m", "carlib", "sweep", str(sweep_file), "--engine", "ray", "--address",
                   cluster.address, "--results-dir", str(results), "--no-progress"]
        driver = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)
        store, deadline = ResultsStore(results), time.time() + 240
        while not store.records() and driver.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        os.kill(driver.pid, signal.SIGKILL)  # while the second trial runs
        output = driver.communicate()[0]
        (first,) = store.records()
        assert first["status"] == "ok", output
        assert sorted(p.name for p in (results / "records").iterdir()) == [f"{first['run_id']}.json"]  # no debris

        rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert "1 trial(s) ran, 0 failed, 1 already finished (skipped)" in rerun.stdout
        records = store.records()
        assert sorted(r["config"]["trial_id"] for r in records) == sorted(
            t.trial_id for t in expand_trials(load_sweep(sweep_file)))
        (worker_node,) = [n.node_id for n in cluster.list_all_nodes() if n is not cluster.head_node]
        for record in records:  # ran on the other node; the driver alone wrote the store
            assert record["status"] == "ok" and record["sweep"]["node"] == worker_node
            _assert_in_the_store(record, results, files={"history.csv"})
    finally:
        if driver is not None:
            try:
                os.killpg(driver.pid, signal.SIGKILL)  # what Ray left of the killed driver's session, if anything
            except ProcessLookupError:
                pass
        cluster.shutdown()


def test_a_dead_kernel_is_retried_on_a_private_ray_instance(ray_instance, tmp_path, write_sweep, dying_notebook):
    sweep_file = write_sweep(grid={"lr": [1e-3]}, notebook=dying_notebook)
    results = tmp_path / "results"
    # Through the command line, without --address: the sweep starts a private Ray instance of its own.
    command = [sys.executable, "-m", "carlib", "sweep", str(sweep_file), "--engine", "ray", "--results-dir",
               str(results), "--no-progress"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 trial(s) ran, 0 failed, 0 already finished (skipped); 1 retried after their process died" in run.stdout
    (record,) = ResultsStore(results).records()
    assert record["status"] == "ok" and record["sweep"]["engine"] == "ray" and record["sweep"]["attempts"] == 2
    assert record["sweep"]["node"] not in {node["NodeID"] for node in ray_instance.nodes()}  # not the tests' instance
    _assert_in_the_store(record, results, files={"history.csv"})


def test_until_decisive_on_ray_runs_each_round_as_a_batch_of_tasks_and_stops_with_its_reason(ray_instance, tmp_path,
                                                                                               scored_sweep):
    """``carlib sweep FILE --until-decisive --engine ray``: rounds as Ray tasks, one decision per round, a reason."""
    results = tmp_path / "results"
    report = run_until_decisive(scored_sweep, max_seeds=4, results_dir=results, engine="ray", progress=False)
    stopped = report.stopped
    assert stopped["reason"] == "decisive" and 2 <= stopped["seeds"] <= 4
    assert [r["seeds"] for r in report.log["rounds"]] == list(range(1, stopped["seeds"] + 1))
    records = ResultsStore(results).records()
    assert len(records) == 2 * stopped["seeds"] == len(report.sweep.ok) and not report.sweep.failed
    assert {r["sweep"]["engine"] for r in records} == {"ray"}
    assert "lr=0.003 beats lr=1e-05" in report.verdict.message and "anytime-valid" in report.verdict.message
    again = run_until_decisive(scored_sweep, max_seeds=4, results_dir=results, engine="ray", progress=False)
    assert again.sweep.ok == [] and again.log == report.log  # resumed: nothing ran, nothing decided twice
