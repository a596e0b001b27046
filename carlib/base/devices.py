"""Which GPUs this machine offers, found without importing TensorFlow (a sweep decides before any trial starts).

``CUDA_VISIBLE_DEVICES`` wins when it is set (a scheduler such as Slurm, or the user, chose the
GPUs); otherwise ``nvidia-smi -L`` lists them. A machine without NVIDIA's driver has none.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Callable, Mapping

__all__ = ["visible_gpus", "parse_visible_devices"]


def parse_visible_devices(value: str) -> list[str]:
    """The GPU ids of a ``CUDA_VISIBLE_DEVICES`` value (``"0,2"`` → ``["0", "2"]``; ``""`` or ``"-1"`` → none).

    CUDA stops at the first invalid entry, and so does this (``"0,-1,1"`` → ``["0"]``).
    """
    ids = []
    for part in value.split(","):
        part = part.strip()
        if not part or part.startswith("-"):
            break
        ids.append(part)
    return ids


def visible_gpus(environ: Mapping[str, str] | None = None,
                 run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> list[str]:
    """The ids of the GPUs a process started from here would see: ``CUDA_VISIBLE_DEVICES``, else ``nvidia-smi -L``.

    ``environ`` and ``run`` stand in for ``os.environ`` and ``subprocess.run`` (tests pretend a machine).
    """
    environ = os.environ if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" in environ:
        return parse_visible_devices(environ["CUDA_VISIBLE_DEVICES"])
    if run is subprocess.run and shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    if listing.returncode != 0:
        return []
    return re.findall(r"^GPU (\d+):", listing.stdout, re.M)
