"""The backbone registry: a name → how to build it, what input it wants, its default size.

Every carlib model takes raw 0–255 RGB pixels. The conversion each backbone needs
(R6, R12: Xception wants [-1, 1]; EfficientNet rescales inside and wants raw pixels) is a
layer inside the model (:func:`carlib.models.build.build_model`), so training, evaluation, TTA
and export share one input contract. Explicit parameter > backbone default > global default,
as in timm's data config.

No TensorFlow is imported here: the built-in builders import Keras when they build.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from carlib.base.registry import Registry
from carlib.errors import ConfigError
from carlib.models.hub import HUB_DEFAULT_INPUT_RANGE, HUB_DEFAULT_SIZE, check_hub_backbone, hub_handle, is_hub_backbone
from carlib.models.spec import KNOB_LIMITS, KNOB_MEANING, PREPROCESSING, BackboneSpec

__all__ = ["BackboneSpec", "BACKBONES", "register_backbone", "get_backbone", "available_backbones", "knob_backbones",
           "check_knobs", "hub_backbone_spec", "keras_weights_requests", "PREPROCESSING", "KNOB_LIMITS"]

# the resolution each variant's ImageNet weights were trained at (efficientnet_lite.LITE_VARIANTS, which needs Keras)
LITE_DEFAULT_SIZES = {"lite0": 224, "lite1": 240, "lite2": 260}

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


def keras_weights_requests():
    """The files the registered keras.applications backbones ask Keras for (a generator: each costs a model build)."""
    from carlib.models.pretrained import keras_weights_request  # deferred: TensorFlow

    for name in available_backbones():
        spec = BACKBONES.get(name)
        if spec.keras_application:
            request = keras_weights_request(name, spec.build)
            if request is not None:
                yield request


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
def _applications(name: str, constructor_name: str, preprocessing: str, default_size: int, description: str,
                  **extra: Any) -> BackboneSpec:
    """A ``keras.applications`` model without its top; its ImageNet file comes from Keras' cache or a download."""

    def build(input_shape, weights):
        import keras  # deferred: TensorFlow, only when a model is built

        constructor = getattr(keras.applications, constructor_name)
        return constructor(include_top=False, weights=weights, input_shape=input_shape, pooling=None, **extra)

    def fetch_imagenet():
        from carlib.models.pretrained import check_keras_weights, keras_weights_request  # deferred: TensorFlow

        request = keras_weights_request(name, build)
        return check_keras_weights(request) if request is not None else None

    return BackboneSpec(name, build, preprocessing, default_size, description, fetch_imagenet=fetch_imagenet,
                        keras_application=constructor_name)


def _lite(variant: str, description: str) -> BackboneSpec:
    """EfficientNet-Lite (:mod:`carlib.models.efficientnet_lite`): ImageNet weights by default, from the
    ``carlib[pretrained]`` package, converted once into carlib's cache (:mod:`carlib.models.pretrained`)."""
    name = f"efficientnet_{variant}"

    def fetch_imagenet():
        from carlib.models.pretrained import lite_weights_file  # deferred: TensorFlow when converting

        return lite_weights_file(variant)

    def build(input_shape, weights):
        import keras  # deferred: TensorFlow, only when a model is built

        from carlib.models.efficientnet_lite import efficientnet_lite  # deferred: TensorFlow
        from carlib.models.pretrained import load_weights_file  # deferred: TensorFlow

        full = efficientnet_lite(variant, input_shape, include_top=True, name=f"{name}_imagenet")
        if weights == "imagenet":
            load_weights_file(full, fetch_imagenet(), "cached ImageNet weights file")
        elif weights is not None:
            load_weights_file(full, Path(weights), "weights file")
        # the features without the ImageNet classifier, as keras.applications' include_top=False
        return keras.Model(full.input, full.get_layer("top_activation").output, name=name)

    return BackboneSpec(name, build, "raw", LITE_DEFAULT_SIZES[variant], description, default_weights="imagenet",
                        fetch_imagenet=fetch_imagenet)


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
    _lite("lite0", "EfficientNet-Lite0 with ImageNet weights that install offline (carlib[pretrained]); "
                   "(x - 127) / 128 inside"),
    _lite("lite1", "EfficientNet-Lite1 (Lite0 deeper: 1.1x), ImageNet weights offline (carlib[pretrained])"),
    _lite("lite2", "EfficientNet-Lite2 (1.1x wider, 1.2x deeper), ImageNet weights offline (carlib[pretrained])"),
    _applications("xception", "Xception", "symmetric", 299, "Xception (keras.applications)"),
    _applications("efficientnet_b0", "EfficientNetB0", "raw", 224, "EfficientNetB0, rescales inside"),
    _applications("efficientnet_b3", "EfficientNetB3", "raw", 300, "EfficientNetB3, rescales inside"),
    _applications("efficientnet_v2_b0", "EfficientNetV2B0", "raw", 224, "EfficientNetV2B0 with its preprocessing "
                  "inside", include_preprocessing=True),
    _applications("efficientnet_v2_s", "EfficientNetV2S", "raw", 384, "EfficientNetV2S with its preprocessing inside",
                  include_preprocessing=True),
    _applications("mobilenet_v3_small", "MobileNetV3Small", "raw", 224, "MobileNetV3Small with its preprocessing "
                  "inside; fast on CPUs", include_preprocessing=True),
    _applications("convnext_tiny", "ConvNeXtTiny", "raw", 224, "ConvNeXtTiny with its preprocessing inside; too slow "
                  "for CPUs", include_preprocessing=True),
):
    register_backbone(_spec)
del _spec
