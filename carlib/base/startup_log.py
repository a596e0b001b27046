"""TensorFlow's start-up lines, filtered by ``TF_CPP_MIN_LOG_LEVEL`` as TensorFlow itself would.

Importing TensorFlow 2.21 prints C++ INFO lines before its logging is initialised, and
``TF_CPP_MIN_LOG_LEVEL`` does not reach them (measured: docs/NOTES.md)::

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 00:00:1795912965.219784   19068 port.cc:153] oneDNN custom operations are on. ...
    I0000 00:00:1795912965.224051   19068 cudart_stub.cc:31] Could not find cuda drivers on your machine, ...

They are written straight to file descriptor 2, so in a notebook they land as a red stderr
block in the first cell that imports TensorFlow. ``import carlib`` therefore catches file
descriptor 2 while TensorFlow is imported for the first time and writes back every line except
log lines below the level ``TF_CPP_MIN_LOG_LEVEL`` asks for (0: all, 1: no INFO, 2: no WARNING,
3: no ERROR: TensorFlow's own levels); anything else (Python warnings, a failed import, a
fatal message) comes through unchanged.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile
from typing import Iterator

__all__ = ["filter_startup_lines", "min_log_level", "filter_import_output", "filter_tensorflow_startup_lines"]

# absl's log line: severity letter, MMDD hh:mm:ss.micros, thread id, file:line]. Before InitializeLog the date is
# 0000 and the seconds are the Unix time: "I0000 00:00:1795912965.219784   19068 port.cc:153] ".
_LOG_LINE = re.compile(r"^([IWE])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\] ")
_SEVERITY = {"I": 0, "W": 1, "E": 2}
_BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


def min_log_level() -> int:
    """The level ``TF_CPP_MIN_LOG_LEVEL`` asks for (0 when unset or not a number, as TensorFlow reads it)."""
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


def filter_startup_lines(text: str, level: int) -> str:
    """``text`` without the log lines below ``level`` (0 INFO, 1 WARNING, 2 ERROR), and without absl's
    "before absl::InitializeLog()" banner once no log line is left for it to introduce."""
    kept = [line for line in text.splitlines(keepends=True)
            if not ((match := _LOG_LINE.match(line)) and _SEVERITY[match.group(1)] < level)]
    if not any(_LOG_LINE.match(line) for line in kept):
        kept = [line for line in kept if line.rstrip("\r\n") != _BANNER]
    return "".join(kept)


@contextlib.contextmanager
def _filtered_stderr_fd(level: int) -> Iterator[None]:
    """Catch what is written to file descriptor 2 (C++ included), then write back what the filter keeps."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable descriptor 2 (e.g. a GUI interpreter): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                sys.stderr.flush()  # Python's own writes to descriptor 2 belong to the caught text
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            kept = filter_startup_lines(caught.read().decode(errors="replace"), level)
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


class _ImportOutputFilter(importlib.abc.MetaPathFinder):
    """Finds nothing itself: it wraps the first execution of one top-level module in :func:`_filtered_stderr_fd`."""

    def __init__(self, module: str):
        self.module = module

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.module:
            return None
        sys.meta_path.remove(self)  # once: later imports (and this lookup below) take the normal path
        spec = importlib.util.find_spec(fullname)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        execute = loader.exec_module

        def exec_module(module):
            try:
                with _filtered_stderr_fd(min_log_level()):
                    execute(module)
            finally:
                vars(loader).pop("exec_module", None)  # the loader is the module's __loader__: leave it as it was

        loader.exec_module = exec_module
        return spec


def filter_import_output(module: str) -> None:
    """Filter what the first import of top-level ``module`` writes to stderr (see :func:`filter_startup_lines`).

    Does nothing if ``module`` is already imported or ``TF_CPP_MIN_LOG_LEVEL`` keeps every line (0).
    """
    if module in sys.modules or min_log_level() <= 0:
        return
    if not any(isinstance(f, _ImportOutputFilter) and f.module == module for f in sys.meta_path):
        sys.meta_path.insert(0, _ImportOutputFilter(module))


def filter_tensorflow_startup_lines() -> None:
    """Keep TensorFlow's pre-initialisation C++ log lines out of stderr as ``TF_CPP_MIN_LOG_LEVEL`` asks."""
    filter_import_output("tensorflow")
