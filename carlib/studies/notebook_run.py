"""Execute one notebook with papermill, then stop its kernel at once (``python -m carlib.studies.notebook_run``).

papermill's command line shuts the kernel down gracefully and waits while the kernel process
tears TensorFlow down (~1 s on 2 cores, measured by ``carlib bench harness``). When the last
cell has finished, carlib has already written the run's record and files, so a sweep trial
stops its kernel at once (nbclient's ``shutdown_kernel="immediate"``), through papermill's
Python API with the options ``carlib sweep`` used to give its command line.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import papermill
from papermill.exceptions import PapermillExecutionError

__all__ = ["notebook_command", "main"]


def notebook_command(notebook: str | Path, output: str | Path, parameters: Mapping[str, Any], *, kernel: str,
                     start_timeout: int) -> list[str]:
    """The command line that executes ``notebook`` into ``output`` with ``parameters`` in this interpreter."""
    return [sys.executable, "-m", "carlib.studies.notebook_run", str(notebook), str(output), "--parameters-json",
            json.dumps(dict(parameters)), "--kernel", kernel, "--start-timeout", str(start_timeout)]


def main(argv: Sequence[str] | None = None) -> int:
    """Run papermill on one notebook; exit 1 (with the failing cell's error) when a cell raises."""
    parser = argparse.ArgumentParser(prog="python -m carlib.studies.notebook_run", description=__doc__.split("\n")[0])
    parser.add_argument("notebook")
    parser.add_argument("output")
    parser.add_argument("--parameters-json", default="{}", help="the parameters papermill injects, as JSON")
    parser.add_argument("--kernel", default="python3")
    parser.add_argument("--start-timeout", type=int, default=600, help="seconds the kernel may take to start")
    args = parser.parse_args(argv)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
