"""Named test-time augmentation presets: what each TTA pass may do to an image (R20).

TTA presets are a registry of their own (``none``, ``flip``, ``light``, ``medium``; add yours
with :func:`register_tta_preset`) because test-time views must stay close to the training
distribution; the path of a pipeline saved with ``albumentations.save`` or an inline
``albumentations.to_dict`` description works too, as for training (:mod:`carlib.data.augment`).
The predictions themselves are :func:`carlib.evaluate.tta.tta_predict`.
"""

from __future__ import annotations

from typing import Callable

import albumentations as A  # carlib/__init__.py has set NO_ALBUMENTATIONS_UPDATE: no network on import

from carlib.base.registry import Registry
from carlib.data.augment import build_augmentation, is_pipeline_spec, register_builder
from carlib.errors import ConfigError

__all__ = ["TTA_PRESETS", "register_tta_preset", "available_tta_presets", "check_tta_preset", "build_tta_pipeline"]

TTAPresetBuilder = Callable[[int], list]


def _none(size: int) -> list:
    return []


def _flip(size: int) -> list:
    # Deterministic mirror: passes >= 1 all see it, so passes=2 is classic flip TTA.
    return [A.HorizontalFlip(p=1.0)]


def _light(size: int) -> list:
    # Zoom in by up to 12% and shift by up to 5%: small crops that rarely show a border.
    return [
        A.HorizontalFlip(p=0.5),
        A.Affine(scale=(1.0, 1.12), translate_percent=(-0.05, 0.05), border_mode=0, p=1.0),
    ]


def _medium(size: int) -> list:
    return [*_light(size), A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=1.0)]


TTA_PRESETS: Registry[TTAPresetBuilder] = Registry(
    "TTA preset", "or the path of a .json/.yaml pipeline saved with albumentations.save; add your own with "
                  "carlib.register_tta_preset(name, builder)")
for _name, _builder in {"none": _none, "flip": _flip, "light": _light, "medium": _medium}.items():
    TTA_PRESETS.register(_name, _builder)
del _name, _builder


def register_tta_preset(name: str, builder: TTAPresetBuilder, *, overwrite: bool = False) -> None:
    """Register ``builder(image_size) -> list of albumentations transforms`` as a TTA preset.

    Transforms with ``p < 1`` make some passes skip them; a preset whose transforms never
    change the image triggers :class:`~carlib.errors.TTAWarning` in ``tta_predict``.
    """
    register_builder(TTA_PRESETS, name, builder, overwrite=overwrite)


def available_tta_presets() -> tuple[str, ...]:
    """Names of the registered TTA presets."""
    return TTA_PRESETS.names()


def check_tta_preset(preset: str) -> None:
    """Fail early if ``preset`` is neither a registered TTA preset nor a saved/inline pipeline."""
    if not isinstance(preset, str):
        raise ConfigError(f"tta_preset={preset!r} must be a preset name (known: {', '.join(available_tta_presets())}).")
    if preset in TTA_PRESETS:
        return
    if is_pipeline_spec(preset):
        build_augmentation(preset, 32)  # validates the file or inline description
        return
    TTA_PRESETS.get(preset)  # raises UnknownNameError naming the presets


def build_tta_pipeline(preset: str, image_size: int) -> A.Compose | None:
    """The ``Compose`` of a TTA preset ending in a resize to ``image_size``, or ``None`` for no transforms."""
    check_tta_preset(preset)
    if preset not in TTA_PRESETS:
        return build_augmentation(preset, image_size)
    transforms = TTA_PRESETS.get(preset)(image_size)
    if not transforms:
        return None
    return A.Compose([*transforms, A.Resize(image_size, image_size)])
