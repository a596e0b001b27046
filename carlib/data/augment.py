"""Named albumentations presets for the training split (validation and test never augment, R15).

A preset is a function ``image_size -> list of transforms``; the result always has the
training image size, so presets are interchangeable in a study. Crops are random
(``RandomResizedCrop``), never a fixed pair of centre crops (R19). Users add their own with
:func:`register_preset`, pass the path of a pipeline saved with ``albumentations.save``, or
pass albumentations' serialized form itself (``albumentations.to_dict(compose)``, as a
mapping or JSON text: papermill ``-y``, a YAML preset). The same three forms work for TTA
presets (:mod:`carlib.data.tta_presets`), through :func:`is_pipeline_spec` and
:func:`pipeline_transforms`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import albumentations as A  # carlib/__init__.py has set NO_ALBUMENTATIONS_UPDATE: no network on import
import numpy as np

from carlib.base.registry import Registry
from carlib.errors import ConfigError, MissingFileError

__all__ = [
    "PRESETS",
    "register_preset",
    "register_builder",
    "available_presets",
    "build_augmentation",
    "check_augmentation",
    "is_pipeline_spec",
    "pipeline_transforms",
    "augment_image",
    "augment_batch",
]

PresetBuilder = Callable[[int], list]


def _none(size: int) -> list:
    return []


def _light(size: int) -> list:
    return [
        A.HorizontalFlip(p=0.5),
        A.Affine(translate_percent=(-0.06, 0.06), scale=(0.9, 1.1), border_mode=0, p=0.5),
    ]


def _medium(size: int) -> list:
    return [
        A.HorizontalFlip(p=0.5),
        A.RandomResizedCrop(size=(size, size), scale=(0.6, 1.0), ratio=(0.8, 1.25), p=1.0),
        A.Affine(rotate=(-10, 10), border_mode=0, p=0.3),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
        A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=20, val_shift_limit=10, p=0.3),
    ]


def _heavy(size: int) -> list:
    return [
        *_medium(size),
        A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.GaussNoise(std_range=(0.02, 0.08))], p=0.3),
        A.ToGray(p=0.1),
        A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=(0.05, 0.2), hole_width_range=(0.05, 0.2), p=0.4),
    ]


PRESETS: Registry[PresetBuilder] = Registry(
    "augmentation", "or the path of a .json/.yaml pipeline saved with albumentations.save, or such a pipeline inline "
                    "(albumentations.to_dict(...) as a mapping or JSON text); add your own with "
                    "carlib.register_preset(name, builder)")
for _name, _builder in {"none": _none, "light": _light, "medium": _medium, "heavy": _heavy}.items():
    PRESETS.register(_name, _builder)
del _name, _builder


def register_builder(registry: Registry[PresetBuilder], name: str, builder: PresetBuilder, *,
                     overwrite: bool = False) -> None:
    """Register a preset ``builder(image_size) -> list of albumentations transforms`` in ``registry``."""
    if not callable(builder):
        raise ConfigError(f"{registry.kind} {name!r}: builder must be a function image_size -> list of transforms.")
    registry.register(name, builder, overwrite=overwrite)


def register_preset(name: str, builder: PresetBuilder, *, overwrite: bool = False) -> None:
    """Register ``builder(image_size) -> list of albumentations transforms`` as an augmentation preset."""
    register_builder(PRESETS, name, builder, overwrite=overwrite)


def available_presets() -> tuple[str, ...]:
    """Names of the registered augmentation presets."""
    return PRESETS.names()


def _is_saved(spec: str) -> bool:
    return spec.endswith((".json", ".yaml", ".yml"))


def _is_inline(spec: str) -> bool:
    # albumentations' own serialized form, passed as a parameter (papermill -y, YAML, JSON text)
    return spec.lstrip().startswith("{")


def is_pipeline_spec(spec: str) -> bool:
    """Whether ``spec`` is a pipeline rather than a preset name: a saved file or albumentations' inline form."""
    return isinstance(spec, str) and (_is_inline(spec) or _is_saved(spec))


def pipeline_transforms(spec: str) -> list:
    """The transforms of a saved (``.json``/``.yaml``) or inline pipeline; a clear error when it cannot be read."""
    if _is_inline(spec):
        try:
            return list(A.from_dict(json.loads(spec)).transforms)
        except Exception as err:  # albumentations raises several types for a malformed description
            raise ConfigError(f"augmentation: the inline pipeline is not albumentations' serialized form ({err}). "
                              "Produce one with albumentations.to_dict(A.Compose([...]))") from None
    path = Path(spec).expanduser()
    if not path.is_file():
        raise MissingFileError(f"augmentation={spec!r}: no such file (a pipeline saved with albumentations.save).")
    try:
        loaded = A.load(str(path), data_format="yaml" if spec.endswith((".yaml", ".yml")) else "json")
    except Exception as err:  # a file that is not albumentations' format
        raise ConfigError(f"augmentation={spec!r} is not a pipeline saved with albumentations.save ({err}).") from None
    return list(loaded.transforms)


def check_augmentation(spec: str) -> None:
    """Fail early, before data is touched, if ``spec`` is neither a preset nor a saved or inline pipeline."""
    if spec in PRESETS:
        return
    if is_pipeline_spec(spec):
        pipeline_transforms(spec)
        return
    PRESETS.get(spec)  # raises UnknownNameError naming the presets and the other forms


def build_augmentation(spec: str, image_size: int, seed: int | None = None) -> A.Compose | None:
    """The ``Compose`` for a preset name or saved pipeline, or ``None`` when it does nothing.

    A resize to ``image_size`` is appended so every preset returns the training size.
    """
    check_augmentation(spec)
    transforms = pipeline_transforms(spec) if is_pipeline_spec(spec) else PRESETS.get(spec)(image_size)
    if not transforms:
        return None
    return A.Compose([*transforms, A.Resize(image_size, image_size)], seed=seed)


def augment_image(pipeline: A.Compose, image: np.ndarray, seed: int) -> np.ndarray:
    """Apply ``pipeline`` to one uint8 HxWx3 image with its own seed.

    albumentations keeps its own RNG (``keras.utils.set_random_seed`` does not reach it),
    so each image gets a seed derived from the run seed, the epoch and its position:
    results are repeatable whatever the thread scheduling, as long as each thread uses its
    own copy of ``pipeline``.
    """
    pipeline.set_random_seed(int(seed))
    return pipeline(image=image)["image"]


def augment_batch(pipeline: A.Compose, images: np.ndarray, seed: int) -> np.ndarray:
    """Apply ``pipeline`` to each uint8 image of an (N, H, W, 3) batch: one seed for the batch.

    The training pipeline calls this once per batch: seeding albumentations costs about as
    much as a light augmentation of a 128 px image, and each Python call from tf.data has
    its own overhead, so per-batch calls run several times faster than per-image ones
    (``carlib bench``). The pipeline's RNG advances from image to image, so every image
    gets its own draw; the result depends only on ``seed`` and the batch's content and
    order, never on thread scheduling, as long as each thread uses its own ``pipeline``.
    """
    pipeline.set_random_seed(int(seed) % 2**32)
    out = np.empty_like(images)
    for index, image in enumerate(images):
        out[index] = pipeline(image=np.ascontiguousarray(image))["image"]
    return out
