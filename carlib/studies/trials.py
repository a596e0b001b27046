"""One sweep trial and one attempt at it, shared by the sweep's engines (local processes, Ray).

A :class:`Trial` is one execution of a study notebook: every parameter, and an id derived from
them. :func:`run_attempt` executes it once through papermill in a child process (the same command
on every engine, :func:`carlib.studies.notebook_run.notebook_command`) into a results store, and
says how it ended: ``ok``, ``failed`` (a cell raised: recorded, never retried) or ``died`` (the
process or its kernel was killed from outside, or by the out-of-memory killer: retried up to
``retries`` times, and a retry resumes from the trial's last finished epoch).
:func:`finish_trial` gives the trial's records the ``sweep`` section (engine, attempts) and writes
the failed record of a trial that could not write its own. :func:`gpu_slots` decides which GPUs
each local worker's trials see.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from carlib.errors import ConfigError, DeviceError
from carlib.records.record import failed_trial_record
from carlib.records.store import ResultsStore
from carlib.studies.notebook_run import DEAD_KERNEL_EXIT, notebook_command

__all__ = ["Trial", "SweepReport", "Attempt", "KERNEL_START_TIMEOUT_S", "run_attempt", "trial_records",
           "finish_trial", "gpu_slots", "death_message", "RESUMES"]

KERNEL_START_TIMEOUT_S = 600
_OUTSIDE = "stopped from outside: kill, or the out-of-memory killer"
RESUMES = "a rerun resumes it from its last finished epoch"


@dataclasses.dataclass(frozen=True)
class Trial:
    """One execution: all parameters of the notebook, and an id derived from them."""

    trial_id: str
    params: dict[str, Any]


@dataclasses.dataclass
class SweepReport:
    """What a sweep did: trial ids run (ok or failed), skipped because already finished, and
    left to another sweep that was running them (``busy``: rerun the sweep later to be sure).

    ``trials`` is this shard's share of the sweep (what a dry run lists); ``attempts`` says how
    many attempts each trial that ran took (more than 1: its process died and it was retried).
    """

    ok: list[str] = dataclasses.field(default_factory=list)
    failed: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    busy: list[str] = dataclasses.field(default_factory=list)
    trials: list[Trial] = dataclasses.field(default_factory=list)
    attempts: dict[str, int] = dataclasses.field(default_factory=dict)

    def add(self, trial_id: str, outcome: str) -> None:
        """File a trial under ``ok``, ``failed``, ``skipped`` (``done``: finished meanwhile) or ``busy``."""
        {"ok": self.ok, "failed": self.failed, "done": self.skipped, "busy": self.busy}[outcome].append(trial_id)


@dataclasses.dataclass(frozen=True)
class Attempt:
    """How one attempt at a trial ended: ``ok``, ``failed`` or ``died``; ``error`` says why when not ok."""

    outcome: str
    error: str | None
    started: float  # time.time() when the attempt started

    @property
    def started_at(self) -> str:
        """When it started, in UTC (ISO 8601), as records say it."""
        return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(self.started))


def _since(started: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started - 1))


def trial_records(store: ResultsStore, trial: Trial, since: float | None = None) -> list[dict[str, Any]]:
    """The records of ``trial`` in ``store``, only those finished after ``since`` (``time.time()``) if given.

    (A resumed run keeps the ``started_at`` of its first attempt, so its ``finished_at`` decides.)
    """
    after = _since(since) if since is not None else ""
    return [r for r in store.records(trial.params.get("study")) if r["config"].get("trial_id") == trial.trial_id
            and (r.get("finished_at") or r.get("started_at") or "") >= after]


def death_message(what: str, resumes: str = RESUMES) -> str:
    """The error of a trial whose process died: what died, why it may have, and what a rerun does."""
    return f"{what} ({_OUTSIDE}); {resumes}"


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def run_attempt(trial: Trial, notebook: Path, store: ResultsStore, *, kernel: str, env: Mapping[str, str],
                die_with_parent: bool = False, resumes: str = RESUMES) -> Attempt:
    """Execute ``trial`` once through papermill in a child process, writing into ``store``.

    The executed notebook and its log go to ``<store>/notebooks/<trial_id>.ipynb|.log``; the run
    writes its record and files into the store itself. ``env`` is the child's whole environment
    (``CUDA_VISIBLE_DEVICES`` chooses its GPUs). ``die_with_parent``: the child is killed when this
    process dies (a Ray worker's trials must not outlive it). ``resumes`` says in a death's error what a
    rerun does.
    """
    out_dir = store.root / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {**trial.params, "results_dir": str(store.root.resolve())}
    # papermill, with the kernel stopped at once after the last cell (carlib.studies.notebook_run);
    # papermill's 60 s kernel start-up limit is too short on a loaded 2-core machine
    command = notebook_command(notebook, out_dir / f"{trial.trial_id}.ipynb", params, kernel=kernel,
                               start_timeout=KERNEL_START_TIMEOUT_S, die_with_parent=die_with_parent)
    started = time.time()
    log_path = out_dir / f"{trial.trial_id}.log"
    with open(log_path, "w") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=dict(env)).returncode
    if code == 0 or any(r.get("status") == "ok" for r in trial_records(store, trial, since=started)):
        return Attempt("ok", None, started)
    if code < 0:
        return Attempt("died", death_message(f"papermill was killed by {_signal_name(code)}", resumes), started)
    if code == DEAD_KERNEL_EXIT:
        return Attempt("died", death_message("the notebook's kernel died", resumes), started)
    tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
    return Attempt("failed", f"papermill exited with {code}: " + " | ".join(tail), started)


def finish_trial(store: ResultsStore, trial: Trial, attempt: Attempt, *, first_started: float, attempts: int,
                 engine: str, log: str | None = None, records: Sequence[dict[str, Any]] | None = None,
                 where: Mapping[str, Any] | None = None) -> str:
    """Write what the trial's attempts leave behind; returns ``"ok"`` or ``"failed"``.

    Its records (``records``, or those in ``store`` since ``first_started``) get a ``sweep`` section
    (``engine``, ``attempts``, and ``where`` the engine ran it); a trial that wrote no record (its process
    died, or papermill could not run it) gets a failed one with the error, so every trial that ran shows
    in the results table.
    """
    sweep = {"engine": engine, "attempts": attempts, **(where or {})}
    found = list(records) if records is not None else trial_records(store, trial, since=first_started)
    for record in found:
        store.write({**record, "sweep": sweep})
    if not found and attempt.outcome != "ok":
        params = {k: v for k, v in trial.params.items() if k != "seeds"}
        params["results_dir"] = str(store.root.resolve())
        store.write(failed_trial_record(params, attempt.error or "the trial wrote no record",
                                        started_at=time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(first_started)),
                                        log=log, sweep=sweep))
    return "ok" if attempt.outcome == "ok" else "failed"


def gpu_slots(workers: int, *, gpus: Sequence[str] | None, gpus_per_trial: float | None,
              machine_gpus: Sequence[str]) -> list[dict[str, str]]:
    """The environment variables of each local worker's trials: which GPUs it sees, and whether it shares them.

    ``gpus`` (``--gpus``) or else the GPUs the machine has are shared out ``gpus_per_trial`` each
    (default: 1, and with one worker and no ``--gpus`` the trial sees every GPU, as one process
    would). A fraction puts ``1 / gpus_per_trial`` trials on each GPU, with TensorFlow's memory
    growth on so that none grabs the whole GPU; 0 runs the trials on the CPU. More workers than
    the GPUs allow is refused: several TensorFlow processes that each take a whole GPU fail with
    out-of-memory errors.
    """
    devices = list(gpus) if gpus else list(machine_gpus)
    if gpus_per_trial is not None and (not math.isfinite(gpus_per_trial) or gpus_per_trial < 0
                                       or (gpus_per_trial > 1 and gpus_per_trial != int(gpus_per_trial))):
        raise ConfigError(f"gpus_per_trial={gpus_per_trial!r} is out of range: expected 0 (CPU only), a fraction "
                          "such as 0.5 (two trials share a GPU) or a whole number of GPUs per trial.")
    if gpus_per_trial == 0:
        if gpus:
            raise ConfigError("--gpus names GPUs but --gpus-per-trial 0 runs every trial on the CPU; drop one of them.")
        return [{"CUDA_VISIBLE_DEVICES": ""}] * workers if devices else [{}] * workers
    if not devices:
        if gpus_per_trial:
            raise DeviceError(f"gpus_per_trial={gpus_per_trial:g} but this machine has no GPU (CUDA_VISIBLE_DEVICES "
                              "and nvidia-smi show none); leave --gpus-per-trial out to train on the CPU.")
        return [{}] * workers
    if gpus_per_trial is None and workers == 1 and not gpus:
        return [{}]  # one trial at a time sees every GPU (a mirrored strategy may use them all)
    share = gpus_per_trial or 1
    if share >= 1:
        per = int(share)
        if per > len(devices):
            raise DeviceError(f"gpus_per_trial={per} but only {len(devices)} GPU(s) ({','.join(devices)}) are there.")
        slots = [{"CUDA_VISIBLE_DEVICES": ",".join(devices[i:i + per])}
                 for i in range(0, len(devices) - per + 1, per)]
    else:
        per_gpu = int(1 / share + 1e-9)
        slots = [{"CUDA_VISIBLE_DEVICES": d, "TF_FORCE_GPU_ALLOW_GROWTH": "true"} for _ in range(per_gpu)
                 for d in devices]
    if workers > len(slots):
        raise ConfigError(
            f"{workers} workers but {len(devices)} GPU(s) ({','.join(devices)}) at {share:g} GPU per trial: "
            f"room for {len(slots)} trial(s) at once; more would each grab a whole GPU that another trial is using. "
            f"Use --workers {len(slots)}, or share GPUs deliberately with --gpus-per-trial 0.5 (two trials per GPU, "
            "memory growth on), or --gpus-per-trial 0 to train on the CPU.")
    return slots[:workers]
