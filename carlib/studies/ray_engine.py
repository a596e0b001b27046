"""The Ray engine of ``carlib sweep`` (``--engine ray``): one Ray task per trial, on this machine or a cluster.

Ray core tasks, not Ray Tune: the results store, resume and statistics stay carlib's. Without an
address the sweep starts a private Ray instance on this machine (its cores and GPUs, reachable
only from here, gone when the sweep ends); ``address="auto"`` or ``"ray://host:port"`` joins a
cluster. Ray is an optional extra (``pip install "carlib[ray]"``), imported only when this engine
runs.

Each task asks Ray for ``gpus_per_trial`` GPUs (default 1 when the cluster has GPUs, else 0), so Ray
sets the task's ``CUDA_VISIBLE_DEVICES`` and no two trials share a GPU unless a fraction asks for
it (then TensorFlow's memory growth is on). The task runs the trial exactly as the local engine
does (:func:`carlib.studies.trials.run_attempt`: papermill in a child process that dies with the
worker), but into a private results folder on the worker, and returns the records, the executed
notebook, its log and the run folders' files to the driver, which writes them into the store: the
only writer, so trials on other machines need no shared file system and no locks across machines.

Faults: a trial whose worker, node or kernel dies is submitted again, up to ``retries`` times
(the driver counts, so the record's ``sweep.attempts`` is exact); a retry on the same machine
resumes from the last finished epoch kept in the private folder. An error inside the trial is
recorded and the others go on. A driver killed with ``kill -9`` takes its tasks with it and leaves
the store as it was: records are written atomically after their files, so a rerun runs only the
trials without an ``ok`` record.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from carlib.base.files import atomic_path
from carlib.errors import ConfigError, DeviceError
from carlib.records.store import ResultsStore
from carlib.studies.local_engine import claim, finished_trial_ids
from carlib.studies.trials import (RESUMES, Attempt, SweepReport, Trial, death_message, finish_trial, run_attempt,
                                   trial_records)

__all__ = ["RAY_MISSING", "import_ray", "ray_session", "trial_folder_key", "run_trial_task", "collect_result",
           "run_ray"]

RAY_MISSING = ('the ray engine needs Ray, an optional extra: pip install "carlib[ray]" '
               '(or leave --engine out: the local engine needs nothing more)')
_RESUMES_ON_RAY = RESUMES + " if it runs on the same machine again"
_TRIAL_FOLDERS = "carlib-trials"


def import_ray():
    """The ``ray`` module, or a :class:`~carlib.errors.ConfigError` saying how to install it."""
    try:
        import ray  # deferred: ray is an optional extra
    except ImportError:
        raise ConfigError(RAY_MISSING) from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None) -> Iterator[Any]:
    """Connect to Ray for the block: the connection this process already has, the cluster at ``address``,
    or a private instance on this machine (shut down when the block ends)."""
    ray = import_ray()
    if ray.is_initialized():  # a caller (a notebook, a test, a benchmark) connected already
        yield ray
        return
    options = {"log_to_driver": False, "logging_level": logging.WARNING if address else logging.ERROR}
    if address:
        try:
            ray.init(address=address, **options)
        except (ConnectionError, ValueError, RuntimeError) as err:
            raise ConfigError(f"--address {address}: cannot join that Ray cluster ({err}). 'auto' joins the "
                              "cluster this machine belongs to (ray start); ray://HOST:10001 a remote one.") from None
    else:  # "local": a new instance of this sweep's own, even where another one runs. Its workers, and so the
        # trials, run at normal priority as the local engine's do (Ray's default niceness for workers is 15)
        ray.init(address="local", include_dashboard=False, _system_config={"worker_niceness": 0}, **options)
    try:
        yield ray
    finally:
        ray.shutdown()


def trial_folder_key(store: ResultsStore, trial_id: str) -> str:
    """The name of a trial's private folder on a worker: the same for every attempt of one sweep's trial
    (a retry on that machine resumes there), different for another store or another driver machine."""
    identity = f"{socket.gethostname()}|{store.root.resolve()}|{trial_id}"
    return f"{trial_id}-{hashlib.sha1(identity.encode()).hexdigest()[:10]}"


def _files_under(folder: Path, root: Path) -> dict[str, bytes]:
    if not folder.is_dir():
        return {}
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def run_trial_task(job: dict[str, Any], notebook: bytes) -> dict[str, Any]:
    """One Ray task (runs on a worker): execute a trial into a private folder, return what the store needs.

    ``job``: ``trial_id``, ``params``, ``notebook_name``, ``kernel``, ``env`` (additions to the worker's
    environment) and ``key`` (:func:`trial_folder_key`). Returns ``outcome`` and ``error`` (as
    :class:`~carlib.studies.trials.Attempt`), ``records``, ``files`` (``{path in the store: bytes}``: the
    run folders, the executed notebook and its log), ``root`` (the private folder, for the driver to
    rewrite paths) and ``node`` (the Ray node it ran on). The folder is removed unless the attempt died:
    a retry on this machine resumes from the backup in it.
    """
    root = Path(tempfile.gettempdir()) / _TRIAL_FOLDERS / job["key"]
    store = ResultsStore(root)
    trial = Trial(job["trial_id"], job["params"])
    env = {**os.environ, **job["env"]}
    if any(r.get("status") == "ok" for r in trial_records(store, trial)):
        attempt = Attempt("ok", None, time.time())  # finished by an attempt whose result never reached the driver
    else:
        path = root / "input" / job["notebook_name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(notebook)
        attempt = run_attempt(trial, path, store, kernel=job["kernel"], env=env, die_with_parent=True,
                              resumes=_RESUMES_ON_RAY)
    records = trial_records(store, trial)
    files: dict[str, bytes] = {}
    for record in records:
        files.update(_files_under(store.runs_dir / record["run_id"], root))
    for suffix in (".ipynb", ".log"):
        path = root / "notebooks" / f"{trial.trial_id}{suffix}"
        if path.is_file():
            files[path.relative_to(root).as_posix()] = path.read_bytes()
    import ray  # deferred: ray is an optional extra (this runs inside a Ray worker, where it is loaded)

    result = {"outcome": attempt.outcome, "error": attempt.error, "started": attempt.started, "records": records,
              "files": files, "root": str(root.resolve()), "node": ray.get_runtime_context().get_node_id()}
    if attempt.outcome != "died":
        shutil.rmtree(root, ignore_errors=True)
    return result


def _moved(value: Any, old: str, new: str) -> Any:
    """``value`` with the prefix ``old`` of every path string in it replaced by ``new``."""
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, dict):
        return {k: _moved(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_moved(v, old, new) for v in value]
    return value


def collect_result(result: dict[str, Any], trial: Trial, store: ResultsStore, *, attempts: int,
                   first_started: float) -> str:
    """Write a task's result into ``store`` (files first, then the records, each atomically); ``ok`` or ``failed``.

    Paths inside the records, the executed notebook and the log name the worker's private folder;
    they are rewritten to the store's. The records' ``sweep`` section says the Ray node and that folder.
    """
    old, new = result["root"], str(store.root.resolve())
    for name, data in result["files"].items():
        parts = Path(name).parts
        if Path(name).is_absolute() or ".." in parts or parts[0] not in ("runs", "notebooks"):
            raise ValueError(f"a Ray task returned a file outside the results store: {name!r}")
        if parts[0] == "notebooks":  # text that names the private folder
            data = data.replace(old.encode(), new.encode())
        with atomic_path(store.root / name) as temporary:
            temporary.write_bytes(data)
    records = [_moved(r, old, new) for r in result["records"]]
    attempt = Attempt(result["outcome"], result["error"], result["started"])
    return finish_trial(store, trial, attempt, first_started=first_started, attempts=attempts, engine="ray",
                        log=str(store.root / "notebooks" / f"{trial.trial_id}.log"), records=records,
                        where={"node": result["node"], "worker_results_dir": old} if "node" in result else None)


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[0] if lines else type(err).__name__)[:300]


def _gpu_share(ray, gpus_per_trial: float | None) -> float:
    """GPUs per task: the caller's, or 1 when the cluster has GPUs and 0 when not; checked against the nodes."""
    per_node = [node["Resources"].get("GPU", 0) for node in ray.nodes() if node.get("Alive")]
    share = gpus_per_trial if gpus_per_trial is not None else (1.0 if any(per_node) else 0.0)
    if share < 0 or (share > 1 and share != int(share)):
        raise ConfigError(f"gpus_per_trial={share!r} is out of range: expected 0 (CPU only), a fraction such as "
                          "0.5 (two trials share a GPU) or a whole number of GPUs per trial.")
    if share > max(per_node, default=0):
        raise DeviceError(f"gpus_per_trial={share:g} but no node of the Ray cluster has that many GPUs "
                          f"(GPUs per node: {per_node}); the trials would wait forever.")
    return share


def run_ray(todo: Sequence[Trial], notebook: Path, store: ResultsStore, report: SweepReport, *, kernel: str,
            address: str | None, workers: int | None, gpus_per_trial: float | None, cpus_per_trial: float,
            retries: int, on_done: Callable[[str, str], None] = lambda trial_id, outcome: None) -> None:
    """Run ``todo`` as Ray tasks, at most ``workers`` at once (None: as many as the cluster has room for).

    Fills ``report`` and calls ``on_done(trial_id, outcome)`` as each trial ends (the progress bar).
    """
    with ray_session(address) as ray, contextlib.ExitStack() as held:
        share = _gpu_share(ray, gpus_per_trial)
        env = {"TF_FORCE_GPU_ALLOW_GROWTH": "true"} if 0 < share < 1 else {}
        if share == 0 and ray.cluster_resources().get("GPU", 0):
            env["CUDA_VISIBLE_DEVICES"] = ""  # Ray leaves a task without GPUs every GPU of its node: hide them
        # max_retries=0: the driver retries itself and counts the attempts; max_calls=0: a worker runs trial after
        # trial (Ray's default for GPU tasks starts a new worker each time, to free GPU memory that only the
        # trial's own child process ever holds here)
        task = ray.remote(num_cpus=cpus_per_trial, num_gpus=share, max_retries=0, max_calls=0)(run_trial_task)
        notebook_ref = ray.put(notebook.read_bytes())
        waiting = collections.deque(todo)
        running: dict[Any, tuple[Trial, int, float]] = {}  # task -> (trial, its attempt, when its first began)
        claims: dict[str, contextlib.ExitStack] = {}
        limit = workers or max(len(todo), 1)

        def submit(trial: Trial, attempt: int, first_started: float) -> None:
            job = {"trial_id": trial.trial_id, "params": trial.params, "notebook_name": notebook.name,
                   "kernel": kernel, "env": env, "key": trial_folder_key(store, trial.trial_id)}
            ref = task.options(name=f"carlib-trial-{trial.trial_id}").remote(job, notebook_ref)
            running[ref] = (trial, attempt, first_started)

        def end(trial_id: str, outcome: str) -> None:
            report.add(trial_id, outcome)
            on_done(trial_id, outcome)

        def start_more() -> None:
            while waiting and len(running) < limit:
                trial = waiting.popleft()
                stack = held.enter_context(contextlib.ExitStack())
                if not stack.enter_context(claim(store, trial.trial_id)):  # another sweep on this store runs it
                    stack.close()
                    end(trial.trial_id, "busy")
                elif trial.trial_id in finished_trial_ids(store, trial.params["study"]):  # finished meanwhile
                    stack.close()
                    end(trial.trial_id, "done")
                else:
                    claims[trial.trial_id] = stack
                    submit(trial, 1, time.time())

        start_more()
        while running:
            (ref,), _ = ray.wait(list(running), num_returns=1)
            trial, attempt, first_started = running.pop(ref)
            try:
                result = ray.get(ref)
            except (ray.exceptions.RayTaskError, ray.exceptions.TaskCancelledError) as err:
                # carlib's task code raised, or the task was cancelled: not a death, so not retried
                result = {"outcome": "failed", "error": f"the Ray task failed: {_first_line(err)}"}
            except ray.exceptions.RayError as err:  # its worker or node died (killed, out of memory, machine lost)
                result = {"outcome": "died", "error": death_message(
                    f"the Ray worker running it died ({type(err).__name__}: {_first_line(err)})", _RESUMES_ON_RAY)}
            if result["outcome"] == "died" and attempt <= retries:
                submit(trial, attempt + 1, first_started)
                continue
            result = {"started": first_started, "records": [], "files": {}, "root": str(store.root.resolve()),
                      **result}
            outcome = collect_result(result, trial, store, attempts=attempt, first_started=first_started)
            claims.pop(trial.trial_id).close()
            report.attempts[trial.trial_id] = attempt
            end(trial.trial_id, outcome)
            start_more()
