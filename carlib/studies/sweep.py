"""The sweep runner: a study grid × seeds, each trial one papermill execution of a study notebook.

A sweep file (YAML)::

    notebook: notebooks/lr_study.ipynb   # relative to the sweep file's repository, or absolute
    study: lr_study
    base: {epochs: 8, image_size: 64}    # fixed parameters of every trial
    grid: {lr: [1e-3, 3e-3]}             # scientific parameters: every combination runs
    seeds: 2                             # repeats per combination: seed, seed+1, ...

Each trial gets a stable id from its parameters, so a rerun skips trials whose record is
already in the store (``status == "ok"``) and runs only the missing or failed ones; a trial
killed mid-training resumes from its last finished epoch (:mod:`carlib.train.resume`). A failing
trial is recorded as failed, with the error, and the others go on; so is a worker killed from
outside (the error names the signal). Sweeps sharing a store claim each trial while they run
it (``claims/<trial_id>.lock``), so two sweeps never run one trial at once. Trials can run in
parallel workers (one GPU each through ``CUDA_VISIBLE_DEVICES``) or be split into shards so
several machines share one sweep and one results store. Executed notebooks and their logs
are kept in ``<results_dir>/notebooks/<trial_id>.ipynb|.log``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import itertools
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from tqdm.auto import tqdm

from carlib.base.locks import try_lock
from carlib.base.project_files import resolve_project_file
from carlib.config import ExperimentConfig, check_known, default_results_dir, load_yaml_mapping
from carlib.errors import ConfigError
from carlib.records.record import failed_trial_record
from carlib.records.store import ResultsStore
from carlib.studies.notebook_run import notebook_command
from carlib.studies.parameters import STUDY_PARAMETERS

__all__ = ["SweepSpec", "Trial", "SweepReport", "load_sweep", "expand_trials", "run_sweep", "parse_shard",
           "check_kernel"]

_SWEEP_KEYS = ("notebook", "study", "base", "grid", "seeds", "description")
KERNEL_START_TIMEOUT_S = 600


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep file."""

    notebook: Path
    study: str
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    seeds: int = 1
    description: str = ""


@dataclasses.dataclass(frozen=True)
class Trial:
    """One execution: all parameters of the notebook, and an id derived from them."""

    trial_id: str
    params: dict[str, Any]


@dataclasses.dataclass
class SweepReport:
    """What a sweep did: trial ids run (ok or failed), skipped because already finished, and
    left to another sweep that was running them (``busy``: rerun the sweep later to be sure)."""

    ok: list[str] = dataclasses.field(default_factory=list)
    failed: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    busy: list[str] = dataclasses.field(default_factory=list)


def _find_notebook(value: str, sweep_file: Path) -> Path:
    candidate = Path(value).expanduser()
    if candidate.is_absolute():
        return candidate
    # Relative paths are tried from the current directory, then upwards from the sweep file
    # (params/<study>/sweep.yaml names notebooks/<study>.ipynb of the same repository).
    for base in (Path.cwd(), *sweep_file.resolve().parents):
        if (base / candidate).is_file():
            return (base / candidate).resolve()
    return resolve_project_file(candidate)  # notebooks/<study>.ipynb of carlib itself (a wheel carries them)


def load_sweep(path: str | os.PathLike) -> SweepSpec:
    """Read and validate a sweep file: every trial's parameters are checked before anything runs.

    A missing ``params/…`` path is looked up among carlib's own parameter files (:mod:`carlib.base.project_files`).
    """
    path = resolve_project_file(path)
    raw = load_yaml_mapping(path, "sweep file")
    unknown = [k for k in raw if k not in _SWEEP_KEYS]
    if unknown:
        raise ConfigError(f"sweep file {str(path)!r}: unknown key(s) {', '.join(map(repr, unknown))}; "
                          f"allowed: {', '.join(_SWEEP_KEYS)}.")
    for key in ("notebook", "study"):
        if not raw.get(key):
            raise ConfigError(f"sweep file {str(path)!r} needs {key!r}.")
    base, grid = raw.get("base") or {}, raw.get("grid") or {}
    if not isinstance(base, dict) or not isinstance(grid, dict):
        raise ConfigError(f"sweep file {str(path)!r}: 'base' and 'grid' must be mappings of parameter names.")
    grid = {k: list(v) if isinstance(v, (list, tuple)) else [v] for k, v in grid.items()}
    for key, values in grid.items():
        if not values:
            raise ConfigError(f"sweep file {str(path)!r}: grid parameter {key!r} has no values.")
    try:
        seeds = int(raw.get("seeds", 1))
    except (TypeError, ValueError):
        raise ConfigError(f"sweep file {str(path)!r}: seeds={raw.get('seeds')!r} must be an integer >= 1.") from None
    if seeds < 1:
        raise ConfigError(f"sweep file {str(path)!r}: seeds={seeds} must be an integer >= 1.")
    notebook = _find_notebook(str(raw["notebook"]), path)
    if not notebook.is_file():
        raise ConfigError(f"sweep file {str(path)!r}: notebook {str(raw['notebook'])!r} does not exist.")
    spec = SweepSpec(notebook, str(raw["study"]), base, grid, seeds, str(raw.get("description", "")))
    for trial in expand_trials(spec):  # fail on any bad value now, not hours into the sweep
        params = {k: v for k, v in trial.params.items() if k not in ("seeds", "results_dir")}
        ExperimentConfig.from_dict(params)
    return spec


def trial_id_for(study: str, params: dict[str, Any]) -> str:
    """A stable id for a trial: the study and a hash of its parameters (results_dir excluded)."""
    canonical = json.dumps({k: v for k, v in params.items() if k not in ("results_dir", "trial_id")},
                           sort_keys=True, default=str)
    return f"{study}-{hashlib.sha1(canonical.encode()).hexdigest()[:12]}"


def expand_trials(spec: SweepSpec) -> list[Trial]:
    """Every combination of the grid × seeds, in a stable order."""
    check_known({**spec.base, **spec.grid}, STUDY_PARAMETERS)
    base_seed = int(spec.base.get("seed", 0))
    keys = list(spec.grid)
    trials = []
    for values in itertools.product(*(spec.grid[k] for k in keys)):
        for offset in range(spec.seeds):
            params = {**spec.base, **dict(zip(keys, values)), "seed": base_seed + offset, "seeds": 1,
                      "study": spec.study}
            trial_id = trial_id_for(spec.study, params)
            trials.append(Trial(trial_id, {**params, "trial_id": trial_id}))
    return trials


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` (1-based: ``1/2`` and ``2/2``) → (index, count)."""
    if not text:
        return (1, 1)
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ConfigError(f"shard={text!r}: expected i/n with 1 <= i <= n, e.g. 1/2.") from None
    if not 1 <= index <= count:
        raise ConfigError(f"shard={text!r}: expected i/n with 1 <= i <= n, e.g. 1/2.")
    return (index, count)


def check_kernel(kernel: str) -> str:
    """The interpreter the Jupyter kernel ``kernel`` runs; fails before any trial if papermill could not start it.

    ``python3`` resolves as papermill resolves it: the kernel this environment installed (``make install``
    registers the project's own) or, without one, ipykernel's built-in spec, which runs this very interpreter.
    A kernel that runs another interpreter gets a warning: its trials import carlib from that environment.
    """
    manager = KernelSpecManager()
    try:
        spec = manager.get_kernel_spec(kernel)
    except NoSuchKernel:
        known = ", ".join(sorted(manager.find_kernel_specs())) or "none"
        raise ConfigError(f"Jupyter kernel {kernel!r} is not installed (installed kernels: {known}). Pass --kernel with "
                          f"one of them, or register this environment as {kernel!r}: {sys.executable} -m ipykernel "
                          f"install --sys-prefix --name {kernel}") from None
    program = spec.argv[0] if spec.argv else ""
    # jupyter_client starts a kernel whose argv[0] is plain "python", "python3" or "python3.X" with sys.executable.
    if program in {"python", f"python{sys.version_info[0]}", "python%d.%d" % sys.version_info[:2]}:
        return sys.executable
    # Same environment = same bin folder (a venv's python is a symlink to the base interpreter: never resolve the file).
    located = shutil.which(program) or program
    if os.path.realpath(os.path.dirname(located)) != os.path.realpath(os.path.dirname(sys.executable)):
        warnings.warn(f"Jupyter kernel {kernel!r} runs {program}, not this interpreter ({sys.executable}): the trials "
                      f"import carlib and its packages from that environment. To use this one: {sys.executable} -m "
                      f"ipykernel install --sys-prefix --name {kernel}", stacklevel=2)
    return program


def _finished_trial_ids(store: ResultsStore, study: str) -> set[str]:
    return {r["config"].get("trial_id") for r in store.records(study) if r.get("status") == "ok"}


def _claim(store: ResultsStore, trial_id: str):
    """Claim a trial for this sweep (``claims/<trial_id>.lock``): yields True if claimed, False if another
    sweep runs it.

    Sweeps sharing a store (two commands, shards on one filesystem) never run a trial twice at
    once; the lock dies with its holder, so a killed sweep leaves nothing stale behind.
    """
    return try_lock(store.root / "claims" / f"{trial_id}.lock")


def _run_trial(trial: Trial, notebook: Path, store: ResultsStore, kernel: str, gpu: str | None) -> tuple[str, str]:
    """Claim and run one trial; returns (trial_id, "ok" | "failed" | "done" (finished meanwhile) | "busy")."""
    study = trial.params["study"]
    with _claim(store, trial.trial_id) as claimed:
        if not claimed:
            return trial.trial_id, "busy"
        if trial.trial_id in _finished_trial_ids(store, study):  # another sweep finished it since we listed
            return trial.trial_id, "done"
        ok = _execute_trial(trial, notebook, store, kernel, gpu)
    return trial.trial_id, "ok" if ok else "failed"


def _exit_description(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"papermill was killed by {name}"
    return f"papermill exited with {code}"


def _execute_trial(trial: Trial, notebook: Path, store: ResultsStore, kernel: str, gpu: str | None) -> bool:
    """Execute one trial through papermill in a child process; record a failure the notebook could not record.

    A worker killed from outside (``kill``, the OOM killer) gets a failed record naming the
    signal, so the death shows in the results table; the run itself wrote nothing, and a rerun
    of the sweep resumes the trial from its last epoch (see :mod:`carlib.train.resume`).
    """
    out_dir = store.root / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {**trial.params, "results_dir": str(store.root.resolve())}
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    # papermill, with the kernel stopped at once after the last cell (carlib.studies.notebook_run);
    # papermill's 60 s kernel start-up limit is too short on a loaded 2-core machine
    command = notebook_command(notebook, out_dir / f"{trial.trial_id}.ipynb", params, kernel=kernel,
                               start_timeout=KERNEL_START_TIMEOUT_S)
    started = time.time()
    with open(out_dir / f"{trial.trial_id}.log", "w") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    if code == 0:
        return True
    # (finished_at: a resumed run keeps the started_at of its first attempt)
    recorded = any(r["config"].get("trial_id") == trial.trial_id and r.get("status") == "failed"
                   and (r.get("finished_at") or r.get("started_at") or "")
                   >= time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started - 1))
                   for r in store.records(params["study"]))
    if not recorded:
        tail = (out_dir / f"{trial.trial_id}.log").read_text(errors="replace").strip().splitlines()[-15:]
        error = _exit_description(code) + (" (stopped from outside: kill, or the out-of-memory killer); a rerun "
                                           "resumes it from its last finished epoch" if code < 0
                                           else ": " + " | ".join(tail[-3:]))
        store.write(failed_trial_record({k: v for k, v in params.items() if k != "seeds"}, error,
                                        started_at=time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(started)),
                                        log=str(out_dir / f"{trial.trial_id}.log")))
    return False


def run_sweep(sweep: str | os.PathLike | SweepSpec, *, results_dir: str | os.PathLike | None = None,
              workers: int = 1, gpus: Sequence[str] | None = None, shard: str | tuple[int, int] | None = None,
              kernel: str = "python3", progress: bool = True) -> SweepReport:
    """Run every unfinished trial of a sweep (this shard's share), ``workers`` at a time.

    ``gpus`` (e.g. ``["0", "1"]``) pins worker *i* to GPU ``gpus[i % len(gpus)]``. Returns
    which trials ran, failed and were skipped; all results are in the store.
    """
    spec = sweep if isinstance(sweep, SweepSpec) else load_sweep(sweep)
    if workers < 1:
        raise ConfigError(f"workers={workers!r} is out of range: expected an integer >= 1.")
    index, count = shard if isinstance(shard, tuple) else parse_shard(shard)
    store = ResultsStore(results_dir or default_results_dir())
    trials = sorted(expand_trials(spec), key=lambda t: t.trial_id)[index - 1::count]
    done = _finished_trial_ids(store, spec.study)
    report = SweepReport(skipped=[t.trial_id for t in trials if t.trial_id in done])
    todo = [t for t in trials if t.trial_id not in done]
    if todo:
        check_kernel(kernel)  # a missing kernel fails here, not once per trial in the logs

    bar = tqdm(total=len(trials), initial=len(report.skipped), desc=f"sweep {spec.study}", unit="trial",
               disable=not progress)
    # Each worker holds one GPU while its trial runs: a free-slot queue, not round-robin by trial.
    free_gpus: queue.Queue = queue.Queue()
    for i in range(workers):
        free_gpus.put(list(gpus)[i % len(gpus)] if gpus else None)

    def run_on_free_gpu(trial: Trial) -> tuple[str, str]:
        gpu = free_gpus.get()
        try:
            return _run_trial(trial, spec.notebook, store, kernel, gpu)
        finally:
            free_gpus.put(gpu)

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(run_on_free_gpu, trial) for trial in todo]
        for future in concurrent.futures.as_completed(futures):
            trial_id, outcome = future.result()
            outcomes = {"ok": report.ok, "failed": report.failed, "done": report.skipped, "busy": report.busy}
            outcomes[outcome].append(trial_id)
            bar.update(1)
            bar.set_postfix(failed=len(report.failed))
    bar.close()
    return report
