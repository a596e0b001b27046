"""The one parameter vocabulary of carlib: a frozen, validated experiment config.

Every entry point (the Python API, notebook parameters injected by papermill, YAML
parameter files, CLI flags) ends up in :class:`ExperimentConfig`. Values may arrive as
strings (papermill ``-r``, YAML's ``1e-3``, the CLI), so each field is coerced to its
declared type; unknown names and out-of-range values fail before any data is touched,
naming the parameter, the value and what is allowed. Each field carries a one-line
description and, where it has them, its allowed values (:func:`allowed_values`): the CLI's
``--help`` is generated from them (``carlib.cli.parameter_help``).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import os
import typing
from pathlib import Path
from typing import Any, Mapping

from carlib.base.project_files import default_results_dir
from carlib.base.registry import closest_hint
from carlib.data.embedded import embedded_data_dir
from carlib.errors import ConfigError
from carlib.models.hub import HUB_DEFAULT_INPUT_RANGE, absolute_hub_backbone, check_hub_backbone, is_hub_backbone
from carlib.models.registry import available_backbones, check_knobs, get_backbone
from carlib.models.spec import PREPROCESSING

__all__ = ["ConfigError", "ExperimentConfig", "PARAMETER_NAMES", "SCHEDULES", "OPTIMIZERS", "allowed_values",
           "check_known", "as_config"]

# The learning-rate schedules (carlib.train.schedules implements each) and the optimizers (carlib.train.stages
# maps each to its Keras class), by carlib's names.
SCHEDULES = ("constant", "step", "plateau", "cosine")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")

# Frequent spellings from other libraries, so the error can point at carlib's name.
_ALIASES = {
    "learning_rate": "lr",
    "lr_schedule": "schedule",
    "img_size": "image_size",
    "size": "image_size",
    "input_size": "image_size",
    "bs": "batch_size",
    "n_epochs": "epochs",
    "num_epochs": "epochs",
    "model": "backbone",
    "arch": "backbone",
    "aug": "augmentation",
    "augment": "augmentation",
    "validation_split": "val_split",
    "val_size": "val_split",
    "data_path": "data_dir",
    "data": "data_dir",
    "random_seed": "seed",
    "out_dir": "results_dir",
    "output_dir": "results_dir",
    "n_seeds": "seeds",
    "repeats": "seeds",
}



def _param(default: Any, help: str, *, choices: tuple[str, ...] | str | None = None) -> Any:
    """A config field with its one-line description and allowed values (a tuple, or the name of a registry)."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Every hyperparameter of one training run.

    ``None`` means "use the default of the chosen component": ``image_size`` falls back
    to the backbone's default size, ``data_dir`` to the embedded synthetic dataset,
    ``results_dir`` to :func:`default_results_dir`. :meth:`resolved` fills them in; the
    resolved config is what a run records.
    """

    study: str = _param("adhoc", "the study the run belongs to: the group its summary and verdict compare")
    data_dir: str | None = _param(None, "the dataset: the competition folder (train.zip/test.zip or extracted), any "
                                        "class-folder tree, or None for the embedded synthetic dataset")
    backbone: str = _param("simple_cnn", "the feature extractor: a registered backbone, or hub:<URL or SavedModel "
                                         "folder>", choices="backbones")
    backbone_width: int | None = _param(None, "compact backbones: channels of the first stage (doubled per stage); "
                                              "None: the variant's own")
    backbone_depth: int | None = _param(None, "compact backbones: conv layers or residual blocks per stage; None: the "
                                              "variant's own")
    weights: str | None = _param("auto", "backbone weights: auto (the backbone's default: imagenet for "
                                         "efficientnet_lite0/1/2, None for the others), imagenet (a cached file; "
                                         "keras.applications download theirs once), None (random initialisation) "
                                         "or the path of a local weights file")
    image_size: int | None = _param(None, "training image size in pixels (square); None: the backbone's default")
    batch_size: int = _param(32, "images per batch (per replica)")
    epochs: int = _param(10, "epochs of training: a fixed budget, never tuned inside a study")
    lr: float = _param(1e-3, "the learning rate the schedule starts from (after any warm-up)")
    schedule: str = _param("constant", "how the learning rate changes over the epochs", choices="schedules")
    lr_boundaries: tuple[int, ...] = _param((), "step schedule: epochs after which the LR is multiplied by lr_factor "
                                                "(default: after 50% and 75% of the epochs)")
    lr_factor: float = _param(0.1, "step and plateau schedules: the factor of each LR cut")
    warmup_epochs: int = _param(0, "epochs of linear LR warm-up before the schedule starts")
    lr_patience: int = _param(2, "plateau schedule: epochs without improvement before the LR is cut")
    optimizer: str = _param("adam", "the optimizer", choices="optimizers")
    augmentation: str = _param("light", "training augmentation: a preset, the path of a pipeline saved with "
                                        "albumentations.save, or such a pipeline inline", choices="augmentations")
    dropout: float = _param(0.2, "dropout before the classifier")
    label_smoothing: float = _param(0.0, "label smoothing ε: targets 1 - ε + ε/C and ε/C instead of 1 and 0")
    bn_mode: str = _param("auto", "BatchNorm in the backbone: frozen (inference mode), train, or auto (frozen for "
                                  "pretrained weights)", choices=("auto", "frozen", "train"))
    # fine-tuning (R18) and the head (R16, R17)
    finetune: str = _param("full", "fine-tuning: full (all layers from the start), head (backbone frozen), two_stage "
                                   "(head first, then all), gradual (unfreeze from the top)",
                           choices=("full", "head", "two_stage", "gradual"))
    head_epochs: int = _param(1, "two_stage / gradual: epochs that train the head alone first")
    finetune_lr_factor: float = _param(0.1, "two_stage / gradual: LR multiplier once backbone layers train")
    unfreeze_stages: int = _param(2, "gradual: stages that unfreeze the backbone from the top, after the head epochs")
    unfreeze_blocks: int = _param(0, "two_stage / gradual: how many of the backbone's blocks (named block<N>…, counted "
                                     "from the top) train after the head epochs, with the layers above them; 0: all")
    head_hidden_units: int = _param(0, "units of a hidden Dense layer in the head; 0: none (R17)")
    head_batchnorm: bool = _param(False, "BatchNorm after pooling in the head (R16)")
    hub_input_range: str | None = _param(None, "hub: backbones: the pixel range the SavedModel wants; None: unit "
                                               "(TF-Hub's convention)", choices=tuple(PREPROCESSING))
    early_stopping_patience: int = _param(0, "stop after this many epochs without improvement; 0: off (never tune "
                                             "the epoch budget inside a study)")
    # scale, speed and reproducibility
    mixed_precision: str = _param("auto", "mixed precision: auto (mixed_float16 on a GPU, mixed_bfloat16 on a TPU, "
                                          "else off), on, off", choices=("auto", "on", "off"))
    jit_compile: str = _param("auto", "XLA compilation: auto (Keras decides: off on a CPU), on, off",
                              choices=("auto", "on", "off"))
    strategy: str = _param("auto", "distribution: auto (TPU, or mirrored over 2+ GPUs, else default), default, "
                                   "mirrored, tpu", choices=("auto", "default", "mirrored", "tpu"))
    deterministic: bool = _param(False, "TensorFlow op determinism (slower; see the docs for what it covers)")
    data_cache: str = _param("auto", "where decoded images are cached: auto (memory if they fit, else disk), "
                                     "memory, disk, none", choices=("auto", "memory", "disk", "none"))
    val_split: float = _param(0.2, "share of the training images held out for validation (it picks the best "
                                   "checkpoint); 0 trains on everything but the test set")
    test_split: float = _param(0.2, "share of the labelled images held out as the test set (it scores the run) when "
                                    "the dataset has no labelled test images; the same for every seed; 0: no test set")
    seed: int = _param(0, "the run's seed: split, initial weights, data order and augmentation draws")
    results_dir: str | None = _param(None, "the results store; None: $CARLIB_RESULTS_DIR or ./results")
    tensorboard: bool = _param(False, "also write TensorBoard logs to <run_dir>/tensorboard (needs the tensorboard "
                                      "package)")
    test_image_size: int | None = _param(None, "FixRes (R21): a larger size to also score the best checkpoint at "
                                               "(val/test_accuracy_fixres); TTA runs at it too; None: the training "
                                               "size")
    tta_preset: str = _param("light", "TTA preset used when tta_passes > 0", choices="tta_presets")
    tta_passes: int = _param(0, "> 0: the best checkpoint is also evaluated with this many TTA passes "
                                "(val_accuracy_tta); pass 0 is the un-augmented image")
    trial_id: str | None = _param(None, "set by the sweep runner: a rerun skips trials already in the store and "
                                        "resumes a killed one")

    # ----------------------------------------------------------------- construction
    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = _switch_value(field.name, getattr(self, field.name))
            value = _coerce(field.name, value, _FIELD_TYPES[field.name])
            object.__setattr__(self, field.name, value)
        self._validate()

    @classmethod
    def from_dict(cls, params: Mapping[str, Any] | None = None, **overrides: Any) -> "ExperimentConfig":
        """Build a config from a mapping (YAML, papermill parameters, CLI), failing on unknown keys."""
        merged = {**(params or {}), **overrides}
        check_known(merged, PARAMETER_NAMES)
        return cls(**merged)

    def replace(self, **changes: Any) -> "ExperimentConfig":
        """A copy with some fields changed (validated like a new config)."""
        check_known(changes, PARAMETER_NAMES)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable fields (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @property
    def effective_weights(self) -> str | None:
        """The weights a run uses: ``weights``, with ``"auto"`` replaced by the backbone's default."""
        if self.weights != "auto":
            return self.weights
        return None if is_hub_backbone(self.backbone) else get_backbone(self.backbone).default_weights

    def resolved(self) -> "ExperimentConfig":
        """Fill every ``None`` (and ``"auto"`` weights) default from the component it depends on."""
        spec = get_backbone(self.backbone)
        is_hub = is_hub_backbone(self.backbone)
        return self.replace(
            weights=self.effective_weights,
            backbone=absolute_hub_backbone(self.backbone) if is_hub else self.backbone,
            hub_input_range=(self.hub_input_range or HUB_DEFAULT_INPUT_RANGE) if is_hub else None,
            image_size=self.image_size or spec.default_size,
            # a compact backbone's record names its width and depth, also when they are the variant's own
            backbone_width=self.backbone_width or spec.knobs.get("width"),
            backbone_depth=self.backbone_depth or spec.knobs.get("depth"),
            data_dir=str(Path(self.data_dir).expanduser().resolve()) if self.data_dir else str(embedded_data_dir()),
            results_dir=str(Path(self.results_dir or default_results_dir()).expanduser().resolve()),
        )

    # ------------------------------------------------------------------- validation
    def _validate(self) -> None:
        _check(self.lr > 0, "lr", self.lr, "a positive number, e.g. 1e-3")
        _check(0 <= self.val_split < 1, "val_split", self.val_split,
               "a fraction in [0, 1); 0 trains on everything without validation")
        _check(0 <= self.test_split < 1, "test_split", self.test_split,
               "a fraction in [0, 1); 0 keeps no test set (a final run)")
        _check(self.val_split + self.test_split < 1, "val_split + test_split", self.val_split + self.test_split,
               "less than 1: some images must be left to train on")
        _check(self.image_size is None or self.image_size >= 16, "image_size", self.image_size,
               "an integer >= 16 (pixels), or None for the backbone's default")
        _check(self.test_image_size is None or self.test_image_size >= 16, "test_image_size", self.test_image_size,
               "an integer >= 16 (pixels), or None to score at the training size")
        _check(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        _check(self.epochs >= 1, "epochs", self.epochs, "an integer >= 1")
        _check(0 <= self.dropout < 1, "dropout", self.dropout, "a fraction in [0, 1)")
        _check(0 <= self.label_smoothing < 1, "label_smoothing", self.label_smoothing,
               "a fraction in [0, 1), e.g. 0.1; 0 turns it off")
        _check(0 < self.lr_factor <= 1, "lr_factor", self.lr_factor, "a factor in (0, 1]")
        _check(self.lr_patience >= 1, "lr_patience", self.lr_patience, "an integer >= 1 (epochs without improvement)")
        _check(self.warmup_epochs >= 0, "warmup_epochs", self.warmup_epochs, "an integer >= 0")
        _check(all(b >= 1 for b in self.lr_boundaries), "lr_boundaries", self.lr_boundaries, "epoch numbers >= 1")
        _check(self.seed >= 0, "seed", self.seed, "an integer >= 0")
        if not is_hub_backbone(self.backbone):  # hub:<handle or path> names a SavedModel, see carlib.models.hub
            get_backbone(self.backbone)  # an unknown name lists the known ones
        if self.backbone_width is not None or self.backbone_depth is not None:
            check_knobs(self.backbone, self.backbone_width, self.backbone_depth)
        for name in ("schedule", "optimizer", "bn_mode"):
            _choice(name, getattr(self, name))
        # deferred: albumentations, so that reading results (carlib results) never imports it
        from carlib.data.augment import check_augmentation
        from carlib.data.tta_presets import check_tta_preset

        check_augmentation(self.augmentation)
        _check(self.tta_passes >= 0, "tta_passes", self.tta_passes,
               "an integer >= 0 (0: no TTA evaluation; pass 0 is the un-augmented image)")
        check_tta_preset(self.tta_preset)
        if self.weights not in (None, "imagenet", "auto") and not Path(self.weights).expanduser().is_file():
            raise ConfigError(
                f"weights={self.weights!r}: no such file. Use 'auto' (the backbone's default), 'imagenet', "
                "None (random initialisation), or the path of a local weights file "
                "(e.g. one saved with model.save_weights('backbone.weights.h5'))."
            )
        if self.weights == "imagenet" and not is_hub_backbone(self.backbone) \
                and get_backbone(self.backbone).fetch_imagenet is None:
            with_imagenet = [name for name in available_backbones() if get_backbone(name).fetch_imagenet is not None]
            raise ConfigError(f"weights='imagenet': backbone {self.backbone!r} has no ImageNet weights (carlib's compact "
                              f"backbones train from scratch). Use weights=None, or one of {', '.join(with_imagenet)}.")
        if self.tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("tensorboard=True writes TensorBoard logs, but the tensorboard package is not installed: "
                              "pip install tensorboard (or pip install 'carlib[tensorboard]'), or leave tensorboard "
                              "off.")
        self._validate_training()

    def _validate_training(self) -> None:
        """Fine-tuning, head, hub, precision, distribution and determinism knobs (issue 4)."""
        for name in ("finetune", "mixed_precision", "jit_compile", "strategy", "data_cache"):
            _choice(name, getattr(self, name))
        _check(self.head_epochs >= 1, "head_epochs", self.head_epochs, "an integer >= 1 (epochs of head-only training)")
        _check(0 < self.finetune_lr_factor <= 1, "finetune_lr_factor", self.finetune_lr_factor,
               "a factor in (0, 1] applied to lr once backbone layers train")
        _check(self.unfreeze_stages >= 1, "unfreeze_stages", self.unfreeze_stages, "an integer >= 1")
        _check(self.unfreeze_blocks >= 0, "unfreeze_blocks", self.unfreeze_blocks,
               "an integer >= 0 (blocks that train after the head epochs, from the top; 0: all)")
        if self.unfreeze_blocks and self.finetune not in ("two_stage", "gradual"):
            raise ConfigError(f"unfreeze_blocks={self.unfreeze_blocks} chooses which blocks train after the head "
                              f"epochs, but finetune={self.finetune!r} has no such stage: use finetune='two_stage' "
                              "(or 'gradual'), or leave unfreeze_blocks=0.")
        _check(self.head_hidden_units >= 0, "head_hidden_units", self.head_hidden_units,
               "an integer >= 0 (0: no hidden Dense layer)")
        _check(self.early_stopping_patience >= 0, "early_stopping_patience", self.early_stopping_patience,
               "an integer >= 0 (0: no early stopping)")
        is_hub = is_hub_backbone(self.backbone)
        if is_hub:
            check_hub_backbone(self.backbone)
            if self.weights not in (None, "auto"):
                raise ConfigError(f"weights={self.weights!r} with backbone={self.backbone!r}: a hub: backbone carries "
                                  "its weights in its SavedModel; leave weights=None.")
        if self.hub_input_range is not None:
            if not is_hub:
                raise ConfigError(f"hub_input_range={self.hub_input_range!r} applies only to hub: backbones; "
                                  f"{self.backbone!r} has its input range in the backbone registry. Leave it None.")
            _choice("hub_input_range", self.hub_input_range)
        if self.finetune != "full" and self.effective_weights is None and not is_hub:
            raise ConfigError(f"finetune={self.finetune!r} freezes the backbone for a while, but weights=None leaves "
                              "it random: frozen random features teach nothing. Use weights='imagenet' (or a "
                              "weights file, or a hub: backbone), or finetune='full' to train from scratch.")
        if self.finetune in ("two_stage", "gradual"):
            needed = self.head_epochs + (self.unfreeze_stages if self.finetune == "gradual" else 1)
            _check(self.epochs >= needed, "epochs", self.epochs,
                   f"at least {needed} for finetune={self.finetune!r}: head_epochs={self.head_epochs} of head-only "
                   f"training, then {needed - self.head_epochs} epoch(s) for the unfreezing stage(s)")
        if self.finetune == "gradual" and is_hub:
            raise ConfigError(f"finetune='gradual' unfreezes a backbone layer by layer, but {self.backbone!r} is "
                              "one opaque SavedModel layer: use finetune='two_stage' (or 'head', 'full').")


_SWITCHES = {"mixed_precision", "jit_compile"}
_SWITCH_WORDS = {"true": "on", "yes": "on", "1": "on", "false": "off", "no": "off", "0": "off"}


def _switch_value(name: str, value: Any) -> Any:
    """auto/on/off fields also take booleans: YAML reads a bare ``on``/``off`` as true/false."""
    if name not in _SWITCHES:
        return value
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, str):
        return _SWITCH_WORDS.get(value.strip().lower(), value.strip().lower())
    return value


PARAMETER_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ExperimentConfig))
_FIELDS = {f.name: f for f in dataclasses.fields(ExperimentConfig)}
_FIELD_TYPES = typing.get_type_hints(ExperimentConfig)


def allowed_values(name: str) -> tuple[str, ...] | None:
    """The values a parameter accepts when they form a list (``None`` for numbers, paths and free text).

    Registries are read now, so a backbone or preset registered by the user is listed too.
    """
    choices = _FIELDS[name].metadata.get("choices")
    if choices is None or isinstance(choices, tuple):
        return choices
    if choices == "backbones":
        return available_backbones()
    if choices == "schedules":
        return SCHEDULES
    if choices == "optimizers":
        return OPTIMIZERS
    # deferred: albumentations, only when the presets are listed
    from carlib.data.augment import available_presets
    from carlib.data.tta_presets import available_tta_presets

    return {"augmentations": available_presets, "tta_presets": available_tta_presets}[choices]()



def as_config(config: "ExperimentConfig | Mapping[str, Any] | None" = None, **overrides: Any) -> ExperimentConfig:
    """Accept a config, a mapping of parameters or keyword overrides; unknown names fail loudly."""
    if isinstance(config, ExperimentConfig):
        return config.replace(**overrides) if overrides else config
    return ExperimentConfig.from_dict(config, **overrides)



def check_known(params: Mapping[str, Any], known: tuple[str, ...] | list[str]) -> None:
    """Fail on any key of ``params`` not in ``known``, suggesting the closest valid names."""
    unknown = [k for k in params if k not in known]
    if not unknown:
        return
    messages = []
    for key in unknown:
        close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
        alias = _ALIASES.get(key.lower().replace("-", "_"))
        if alias in known and alias not in close:
            close.insert(0, alias)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        messages.append(f"unknown parameter {key!r}.{hint}")
    raise ConfigError(" ".join(messages) + f" Known parameters: {', '.join(sorted(known))}.")


def _check(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{name}={value!r} is out of range: expected {allowed}.")


def _choice(name: str, value: str) -> None:
    allowed = allowed_values(name)
    if value not in allowed:
        raise ConfigError(f"unknown {name} {value!r}.{closest_hint(value, allowed)} Known: {', '.join(sorted(allowed))}.")


_NONE_STRINGS = {"", "none", "null", "~"}


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """Convert ``value`` to the field's declared type, accepting the string forms papermill/YAML/CLI produce."""
    args = typing.get_args(annotation)
    if type(None) in args:  # Optional[...]
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE_STRINGS):
            return None
        annotation = next(a for a in args if a is not type(None))
    origin = typing.get_origin(annotation)
    if origin is tuple:
        item_type = typing.get_args(annotation)[0]
        if isinstance(value, str):
            value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            value = [value]
        return tuple(_coerce(name, v, item_type) for v in value)
    try:
        if annotation is bool:
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered in {"true", "1", "yes"}:
                    return True
                if lowered in {"false", "0", "no"}:
                    return False
                raise ValueError
            return bool(value)
        if annotation is int:
            if isinstance(value, bool):
                raise ValueError
            number = float(value) if isinstance(value, str) else value
            if float(number) != int(number):
                raise ValueError
            return int(number)
        if annotation is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if annotation is str:
            if isinstance(value, dict):  # a structured value (an inline augmentation pipeline) is kept as JSON text
                return json.dumps(value, sort_keys=True)
            if not isinstance(value, (str, os.PathLike)):
                raise ValueError
            return os.fspath(value)
    except (TypeError, ValueError, OverflowError):
        kind = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[annotation]
        raise ConfigError(f"{name}={value!r} has the wrong type: expected {kind}.") from None
    raise TypeError(f"unsupported annotation {annotation!r} for {name}")
