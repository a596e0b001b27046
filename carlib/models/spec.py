"""What a backbone is to carlib: a named builder, the pixel range it wants, its default size, its size knobs.

No TensorFlow here: the config validates backbone names and knobs without importing it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

__all__ = ["BackboneSpec", "PREPROCESSING", "KNOB_LIMITS", "KNOB_MEANING"]

# What each preprocessing mode maps raw 0–255 RGB to, i.e. what the backbone's first layer sees.
PREPROCESSING: dict[str, tuple[float, float]] = {
    "raw": (0.0, 255.0),  # the backbone contains its own rescaling (EfficientNet, V2, MobileNetV3, ConvNeXt)
    "symmetric": (-1.0, 1.0),  # x / 127.5 - 1: Xception, MobileNetV2, ResNetV2 ("tf" mode)
    "unit": (0.0, 1.0),  # x / 255: carlib's own from-scratch nets
}

# Inclusive bounds of the size knobs: below them a net cannot learn the task, above them it is no longer compact.
KNOB_LIMITS: dict[str, tuple[int, int]] = {"width": (4, 256), "depth": (1, 8)}
KNOB_MEANING = {"width": "channels of the first stage, doubled at each of the 4 stages",
                "depth": "conv layers or residual blocks per stage"}


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """A named feature extractor.

    ``build(input_shape, weights, **knobs)`` returns a Keras model without classification top
    whose output is a feature map or vector; ``preprocessing`` is one of :data:`PREPROCESSING`,
    the scaling carlib applies in front of it. ``knobs`` maps the size knobs the builder
    accepts (``width``: channels of the first stage, doubled per stage; ``depth``: layers or
    residual blocks per stage) to this variant's values; empty for fixed architectures.
    ``default_weights`` is what ``weights="auto"`` means for it (``"imagenet"`` or ``None``);
    ``fetch_imagenet()``, where the backbone has ImageNet weights, makes sure they are on this
    machine (cached, converted or downloaded) before a run starts, and raises
    :class:`~carlib.errors.WeightsError` with one line saying how to get them when they cannot be.
    ``keras_application`` names the ``keras.applications`` constructor of those backbones (Keras
    downloads their weights file).
    """

    name: str
    build: Callable[..., Any]
    preprocessing: str
    default_size: int
    description: str = ""
    knobs: Mapping[str, int] = dataclasses.field(default_factory=dict)
    default_weights: str | None = None
    fetch_imagenet: Callable[[], Any] | None = None
    keras_application: str | None = None  # the keras.applications constructor, for those backbones

    @property
    def input_range(self) -> tuple[float, float]:
        """The pixel range the backbone's own first layer receives."""
        return PREPROCESSING[self.preprocessing]
