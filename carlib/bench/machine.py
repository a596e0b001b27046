"""Where and when benchmark figures were measured: one description of the machine for every benchmark."""

from __future__ import annotations

import datetime as _dt
import os
import platform
from typing import Any

import tensorflow as tf

__all__ = ["machine_context", "machine_description"]


def _cpu_model() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            model = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), model)
    except OSError:
        pass
    return model


def machine_context() -> dict[str, Any]:
    """Date, CPU model and count, GPUs, Python and TensorFlow versions (added to every figure)."""
    return {"date": _dt.date.today().isoformat(), "machine": platform.machine(), "cpu_model": _cpu_model(),
            "cpus": os.cpu_count(), "gpus": len(tf.config.list_physical_devices("GPU")),
            "system": platform.system(), "python": platform.python_version(), "tensorflow": tf.__version__}


def machine_description(context: dict[str, Any] | None = None) -> str:
    """The machine in words: CPU model, cores, GPUs (none on a laptop or a free CPU runtime), system."""
    context = context or machine_context()
    return f"{context['cpu_model']}, {context['cpus']} cores, {context['gpus']} GPU(s), {context['system']}"
