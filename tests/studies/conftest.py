"""Tiny sweeps for the engines' tests: a two-cell study notebook, and sweep files over the tiny dataset."""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest
import yaml

# The smallest study notebook: the parameters, then one study run (the project's notebooks also plot and explain).
TRIAL_NOTEBOOK = {
    "cells": [
        {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "execution_count": None, "outputs": [],
         "source": "study = 'lr_study'\nresults_dir = None\nseeds = 1"},
        {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
         "source": "import carlib\nrecords = carlib.run_study(**carlib.notebook_parameters(globals()))"},
    ],
    "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    "nbformat": 4, "nbformat_minor": 5,
}


def _notebook(*cells: str) -> dict:
    """A notebook with a parameters cell and ``cells``, which record a run without training (the engines' paths in
    seconds, where a test is about the engine, not the run)."""
    parameters = "study = 'lr_study'\nresults_dir = None\ntrial_id = None\nlr = 1e-3"
    return {**TRIAL_NOTEBOOK, "cells": [
        {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "execution_count": None, "outputs": [],
         "source": parameters},
        *({"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [], "source": c} for c in cells)]}


_RECORD_A_RUN = """import time
from carlib.records.record import new_record, new_run_id, utc_now
from carlib.records.store import ResultsStore
store, started = ResultsStore(results_dir), utc_now()
time.sleep(2)
run_id = new_run_id(study)
run_dir = store.run_dir(run_id)
(run_dir / 'history.csv').write_text('epoch,loss\\n0,1.0\\n')
store.write(new_record(run_id=run_id, study=study, config={'trial_id': trial_id, 'lr': lr, 'results_dir': results_dir},
                       started_at=started, status='ok', metrics={}, run_dir=str(run_dir), finished_at=utc_now()))"""

# Its kernel dies in its first attempt (as the out-of-memory killer would end it); a marker in results_dir remembers.
_DIE_THE_FIRST_TIME = """import os, pathlib, signal
marker = pathlib.Path(results_dir) / 'attempted'
if not marker.exists():
    marker.write_text('once')
    os.kill(os.getpid(), signal.SIGKILL)"""


@pytest.fixture
def quick_notebook(tmp_path) -> Path:
    """A notebook that records a run with one file in its run folder after 2 s, without training."""
    path = tmp_path / "quick.ipynb"
    path.write_text(json.dumps(_notebook(_RECORD_A_RUN)))
    return path


@pytest.fixture
def dying_notebook(tmp_path) -> Path:
    """A notebook whose kernel kills itself in its first attempt, then (retried) records a run without training."""
    path = tmp_path / "dying.ipynb"
    path.write_text(json.dumps(_notebook(_DIE_THE_FIRST_TIME, _RECORD_A_RUN)))
    return path


@pytest.fixture
def write_sweep(tmp_path, tiny_data_dir):
    """``write_sweep(grid=..., seeds=..., notebook=..., **base)``: a sweep file of tiny trials (16 px, 1 epoch)."""

    def write(grid=None, seeds=1, notebook=None, name="sweep.yaml", **base) -> Path:
        if notebook is None:
            notebook = tmp_path / "trial.ipynb"
            notebook.write_text(json.dumps(TRIAL_NOTEBOOK))
        spec = {"notebook": str(notebook), "study": "lr_study",
                "base": {"data_dir": str(tiny_data_dir), "image_size": 16, "epochs": 1, "val_split": 0.25,
                         "augmentation": "none", "batch_size": 16, **base},
                "grid": grid or {"lr": [1e-3, 3e-3]}, "seeds": seeds}
        path = tmp_path / name
        path.write_text(yaml.safe_dump(spec))
        return path

    return write


class TrialProcesses:
    """Finds a trial's processes under a process: its papermill process, and the kernel that trains."""

    @staticmethod
    def papermill(root: psutil.Process, trial_id: str) -> list[psutil.Process]:
        """The papermill processes (``carlib.studies.notebook_run``) under ``root`` that execute ``trial_id``."""
        found = []
        for process in root.children(recursive=True):
            try:
                command = process.cmdline()
            except psutil.Error:
                continue
            if "carlib.studies.notebook_run" in command and any(a.endswith(f"{trial_id}.ipynb") for a in command):
                found.append(process)
        return found

    @staticmethod
    def kernel(papermill: psutil.Process) -> psutil.Process | None:
        """The Jupyter kernel a papermill process started (None before it has started)."""
        try:
            return next((c for c in papermill.children() if "ipykernel_launcher" in " ".join(c.cmdline())), None)
        except psutil.Error:
            return None


@pytest.fixture
def processes() -> TrialProcesses:
    """Finds the processes of a running trial (to kill them)."""
    return TrialProcesses()


# A trial that records a test accuracy without training: lr=0.003 is ~0.2 better; the seed moves both a little.
_RECORD = """import time
from carlib.records.record import new_record, new_run_id, utc_now
from carlib.records.store import ResultsStore
store, started = ResultsStore(results_dir), utc_now()
run_id = new_run_id(study)
accuracy = (0.7 if lr > 0.002 else 0.5) + (0.013 * seed) % 0.05 + (0.007 * seed * (lr > 0.002)) % 0.02
store.write(new_record(run_id=run_id, study=study, config={'trial_id': trial_id, 'lr': lr, 'seed': seed, 'schedule': 'cosine',
                       'results_dir': results_dir}, started_at=started, status='ok',
                       metrics={'test_accuracy_best': accuracy}, run_dir=str(store.run_dir(run_id)),
                       finished_at=utc_now()))"""


@pytest.fixture
def scored_sweep(tmp_path, write_sweep):
    """A sweep of 2 learning rates whose trials record a test accuracy without training (lr=0.003 ~0.2 better)."""
    notebook = tmp_path / "scored.ipynb"
    parameters = "study = 'lr_study'\nresults_dir = None\ntrial_id = None\nlr = 1e-3\nseed = 0"
    notebook.write_text(json.dumps({
        "cells": [{"cell_type": "code", "metadata": {"tags": ["parameters"]}, "execution_count": None,
                   "outputs": [], "source": parameters},
                  {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [], "source": _RECORD}],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5}))
    return write_sweep(notebook=notebook, grid={"lr": [1e-5, 3e-3]}, seeds=2)
