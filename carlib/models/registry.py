"""The backbone registry: a name → how to build it, what input it wants, its default size.

Every carlib model takes raw 0–255 RGB pixels. The conversion each backbone needs
(R6, R12: Xception wants [-1, 1]; EfficientNet rescales inside and wants raw pixels) is a
layer inside the model (:func:`carlib.models.build.build_model`), so training, evaluation, TTA
and export share one input contract. Explicit parameter > backbone default > global default,
as in timm's data config.

No TensorFlow is imported here: the built-in builders import Keras when they build.
"""

from __future__ import annotations

from typing import Any, Callable

from carlib.base.registry import Registry
from carlib.errors import ConfigError
from carlib.models.hub import HUB_DEFAULT_INPUT_RANGE, HUB_DEFAULT_SIZE, check_hub_backbone, hub_handle, is_hub_backbone
from carlib.models.spec import KNOB_LIMITS, KNOB_MEANING, PREPROCESSING, BackboneSpec

__all__ = ["BackboneSpec", "BACKBONES", "register_backbone", "get_backbone", "available_backbones", "knob_backbones",
           "check_knobs", "hub_backbone_spec", "PREPROCESSING", "KNOB_LIMITS"]

BACKBONES: Registry[BackboneSpec] = Registry(
    "backbone", "a SavedModel as hub:<URL or folder>; or register your own with "
                "carlib.register_backbone(carlib.BackboneSpec(...))")


def register_backbone(spec: BackboneSpec, *, overwrite: bool = False) -> BackboneSpec:
    """Add a backbone to the registry (how users plug in their own)."""
    if spec.preprocessing not in PREPROCESSING:
        raise ConfigError(f"preprocessing={spec.preprocessing!r} is unknown: expected one of {sorted(PREPROCESSING)}.")
    return BACKBONES.register(spec.name, spec, overwrite=overwrite)


def available_backbones() -> tuple[str, ...]:
    """Names of all registered backbones, sorted."""
    return BACKBONES.names()


def get_backbone(name: str) -> BackboneSpec:
    """The spec registered under ``name``; an unknown name lists the known ones.

    ``hub:<handle or SavedModel folder>`` names a TF-Hub-style feature extractor
    (:mod:`carlib.models.hub`); its spec is made on demand (input range ``unit``, 224 px by default).
    """
    if is_hub_backbone(name):
        return hub_backbone_spec(name)
    return BACKBONES.get(name)


def hub_backbone_spec(name: str, input_range: str = HUB_DEFAULT_INPUT_RANGE) -> BackboneSpec:
    """The spec of a ``hub:`` backbone (made on demand, not registered): a SavedModel feature extractor."""
    check_hub_backbone(name)
    handle = hub_handle(name)

    def build(input_shape, weights):
        if weights is not None:
            raise ConfigError(f"backbone {name!r} carries its own weights in the SavedModel: use weights=None.")
        from carlib.models.hub_layer import hub_feature_extractor  # deferred: TensorFlow, only when a model is built

        return hub_feature_extractor(name, handle, input_shape)

    return BackboneSpec(name, build, input_range, HUB_DEFAULT_SIZE, f"SavedModel feature extractor {handle}")


def knob_backbones() -> tuple[str, ...]:
    """Names of the registered backbones whose width and depth can be set (carlib's compact family)."""
    return tuple(name for name in available_backbones() if BACKBONES.get(name).knobs)


def check_knobs(backbone: str, width: int | None = None, depth: int | None = None) -> dict[str, int]:
    """The knobs to pass to ``backbone``'s builder; ``None`` keeps the variant's own value.

    Raises :class:`~carlib.errors.ConfigError` naming the problem and the fix: a knob for a
    backbone without knobs (the ``keras.applications`` nets have fixed sizes), or a value
    outside :data:`KNOB_LIMITS`.
    """
    given = {name: value for name, value in (("width", width), ("depth", depth)) if value is not None}
    if not given:
        return {}
    spec = get_backbone(backbone)
    for name, value in given.items():
        if name not in spec.knobs:
            raise ConfigError(f"backbone_{name}={value!r}: backbone {backbone!r} has a fixed architecture; width and "
                              f"depth apply to carlib's compact backbones ({', '.join(knob_backbones())}). "
                              f"Leave backbone_{name} unset, or choose one of those.")
        low, high = KNOB_LIMITS[name]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(f"backbone_{name}={value!r} is out of range: expected an integer in [{low}, {high}] "
                              f"({KNOB_MEANING[name]}; {backbone!r} uses {spec.knobs[name]}).")
    return given


# ------------------------------------------------------------------------- built-in backbones
def _applications(constructor_name: str, **extra: Any) -> Callable[..., Any]:
    """A builder for a ``keras.applications`` model without its top."""

    def build(input_shape, weights):
        import keras  # deferred: TensorFlow, only when a model is built

        constructor = getattr(keras.applications, constructor_name)
        return constructor(include_top=False, weights=weights, input_shape=input_shape, pooling=None, **extra)

    return build


def _compact(family: str, name: str, default_size: int, description: str, **knobs: int) -> BackboneSpec:
    """A compact from-scratch variant (:mod:`carlib.models.compact`): its own width and depth unless overridden."""

    def build(input_shape, weights, **overrides):
        from carlib.models import compact  # deferred: TensorFlow, only when a model is built

        return getattr(compact, family)(input_shape, weights, name=name, **{**knobs, **overrides})

    return BackboneSpec(name, build, "unit", default_size, description, knobs)


for _spec in (
    # The compact from-scratch family (x/255 in; width and depth can be set, see KNOB_LIMITS).
    _compact("plain_cnn", "simple_cnn", 64, "small plain CNN, fast from scratch on a CPU", width=16, depth=1),
    _compact("plain_cnn", "cnn_small", 64, "plain CNN, two convolutions per stage", width=16, depth=2),
    _compact("residual_cnn", "resnet_tiny", 64, "small ResNet (1 block per stage), from scratch on a CPU",
             width=16, depth=1),
    _compact("residual_cnn", "resnet_small", 64, "ResNet with 2 blocks per stage, from scratch on a CPU",
             width=24, depth=2),
    BackboneSpec("xception", _applications("Xception"), "symmetric", 299, "Xception (keras.applications)"),
    BackboneSpec("efficientnet_b0", _applications("EfficientNetB0"), "raw", 224, "EfficientNetB0, rescales inside"),
    BackboneSpec("efficientnet_b3", _applications("EfficientNetB3"), "raw", 300, "EfficientNetB3, rescales inside"),
    BackboneSpec("efficientnet_v2_b0", _applications("EfficientNetV2B0", include_preprocessing=True), "raw", 224,
                 "EfficientNetV2B0 with its preprocessing inside"),
    BackboneSpec("efficientnet_v2_s", _applications("EfficientNetV2S", include_preprocessing=True), "raw", 384,
                 "EfficientNetV2S with its preprocessing inside"),
    BackboneSpec("mobilenet_v3_small", _applications("MobileNetV3Small", include_preprocessing=True), "raw", 224,
                 "MobileNetV3Small with its preprocessing inside; fast on CPUs"),
    BackboneSpec("convnext_tiny", _applications("ConvNeXtTiny", include_preprocessing=True), "raw", 224,
                 "ConvNeXtTiny with its preprocessing inside; too slow for CPUs"),
):
    register_backbone(_spec)
del _spec
