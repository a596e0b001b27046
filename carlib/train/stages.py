"""Fine-tuning stages (R18): ``full``, ``head``, ``two_stage`` (fastai's ``fine_tune``), ``gradual``.

Each stage is one ``fit`` call continuing the same epoch count, compiled with a fresh optimizer
after its change of trainability. A stage's learning-rate factor goes to the schedule
(:meth:`carlib.train.schedules.LearningRateController.begin_stage`), the one writer of the
learning rate.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import keras

from carlib.config import ExperimentConfig
from carlib.errors import ConfigError
from carlib.models.build import feature_extractor
from carlib.models.losses import classification_loss
from carlib.train.runtime import Runtime
from carlib.train.schedules import LearningRateController

__all__ = ["KERAS_OPTIMIZERS", "Stage", "finetune_stages", "set_backbone_trainable", "unfreezable_layers",
           "compile_for_stage", "enter_stage"]

# The keras.optimizers class of each optimizer name the config accepts (carlib.config.OPTIMIZERS).
KERAS_OPTIMIZERS = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD", "rmsprop": "RMSprop"}


@dataclasses.dataclass(frozen=True)
class Stage:
    """One ``fit`` call of a run: epochs ``first_epoch`` (0-based) up to ``end_epoch`` (exclusive).

    ``backbone_fraction``: share of the backbone's layers (with weights, counted from the top)
    that train, 0 = head only, 1 = everything. ``lr_factor`` multiplies the schedule's LR while it runs.
    """

    name: str
    first_epoch: int
    end_epoch: int
    backbone_fraction: float
    lr_factor: float


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
    raise ConfigError(f"unknown finetune strategy {strategy!r}")


_BLOCK_NAME = re.compile(r"^(block\d+[a-z]?)_")


def unfreezable_layers(backbone: keras.Model, blocks: int = 0) -> list[keras.layers.Layer]:
    """The backbone's layers with weights that may train: all (``blocks=0``), or the top ``blocks`` blocks and every
    layer above them.

    A block is a run of layers named ``block<N>[letter]_…`` (keras.applications' EfficientNets,
    Xception, carlib's EfficientNet-Lite). Raises :class:`~carlib.errors.ConfigError` for a backbone
    without such names, or with fewer blocks than asked.
    """
    layers = [layer for layer in backbone.layers if layer.weights]
    if not blocks:
        return layers
    block_ids = [match.group(1) if (match := _BLOCK_NAME.match(layer.name)) else None for layer in layers]
    order = list(dict.fromkeys(block for block in block_ids if block))
    if not order:
        raise ConfigError(f"unfreeze_blocks={blocks}: backbone {backbone.name!r} has no layers named block<N>_…, so "
                          "it has no blocks to count; use unfreeze_blocks=0 (all layers) with it.")
    if blocks > len(order):
        raise ConfigError(f"unfreeze_blocks={blocks}: backbone {backbone.name!r} has {len(order)} blocks "
                          f"({order[0]} … {order[-1]}); use at most {len(order)}, or 0 for all layers.")
    first = block_ids.index(order[-blocks])
    return layers[first:]


def set_backbone_trainable(model: keras.Model, fraction: float, blocks: int = 0) -> int:
    """Make the top ``fraction`` of the backbone's unfreezable layers trainable (:func:`unfreezable_layers`: all, or
    the top ``blocks`` blocks), the rest frozen.

    Returns how many backbone layers train. A frozen BatchNorm layer runs in inference mode
    (Keras semantics), so its statistics stay put whatever ``bn_mode`` says.
    """
    backbone = feature_extractor(model)
    all_layers = [layer for layer in backbone.layers if layer.weights]
    if fraction <= 0:
        backbone.trainable = False
        return 0
    candidates = unfreezable_layers(backbone, blocks)
    backbone.trainable = True  # sets every sub-layer trainable; the lower ones are frozen again below
    n_trainable = len(candidates) if fraction >= 1 else max(1, math.ceil(fraction * len(candidates)))
    for index, layer in enumerate(all_layers):
        layer.trainable = index >= len(all_layers) - n_trainable
    return n_trainable


def compile_for_stage(model: keras.Model, config: ExperimentConfig, runtime: Runtime, learning_rate: float) -> None:
    """(Re)compile with a fresh optimizer, after a change of trainability.

    A Keras 3 optimizer is built for the variables it first saw, so each stage gets its own;
    its moments restart, as in fastai's ``fine_tune``. ``learning_rate`` comes from the
    schedule (the stage's first epoch), which also sets it every epoch.
    """
    with runtime.strategy.scope():
        optimizer = getattr(keras.optimizers, KERAS_OPTIMIZERS[config.optimizer])(learning_rate=learning_rate)
        model.compile(optimizer=optimizer, loss=classification_loss(config.label_smoothing), metrics=["accuracy"],
                      jit_compile=runtime.jit_compile)


def enter_stage(model: keras.Model, stage: Stage, config: ExperimentConfig, runtime: Runtime,
                schedule: LearningRateController) -> dict[str, Any]:
    """Set the trainability of ``stage``, pass its LR factor to the run's ``schedule`` and recompile; returns what
    the record says about the stage."""
    layers = None
    if config.finetune != "full":  # "full" never touches trainability (works for any registered backbone)
        layers = set_backbone_trainable(model, stage.backbone_fraction, config.unfreeze_blocks)
    compile_for_stage(model, config, runtime, schedule.begin_stage(stage))
    return {"name": stage.name, "first_epoch": stage.first_epoch + 1, "last_epoch": stage.end_epoch,
            "lr_factor": stage.lr_factor, "backbone_trainable_layers": layers,
            "trainable_params": int(sum(math.prod(w.shape) for w in model.trainable_weights))}
