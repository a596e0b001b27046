"""Inter-process file locks that die with their holder: one process per trial, one sweep per trial.

``fcntl.flock`` locks belong to an open file, and the operating system drops them when the
process ends — ``kill -9`` included — so a crashed run or sweep never leaves a stale lock.
(No TensorFlow here: ``carlib results`` stays fast.)
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Iterator

from carlib.errors import TrialBusyError

try:
    import fcntl
except ImportError:  # Windows: no flock; nothing is serialised there
    fcntl = None

__all__ = ["TrialBusyError", "try_lock", "exclusive_lock", "trial_lock", "TRIAL_LOCK_WAIT_S"]

# A killed papermill's kernel notices its parent is gone within a second (ipykernel's parent
# poller) and exits: a rerun waits that long for the orphan's lock before giving up.
TRIAL_LOCK_WAIT_S = 5.0


@contextlib.contextmanager
def try_lock(path: str | os.PathLike, *, wait_s: float = 0.0) -> Iterator[bool]:
    """Hold an exclusive lock on ``path`` inside; yields False when another process holds it (after ``wait_s``).

    On systems without ``fcntl`` (Windows) it always yields True: nothing is serialised.
    """
    if fcntl is None:
        yield True
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    with open(path, "a+") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.2)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` inside, waiting as long as another process holds it.

    On systems without ``fcntl`` (Windows) nothing is serialised.
    """
    if fcntl is None:
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def trial_lock(results_dir: str | os.PathLike, trial_id: str) -> Iterator[None]:
    """Hold ``<results_dir>/backups/<trial_id>.lock`` while a trial runs.

    Raises :class:`TrialBusyError` when another process holds it (after :data:`TRIAL_LOCK_WAIT_S`).
    """
    path = Path(results_dir) / "backups" / f"{trial_id}.lock"
    with try_lock(path, wait_s=TRIAL_LOCK_WAIT_S) as locked:
        if not locked:
            raise TrialBusyError(f"trial {trial_id!r} is already running in another process (it holds {str(path)!r}); "
                                 "wait for it to finish, or stop it first.")
        yield
