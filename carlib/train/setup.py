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
from carlib.data.folders import ImageList, prepare_data
from carlib.data.pipeline import eval_dataset, resolve_cache, training_dataset
from carlib.data.splits import RunSplits, split_for_run
from carlib.models.build import build_model
from carlib.train.runtime import Runtime, dtype_policy, resolve_runtime
from carlib.train.schedules import LearningRateController
from carlib.train.stages import Stage, enter_stage, finetune_stages

__all__ = ["RunData", "prepare_run_data", "make_datasets", "build_run_model", "TrainingSetup", "build_training",
           "prepare_training"]


@dataclasses.dataclass(frozen=True)
class RunData:
    """A run's resolved config and its splits: training, validation (picks the checkpoint), test (scores the run)."""

    config: ExperimentConfig  # resolved: image size, data_dir, results_dir filled in
    splits: RunSplits

    @property
    def root(self) -> Path:
        """The dataset's folder."""
        return self.splits.layout.root

    @property
    def train_dir(self) -> Path:
        """The folder of the training class folders."""
        return self.splits.layout.train_dir

    @property
    def images(self) -> ImageList:
        """Every usable image of the training folders (before any split), with what was skipped."""
        return self.splits.images

    @property
    def train_images(self) -> ImageList:
        """The images the run trains on."""
        return self.splits.train

    @property
    def val_images(self) -> ImageList:
        """The validation images: they pick the best checkpoint (never augmented)."""
        return self.splits.val

    @property
    def test_images(self) -> ImageList:
        """The held-out test images: the same for every seed; they only score the run."""
        return self.splits.test

    @property
    def num_classes(self) -> int:
        """Number of class folders."""
        return len(self.images.class_names)

    @functools.cached_property
    def cache_modes(self) -> dict[str, str]:
        """Where each split's decoded images are cached ("memory", "disk" or "none"), decided once per run."""
        size, requested = self.config.image_size, self.config.data_cache
        return {name: resolve_cache(len(images), size, requested)
                for name, images in (("train", self.train_images), ("val", self.val_images),
                                     ("test", self.test_images))}

    @property
    def has_val(self) -> bool:
        """Whether the run has validation images (``val_split > 0`` or a validation folder)."""
        return len(self.val_images) > 0

    @property
    def has_test(self) -> bool:
        """Whether the run has held-out test images."""
        return len(self.test_images) > 0

    @property
    def monitor(self) -> str:
        """What the best checkpoint follows: validation accuracy, or training accuracy without a validation set."""
        return "val_accuracy" if self.has_val else "accuracy"


def prepare_run_data(config: ExperimentConfig) -> RunData:
    """Seed everything, find the data, split it (:func:`carlib.data.splits.split_for_run`) and resolve the config.

    (``deterministic`` is applied around the whole run by :func:`carlib.train.runtime.op_determinism`.)
    """
    keras.utils.set_random_seed(config.seed)
    layout = prepare_data(config.data_dir)
    splits = split_for_run(layout, val_split=config.val_split, test_split=config.test_split, seed=config.seed)
    return RunData(config.replace(data_dir=str(layout.root)).resolved(), splits)


def make_datasets(data: RunData, runtime: Runtime):
    """The training dataset (augmented, shuffled), the validation and the test datasets (never augmented, or None).

    All are batched with the global batch size; the strategy splits each batch over replicas.
    """
    config = data.config
    batch = runtime.global_batch_size(config.batch_size)
    train_ds = training_dataset(data.train_images, config.image_size, batch, augmentation=config.augmentation,
                                seed=config.seed, cache=data.cache_modes["train"])
    val_ds, test_ds = (eval_dataset(images, config.image_size, batch, cache=data.cache_modes[name]) if len(images)
                       else None for name, images in (("val", data.val_images), ("test", data.test_images)))
    return train_ds, val_ds, test_ds


def build_run_model(config: ExperimentConfig, num_classes: int, runtime: Runtime) -> keras.Model:
    """The model of a resolved config, built under the run's precision policy and strategy.

    The global seed is set again right before, so runs of one architecture that share a ``seed``
    start from the same weights whatever else differs (paired comparisons, docs/training.md).
    """
    keras.utils.set_random_seed(config.seed)
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
    test_ds: Any
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
    train_ds, val_ds, test_ds = make_datasets(data, runtime)
    model = build_run_model(data.config, data.num_classes, runtime)
    stages = finetune_stages(data.config)
    # plateau watches the validation loss, or the training loss without a validation set
    schedule = LearningRateController(data.config, monitor="val_loss" if data.has_val else "loss")
    first_stage = enter_stage(model, stages[0], data.config, runtime, schedule)
    return TrainingSetup(data, runtime, train_ds, val_ds, test_ds, model, stages, schedule, first_stage)
