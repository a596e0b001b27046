"""How a run trains, shared by :func:`carlib.run_experiment` and :func:`carlib.lr_find_for_config`.

- the *runtime*: distribution strategy and replicas (global batch = ``batch_size`` × replicas),
  mixed precision, XLA, op determinism;
- the run's data (seed, split, resolved config), datasets and model, built exactly one way;
- fine-tuning *stages* (R18): ``full``, ``head``, ``two_stage`` (fastai's ``fine_tune``),
  ``gradual`` (unfreeze from the top), each stage one ``fit`` call continuing the same
  epoch count, each compiled with a fresh optimizer after its change of trainability.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
from pathlib import Path
from typing import Any, Iterator

import keras
import tensorflow as tf

from carlib import backbones, losses
from carlib.config import ExperimentConfig, optimizer_class_name
from carlib.data.folders import ImageList, list_class_images, prepare_data, stratified_split
from carlib.data.pipeline import eval_dataset, resolve_cache, training_dataset

__all__ = ["Runtime", "resolve_runtime", "dtype_policy", "op_determinism", "RunData", "prepare_run_data",
           "make_datasets", "build_run_model", "Stage", "finetune_stages", "set_backbone_trainable",
           "compile_for_stage", "enter_stage", "StageSpanningEarlyStopping", "TrainingSetup", "prepare_training"]


# ---------------------------------------------------------------------------- runtime
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
            raise RuntimeError("strategy='tpu' but this machine has no TPU runtime (no TPU_NAME, COLAB_TPU_ADDR or "
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


# ------------------------------------------------------------------------- data, model
@dataclasses.dataclass(frozen=True)
class RunData:
    """A run's resolved config and its split of the training images."""

    config: ExperimentConfig  # resolved: image size, data_dir, results_dir filled in
    root: Path
    train_dir: Path
    images: ImageList
    train_images: ImageList
    val_images: ImageList

    @property
    def num_classes(self) -> int:
        """Number of class folders."""
        return len(self.images.class_names)

    @functools.cached_property
    def cache_modes(self) -> dict[str, str]:
        """Where each split's decoded images are cached ("memory", "disk" or "none"), decided once per run."""
        size, requested = self.config.image_size, self.config.data_cache
        return {"train": resolve_cache(len(self.train_images), size, requested),
                "val": resolve_cache(len(self.val_images), size, requested)}

    @property
    def has_val(self) -> bool:
        """Whether the split left any validation images (``val_split > 0``)."""
        return len(self.val_images) > 0

    @property
    def monitor(self) -> str:
        """What the best checkpoint follows: validation accuracy, or training accuracy without a validation set."""
        return "val_accuracy" if self.has_val else "accuracy"


@contextlib.contextmanager
def op_determinism(enabled: bool) -> Iterator[None]:
    """Turn on TensorFlow's op determinism (``deterministic=True``) inside, and back off afterwards.

    TensorFlow's public API can only turn it on
    (``tf.config.experimental.enable_op_determinism``); the switch back uses TensorFlow's
    internal ``disable_op_determinism`` where it exists, so one deterministic run does not
    slow down (or, on a GPU, break) the runs after it in the same process. Where it does not
    exist the mode stays on for the rest of the process.
    """
    from tensorflow.python.framework import config as tf_config  # the only home of is/disable_op_determinism

    was_enabled = getattr(tf_config, "is_op_determinism_enabled", lambda: False)()
    if enabled and not was_enabled:
        tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if enabled and not was_enabled and hasattr(tf_config, "disable_op_determinism"):
            tf_config.disable_op_determinism()


def prepare_run_data(config: ExperimentConfig) -> RunData:
    """Seed everything, find the data, split it (stratified by ``seed``) and resolve the config.

    (``deterministic`` is applied around the whole run by :func:`op_determinism`.)
    """
    keras.utils.set_random_seed(config.seed)
    layout = prepare_data(config.data_dir)
    images = list_class_images(layout.train_dir)
    train_idx, val_idx = stratified_split(images.labels, config.val_split, config.seed)
    resolved = config.replace(data_dir=str(layout.root)).resolved()
    return RunData(resolved, layout.root, layout.train_dir, images, images.subset(train_idx), images.subset(val_idx))


def make_datasets(data: RunData, runtime: Runtime):
    """The training dataset (augmented, shuffled) and the validation dataset (never augmented, or None).

    Both are batched with the global batch size; the strategy splits each batch over replicas.
    """
    config = data.config
    batch = runtime.global_batch_size(config.batch_size)
    train_ds = training_dataset(data.train_images, config.image_size, batch, augmentation=config.augmentation,
                                seed=config.seed, cache=data.cache_modes["train"])
    val_ds = None
    if data.has_val:
        val_ds = eval_dataset(data.val_images, config.image_size, batch, cache=data.cache_modes["val"])
    return train_ds, val_ds


def build_run_model(config: ExperimentConfig, num_classes: int, runtime: Runtime) -> keras.Model:
    """The model of a resolved config, built under the run's precision policy and strategy."""
    with dtype_policy(runtime.precision_policy), runtime.strategy.scope():
        return backbones.build_model(config.backbone, num_classes, config.image_size, weights=config.weights,
                                     dropout=config.dropout, bn_mode=config.bn_mode,
                                     hidden_units=config.head_hidden_units, head_batchnorm=config.head_batchnorm,
                                     input_range=config.hub_input_range, width=config.backbone_width,
                                     depth=config.backbone_depth)


# ---------------------------------------------------------------------- fine-tuning
@dataclasses.dataclass(frozen=True)
class Stage:
    """One ``fit`` call of a run: epochs ``first_epoch`` (0-based) up to ``end_epoch`` (exclusive).

    ``backbone_fraction``: share of the backbone's layers (with weights, counted from the top)
    that train, 0 = head only, 1 = everything. ``lr_scale`` multiplies the schedule's LR.
    """

    name: str
    first_epoch: int
    end_epoch: int
    backbone_fraction: float
    lr_scale: float


def finetune_stages(config: ExperimentConfig) -> list[Stage]:
    """The stages of ``config.finetune``.

    ``full``: everything trains from the first epoch. ``head``: the backbone stays frozen.
    ``two_stage``: ``head_epochs`` of head-only training at ``lr``, then everything at
    ``lr × finetune_lr_factor``. ``gradual``: the same head epochs, then ``unfreeze_stages``
    stages (the remaining epochs split as evenly as possible) that unfreeze the top 1/k, 2/k,
    …, all of the backbone, at ``lr × finetune_lr_factor``.
    """
    epochs, strategy = config.epochs, config.finetune
    if strategy == "full":
        return [Stage("full", 0, epochs, 1.0, 1.0)]
    if strategy == "head":
        return [Stage("head", 0, epochs, 0.0, 1.0)]
    head = Stage("head", 0, config.head_epochs, 0.0, 1.0)
    if strategy == "two_stage":
        return [head, Stage("full", config.head_epochs, epochs, 1.0, config.finetune_lr_factor)]
    if strategy == "gradual":
        k = config.unfreeze_stages
        remaining = epochs - config.head_epochs
        stages, start = [head], config.head_epochs
        for i in range(k):
            length = remaining // k + (1 if i < remaining % k else 0)
            stages.append(Stage(f"unfreeze {i + 1}/{k}", start, start + length, (i + 1) / k,
                                config.finetune_lr_factor))
            start += length
        return stages
    raise ValueError(f"unknown finetune strategy {strategy!r}")


def set_backbone_trainable(model: keras.Model, fraction: float) -> int:
    """Make the top ``fraction`` of the backbone's layers with weights trainable, the rest frozen.

    Returns how many backbone layers train. A frozen BatchNorm layer runs in inference mode
    (Keras semantics), so its statistics stay put whatever ``bn_mode`` says.
    """
    backbone = backbones.feature_extractor(model)
    layers = [layer for layer in backbone.layers if layer.weights]
    if fraction <= 0:
        backbone.trainable = False
        return 0
    backbone.trainable = True  # sets every sub-layer trainable; the lower ones are frozen again below
    n_trainable = len(layers) if fraction >= 1 else max(1, math.ceil(fraction * len(layers)))
    for index, layer in enumerate(layers):
        layer.trainable = index >= len(layers) - n_trainable
    return n_trainable


def compile_for_stage(model: keras.Model, config: ExperimentConfig, runtime: Runtime) -> None:
    """(Re)compile with a fresh optimizer, after a change of trainability.

    A Keras 3 optimizer is built for the variables it first saw, so each stage gets its own;
    its moments restart, as in fastai's ``fine_tune``. The learning rate is set each epoch by
    :class:`carlib.schedules.LearningRateController`.
    """
    with runtime.strategy.scope():
        optimizer = getattr(keras.optimizers, optimizer_class_name(config.optimizer))(learning_rate=config.lr)
        model.compile(optimizer=optimizer, loss=losses.classification_loss(config.label_smoothing), metrics=["accuracy"],
                      jit_compile=runtime.jit_compile)


def enter_stage(model: keras.Model, stage: Stage, config: ExperimentConfig, runtime: Runtime) -> dict[str, Any]:
    """Set the trainability of ``stage`` and recompile; returns what the record says about the stage."""
    layers = None
    if config.finetune != "full":  # "full" never touches trainability (works for any registered backbone)
        layers = set_backbone_trainable(model, stage.backbone_fraction)
    compile_for_stage(model, config, runtime)
    return {"name": stage.name, "first_epoch": stage.first_epoch + 1, "last_epoch": stage.end_epoch,
            "lr_scale": stage.lr_scale, "backbone_trainable_layers": layers,
            "trainable_params": int(sum(math.prod(w.shape) for w in model.trainable_weights))}


class StageSpanningEarlyStopping(keras.callbacks.EarlyStopping):
    """``EarlyStopping`` whose patience and best value carry over the ``fit`` calls of one run's stages."""

    def on_train_begin(self, logs=None):
        if not getattr(self, "_started", False):
            super().on_train_begin(logs)
            self._started = True


# --------------------------------------------------------------------------- setup
@dataclasses.dataclass
class TrainingSetup:
    """Everything a run has before its first ``fit``: data, runtime, datasets, model compiled for stage 1."""

    data: RunData
    runtime: Runtime
    train_ds: Any
    val_ds: Any
    model: keras.Model
    stages: list[Stage]

    @property
    def config(self) -> ExperimentConfig:
        """The resolved config."""
        return self.data.config


def prepare_training(config: ExperimentConfig) -> TrainingSetup:
    """Data, runtime, datasets and the model of ``config``, trainable and compiled as its first stage.

    The same steps as :func:`carlib.run_experiment` takes before training; an LR range test on
    this setup sees the model, data and augmentation the run will see.
    """
    data = prepare_run_data(config)
    runtime = resolve_runtime(data.config)
    train_ds, val_ds = make_datasets(data, runtime)
    model = build_run_model(data.config, data.num_classes, runtime)
    stages = finetune_stages(data.config)
    enter_stage(model, stages[0], data.config, runtime)
    return TrainingSetup(data, runtime, train_ds, val_ds, model, stages)
