"""Atomic file writes: readers see the old file or the whole new one, never a part.

Every file carlib writes that another process may read while it is written (run records,
trial backups, submissions, reports, extraction markers) goes through :func:`atomic_path`:
the content is written to a hidden temporary file in the same folder, flushed to disk
(``fsync``) and renamed onto the target, which is atomic on POSIX filesystems. A process killed
midway leaves at most a hidden ``.<name>.*`` file, which readers skip.

The finished file gets the mode any ``open()`` would give it, ``0666 & ~umask`` (``mkstemp``
alone makes it 0600): under umask 0002 a group-shared results store stays readable and writable
by the group (docs/sweeps.md), and nothing is ever world-writable unless the umask says so.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "atomic_write_text", "atomic_copy", "current_umask", "new_file_mode", "new_folder_mode"]

_UMASK_FALLBACK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it (``Umask:`` of /proc/self/status, Linux 4.7+).

    Elsewhere the classic set-and-restore is the only way; ``os.umask`` is process-wide, so it runs
    under a lock (another thread creating a file in that instant would still see umask 0o077).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_FALLBACK_LOCK:
        umask = os.umask(0o077)
        os.umask(umask)
    return umask


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file: ``0o666`` less the umask."""
    return 0o666 & ~current_umask()


def new_folder_mode() -> int:
    """The mode ``mkdir`` gives a new folder: ``0o777`` less the umask."""
    return 0o777 & ~current_umask()


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path next to ``path``; write it inside the block, and it replaces ``path`` when the block ends.

    ``suffix`` is the temporary file's ending, for writers that insist on one (Keras wants
    ``.weights.h5``). The folder is created. The new file's mode is :func:`new_file_mode`, as if
    ``open()`` had created it. If the block raises, the temporary file is removed and ``path`` is
    left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    temporary = Path(name)
    try:
        yield temporary
        # After the writer: one that deleted and re-created the temporary file gets the same mode.
        os.chmod(temporary, new_file_mode())
        _fsync(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str, *, newline: str | None = None) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`); returns the path."""
    with atomic_path(path) as temporary:
        with open(temporary, "w", encoding="utf-8", newline=newline) as handle:
            handle.write(text)
    return Path(path)


def atomic_copy(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Copy ``source`` to ``target`` atomically (see :func:`atomic_path`); returns the target."""
    with atomic_path(target) as temporary:
        shutil.copyfile(source, temporary)
    return Path(target)
