"""Execute one notebook with papermill, then stop its kernel at once (``python -m carlib.studies.notebook_run``).

papermill's command line shuts the kernel down gracefully and waits while the kernel process
tears TensorFlow down (~1 s on 2 cores, measured by ``carlib bench harness``). When the last
cell has finished, carlib has already written the run's record and files, so a sweep trial
stops its kernel at once (nbclient's ``shutdown_kernel="immediate"``), through papermill's
Python API with the options ``carlib sweep`` used to give its command line.

Exit status: 0 when every cell ran, 1 when a cell raised (the executed notebook shows where),
:data:`DEAD_KERNEL_EXIT` when the kernel itself died (killed from outside, or by the
out-of-memory killer): a sweep retries that, not a cell's error. With ``--parent-pid`` the process
dies with the process that started it (Linux), and its kernel follows within a second (ipykernel
watches its parent): a Ray worker that dies mid-trial leaves no orphan training on, even where no
raylet is left to kill the worker's process group.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import papermill
from nbclient.exceptions import DeadKernelError
from papermill.exceptions import PapermillExecutionError

__all__ = ["DEAD_KERNEL_EXIT", "notebook_command", "main"]

DEAD_KERNEL_EXIT = 3
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def notebook_command(notebook: str | Path, output: str | Path, parameters: Mapping[str, Any], *, kernel: str,
                     start_timeout: int, die_with_parent: bool = False) -> list[str]:
    """The command line that executes ``notebook`` into ``output`` with ``parameters`` in this interpreter.

    ``die_with_parent``: the command is killed when the process that builds it (and starts it) dies.
    """
    return [sys.executable, "-m", "carlib.studies.notebook_run", str(notebook), str(output), "--parameters-json",
            json.dumps(dict(parameters)), "--kernel", kernel, "--start-timeout", str(start_timeout),
            *(["--parent-pid", str(os.getpid())] if die_with_parent else [])]


def _die_with(parent_pid: int) -> None:
    """Linux: ask for SIGKILL when the parent dies; exit now if it is already gone (elsewhere: nothing)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # it died before the request took effect
        os._exit(DEAD_KERNEL_EXIT)


def main(argv: Sequence[str] | None = None) -> int:
    """Run papermill on one notebook; exit 1 (with the failing cell's error) when a cell raises."""
    parser = argparse.ArgumentParser(prog="python -m carlib.studies.notebook_run", description=__doc__.split("\n")[0])
    parser.add_argument("notebook")
    parser.add_argument("output")
    parser.add_argument("--parameters-json", default="{}", help="the parameters papermill injects, as JSON")
    parser.add_argument("--kernel", default="python3")
    parser.add_argument("--start-timeout", type=int, default=600, help="seconds the kernel may take to start")
    parser.add_argument("--parent-pid", type=int, default=None, help="die when this process (the caller) dies")
    args = parser.parse_args(argv)
    if args.parent_pid is not None:
        _die_with(args.parent_pid)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    try:
        papermill.execute_notebook(args.notebook, args.output, parameters=json.loads(args.parameters_json),
                                   kernel_name=args.kernel, progress_bar=False, start_timeout=args.start_timeout,
                                   shutdown_kernel="immediate")
    except PapermillExecutionError as err:
        print(f"{err.ename}: {err.evalue} (cell {err.exec_count}; the executed notebook {args.output} shows "
              "the traceback)", file=sys.stderr)
        print("".join(err.traceback) if isinstance(err.traceback, list) else err.traceback, file=sys.stderr)
        return 1
    except DeadKernelError as err:
        print(f"the notebook's kernel died ({err}): it was killed from outside, or by the out-of-memory killer",
              file=sys.stderr)
        return DEAD_KERNEL_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
