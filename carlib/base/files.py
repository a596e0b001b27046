"""Atomic file writes: readers see the old file or the whole new one, never a part.

Every file carlib writes that another process may read while it is written (run records,
trial backups, submissions, reports, extraction markers) goes through :func:`atomic_path`:
the content is written to a hidden temporary file in the same folder, flushed to disk
(``fsync``) and renamed onto the target, which is atomic on POSIX filesystems. A process killed
midway leaves at most a hidden ``.<name>.*`` file, which readers skip.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "atomic_write_text", "atomic_copy"]


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path next to ``path``; write it inside the block, and it replaces ``path`` when the block ends.

    ``suffix`` is the temporary file's ending, for writers that insist on one (Keras wants
    ``.weights.h5``). The folder is created. If the block raises, the temporary file is removed
    and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    temporary = Path(name)
    try:
        yield temporary
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
