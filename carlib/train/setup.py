"""Everything a run has before its first ``fit``, built exactly one way for :func:`~carlib.train.experiment.run_experiment`
and :func:`~carlib.train.lr_find.lr_find_for_config`: the resolved config and the split, the runtime, the
datasets, the model compiled for its first fine-tuning stage, and the learning-rate schedule.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import keras

from carlib.config import ExperimentConfig
from carlib.data.folders import ImageList, list_class_images, prepare_data, stratified_split
from carlib.data.pipeline import eval_dataset, resolve_cache, training_dataset
from carlib.models.build import build_model
from carlib.train.runtime import Runtime, dtype_policy, resolve_runtime
from carlib.train.schedules import LearningRateController
from carlib.train.stages import Stage, enter_stage, finetune_stages

__all__ = ["RunData", "prepare_run_data", "make_datasets", "build_run_model", "TrainingSetup", "build_training",
           "prepare_training"]


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


def prepare_run_data(config: ExperimentConfig) -> RunData:
    """Seed everything, find the data, split it (stratified by ``seed``) and resolve the config.

    (``deterministic`` is applied around the whole run by :func:`carlib.train.runtime.op_determinism`.)
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
        return build_model(config.backbone, num_classes, config.image_size, weights=config.weights,
                           dropout=config.dropout, bn_mode=config.bn_mode, hidden_units=config.head_hidden_units,
                           head_batchnorm=config.head_batchnorm, input_range=config.hub_input_range,
                           width=config.backbone_width, depth=config.backbone_depth)


@dataclasses.dataclass
class TrainingSetup:
    """Everything a run has before its first ``fit``: data, runtime, datasets, the model compiled for stage 1,
    its stages and the learning-rate schedule (which stage 1 has entered)."""

    data: RunData
    runtime: Runtime
    train_ds: Any
    val_ds: Any
    model: keras.Model
    stages: list[Stage]
    schedule: LearningRateController
    first_stage: dict[str, Any]  # what the record says about stage 1 (enter_stage's description)

    @property
    def config(self) -> ExperimentConfig:
        """The resolved config."""
        return self.data.config


def prepare_training(config: ExperimentConfig) -> TrainingSetup:
    """Data, runtime, datasets, the schedule and the model of ``config``, trainable and compiled as its first stage.

    An LR range test on this setup sees the model, data and augmentation the run will see.
    """
    data = prepare_run_data(config)
    return build_training(data, resolve_runtime(data.config))


def build_training(data: RunData, runtime: Runtime) -> TrainingSetup:
    """The datasets, the schedule and the model of a run whose data and runtime are ready (see :func:`prepare_training`)."""
    train_ds, val_ds = make_datasets(data, runtime)
    model = build_run_model(data.config, data.num_classes, runtime)
    stages = finetune_stages(data.config)
    # plateau watches the validation loss, or the training loss without a validation set
    schedule = LearningRateController(data.config, monitor="val_loss" if data.has_val else "loss")
    first_stage = enter_stage(model, stages[0], data.config, runtime, schedule)
    return TrainingSetup(data, runtime, train_ds, val_ds, model, stages, schedule, first_stage)
