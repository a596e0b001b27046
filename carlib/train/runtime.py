"""Where and how a run computes: distribution strategy and replicas (global batch = ``batch_size`` × replicas),
mixed precision, XLA, and TensorFlow's op determinism."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Any, Iterator

import keras
import tensorflow as tf
from tensorflow.python.framework import config as tf_config  # the only home of is/disable_op_determinism

from carlib.config import ExperimentConfig
from carlib.errors import DeviceError

__all__ = ["Runtime", "resolve_runtime", "dtype_policy", "op_determinism", "gpu_names"]


@dataclasses.dataclass(frozen=True)
class Runtime:
    """Where and how a run computes: the resolved ``strategy``, ``mixed_precision`` and ``jit_compile``."""

    strategy: Any  # a tf.distribute.Strategy
    strategy_name: str  # default | mirrored | tpu
    replicas: int
    precision_policy: str  # float32 | mixed_float16 | mixed_bfloat16
    jit_compile: bool | str  # what compile() gets: True, False or "auto" (Keras: off on CPU and under strategies)
    devices: tuple[str, ...]

    def global_batch_size(self, batch_size: int) -> int:
        """Images per optimizer step: each replica gets ``batch_size``."""
        return batch_size * self.replicas

    def describe(self, batch_size: int) -> dict[str, Any]:
        """What a record stores about the runtime."""
        return {"strategy": self.strategy_name, "replicas": self.replicas, "devices": list(self.devices),
                "global_batch_size": self.global_batch_size(batch_size), "precision_policy": self.precision_policy,
                "jit_compile": self.jit_compile}


def _tpu_runtime() -> bool:
    # Colab's and Kaggle's TPU runtimes announce themselves by environment or by the TPU VM device files.
    return bool(os.environ.get("TPU_NAME") or os.environ.get("COLAB_TPU_ADDR")) or Path("/dev/accel0").exists()


def _tpu_strategy():
    remote = os.environ.get("TPU_NAME") or os.environ.get("COLAB_TPU_ADDR")
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu="" if remote else "local")
    if remote:
        tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def resolve_runtime(config: ExperimentConfig) -> Runtime:
    """Choose the strategy, precision policy and XLA setting for ``config`` on this machine.

    ``strategy="auto"``: TPUStrategy on a TPU runtime, MirroredStrategy with two or more GPUs,
    else the default strategy; ``"mirrored"`` mirrors over all GPUs, or over the logical CPU
    devices when there is no GPU (how the tests exercise it). ``mixed_precision="auto"``:
    ``mixed_float16`` with a GPU, ``mixed_bfloat16`` on a TPU, float32 otherwise.
    """
    gpus = tf.config.list_physical_devices("GPU")
    name = config.strategy
    if name == "auto":
        name = "tpu" if _tpu_runtime() else "mirrored" if len(gpus) >= 2 else "default"
    if name == "tpu":
        if not _tpu_runtime():
            raise DeviceError("strategy='tpu' but this machine has no TPU runtime (no TPU_NAME, COLAB_TPU_ADDR or "
                               "/dev/accel0): use strategy='auto'.")
        strategy = _tpu_strategy()
    elif name == "mirrored":
        kind = "GPU" if gpus else "CPU"
        strategy = tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices(kind)])
    else:
        strategy = tf.distribute.get_strategy()
    if name == "default":  # the default strategy has no device list: report what TensorFlow places on
        devices = tuple(d.name for d in tf.config.list_logical_devices("GPU" if gpus else "CPU")[:1])
    else:
        devices = tuple(strategy.extended.worker_devices)
    if config.mixed_precision == "off":
        policy = "float32"
    elif name == "tpu":
        policy = "mixed_bfloat16"
    elif config.mixed_precision == "on" or gpus:
        policy = "mixed_float16"
    else:
        policy = "float32"
    jit = {"on": True, "off": False, "auto": "auto"}[config.jit_compile]
    return Runtime(strategy, name, int(strategy.num_replicas_in_sync), policy, jit, devices)


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Set Keras' global dtype policy for the layers built inside, then restore the previous one.

    Layers keep the policy they were built with (and save it in ``.keras`` files), so nothing
    leaks into later runs in the same process.
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


@contextlib.contextmanager
def op_determinism(enabled: bool) -> Iterator[None]:
    """Turn on TensorFlow's op determinism (``deterministic=True``) inside, and back off afterwards.

    TensorFlow's public API can only turn it on
    (``tf.config.experimental.enable_op_determinism``); the switch back uses TensorFlow's
    internal ``disable_op_determinism`` where it exists, so one deterministic run does not
    slow down (or, on a GPU, break) the runs after it in the same process. Where it does not
    exist the mode stays on for the rest of the process.
    """
    was_enabled = getattr(tf_config, "is_op_determinism_enabled", lambda: False)()
    if enabled and not was_enabled:
        tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if enabled and not was_enabled and hasattr(tf_config, "disable_op_determinism"):
            tf_config.disable_op_determinism()


def gpu_names() -> list[str]:
    """The names of the GPUs TensorFlow sees (what a record says about the hardware)."""
    names = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        names.append(details.get("device_name", device.name))
    return names
