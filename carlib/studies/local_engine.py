"""The local engine of ``carlib sweep``: trials as papermill processes of this machine, ``workers`` at a time.

Each worker holds one GPU slot (:func:`carlib.studies.trials.gpu_slots`) while its trial runs: a
free-slot queue, not round-robin by trial. Trials write into the results store directly; sweeps
sharing a store claim each trial while they run it (``claims/<trial_id>.lock``), so two sweeps
never run one trial at once. A trial whose process or kernel dies is retried up to ``retries``
times, resuming from its last finished epoch (:mod:`carlib.train.resume`).
"""

from __future__ import annotations

import concurrent.futures
import os
import queue
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

from carlib.base.locks import try_lock
from carlib.records.store import ResultsStore
from carlib.studies.trials import SweepReport, Trial, finish_trial, run_attempt, trial_records

__all__ = ["run_local", "claim", "finished_trial_ids"]


def finished_trial_ids(store: ResultsStore, study: str) -> set[str]:
    """The trial ids of ``study`` with an ``ok`` record in ``store``."""
    return {r["config"].get("trial_id") for r in store.records(study) if r.get("status") == "ok"}


def claim(store: ResultsStore, trial_id: str):
    """Claim a trial for this sweep (``claims/<trial_id>.lock``): yields True if claimed, False if another
    sweep runs it.

    Sweeps sharing a store (two commands, shards on one filesystem) never run a trial twice at
    once; the lock dies with its holder, so a killed sweep leaves nothing stale behind.
    """
    return try_lock(store.root / "claims" / f"{trial_id}.lock")


def _run_trial(trial: Trial, notebook: Path, store: ResultsStore, kernel: str, slot: Mapping[str, str],
               retries: int) -> tuple[str, int]:
    """Claim and run one trial, retrying a death; returns (outcome, attempts): outcome ``ok``, ``failed``,
    ``done`` (finished meanwhile) or ``busy``."""
    with claim(store, trial.trial_id) as claimed:
        if not claimed:
            return "busy", 0
        if trial.trial_id in finished_trial_ids(store, trial.params["study"]):  # another sweep finished it meanwhile
            return "done", 0
        env = {**os.environ, **slot}
        attempts, first = 0, time.time()
        while True:  # a death is retried (resuming from the trial's backup); a cell's error is not
            attempts += 1
            attempt = run_attempt(trial, notebook, store, kernel=kernel, env=env)
            if attempt.outcome != "died" or attempts > retries:
                break
        records = trial_records(store, trial, since=first)
        outcome = finish_trial(store, trial, attempt, first_started=first, attempts=attempts, engine="local",
                               log=str(store.root / "notebooks" / f"{trial.trial_id}.log"), records=records)
    return outcome, attempts


def run_local(todo: Sequence[Trial], notebook: Path, store: ResultsStore, report: SweepReport, *, kernel: str,
              slots: Sequence[Mapping[str, str]], retries: int,
              on_done: Callable[[str, str], None] = lambda trial_id, outcome: None) -> None:
    """Run ``todo`` with one worker per slot (``slots``: each worker's environment additions); fills ``report``.

    ``on_done(trial_id, outcome)`` is called as each trial ends (the progress bar).
    """
    free: queue.Queue = queue.Queue()
    for slot in slots:
        free.put(slot)

    def run_on_free_slot(trial: Trial) -> tuple[str, str, int]:
        slot = free.get()
        try:
            return (trial.trial_id, *_run_trial(trial, notebook, store, kernel, slot, retries))
        finally:
            free.put(slot)

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(slots)) as pool:
        futures = [pool.submit(run_on_free_slot, trial) for trial in todo]
        for future in concurrent.futures.as_completed(futures):
            trial_id, outcome, attempts = future.result()
            report.add(trial_id, outcome)
            if attempts:
                report.attempts[trial_id] = attempts
            on_done(trial_id, outcome)
