"""The backbone registry: a name → how to build it, what input it wants, its default size.

Every carlib model takes raw 0–255 RGB pixels. The conversion each backbone needs
(R6, R12: Xception wants [-1, 1]; EfficientNet rescales inside and wants raw pixels) is a
layer inside the model, so training, evaluation, TTA and export share one input contract.
Explicit parameter > backbone default > global default, as in timm's data config.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Mapping

import keras

from carlib import hub  # also registers carlib>HubBackbone, so .keras files holding one deserialize
from carlib import losses  # noqa: F401  registers the label-smoothing loss, so compiled .keras files load

__all__ = [
    "BackboneSpec",
    "register_backbone",
    "get_backbone",
    "available_backbones",
    "build_model",
    "preprocessing_layer",
    "feature_extractor",
    "InferenceModeBackbone",
    "PREPROCESSING",
    "KNOB_LIMITS",
    "knob_backbones",
    "check_knobs",
    "plain_cnn",
    "residual_cnn",
]

# What each preprocessing mode maps raw 0–255 RGB to, i.e. what the backbone's first layer sees.
PREPROCESSING: dict[str, tuple[float, float]] = {
    "raw": (0.0, 255.0),  # the backbone contains its own rescaling (EfficientNet, V2, MobileNetV3, ConvNeXt)
    "symmetric": (-1.0, 1.0),  # x / 127.5 - 1: Xception, MobileNetV2, ResNetV2 ("tf" mode)
    "unit": (0.0, 1.0),  # x / 255: carlib's own from-scratch nets
}


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """A named feature extractor.

    ``build(input_shape, weights, **knobs)`` returns a Keras model without classification top
    whose output is a feature map or vector; ``preprocessing`` is one of :data:`PREPROCESSING`,
    the scaling carlib applies in front of it. ``knobs`` maps the size knobs the builder
    accepts (``width``: channels of the first stage, doubled per stage; ``depth``: layers or
    residual blocks per stage) to this variant's values; empty for fixed architectures.
    """

    name: str
    build: Callable[..., keras.Model]
    preprocessing: str
    default_size: int
    description: str = ""
    knobs: Mapping[str, int] = dataclasses.field(default_factory=dict)

    @property
    def input_range(self) -> tuple[float, float]:
        """The pixel range the backbone's own first layer receives."""
        return PREPROCESSING[self.preprocessing]


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec, *, overwrite: bool = False) -> BackboneSpec:
    """Add a backbone to the registry (how users plug in their own)."""
    if spec.preprocessing not in PREPROCESSING:
        raise ValueError(f"preprocessing={spec.preprocessing!r} is unknown: expected one of {sorted(PREPROCESSING)}.")
    if spec.name in _REGISTRY and not overwrite:
        raise ValueError(f"backbone {spec.name!r} is already registered; pass overwrite=True to replace it.")
    _REGISTRY[spec.name] = spec
    return spec


def available_backbones() -> tuple[str, ...]:
    """Names of all registered backbones, sorted."""
    return tuple(sorted(_REGISTRY))


# Inclusive bounds of the size knobs: below them a net cannot learn the task, above them it is no longer compact.
KNOB_LIMITS: dict[str, tuple[int, int]] = {"width": (4, 256), "depth": (1, 8)}


def knob_backbones() -> tuple[str, ...]:
    """Names of the registered backbones whose width and depth can be set (carlib's compact family)."""
    return tuple(name for name in available_backbones() if _REGISTRY[name].knobs)


def check_knobs(backbone: str, width: int | None = None, depth: int | None = None) -> dict[str, int]:
    """The knobs to pass to ``backbone``'s builder; ``None`` keeps the variant's own value.

    Raises ``ValueError`` naming the problem and the fix: a knob for a backbone without knobs
    (the ``keras.applications`` nets have fixed sizes), or a value outside :data:`KNOB_LIMITS`.
    """
    given = {name: value for name, value in (("width", width), ("depth", depth)) if value is not None}
    if not given:
        return {}
    spec = get_backbone(backbone)
    for name, value in given.items():
        if name not in spec.knobs:
            raise ValueError(f"backbone_{name}={value!r}: backbone {backbone!r} has a fixed architecture; width and "
                             f"depth apply to carlib's compact backbones ({', '.join(knob_backbones())}). "
                             f"Leave backbone_{name} unset, or choose one of those.")
        low, high = KNOB_LIMITS[name]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"backbone_{name}={value!r} is out of range: expected an integer in [{low}, {high}] "
                             f"({_KNOB_MEANING[name]}; {backbone!r} uses {spec.knobs[name]}).")
    return given


_KNOB_MEANING = {"width": "channels of the first stage, doubled at each of the 4 stages",
                 "depth": "conv layers or residual blocks per stage"}


def get_backbone(name: str) -> BackboneSpec:
    """The spec registered under ``name``; an unknown name lists the known ones.

    ``hub:<handle or SavedModel folder>`` names a TF-Hub-style feature extractor
    (:mod:`carlib.hub`); its spec is made on demand (input range ``unit``, 224 px by default).
    """
    if hub.is_hub_backbone(name):
        return hub.hub_backbone_spec(name)
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown backbone {name!r}. Known backbones: {', '.join(available_backbones())}.") from None


def preprocessing_layer(mode: str) -> keras.layers.Layer:
    """The layer mapping raw 0–255 RGB to the range ``mode`` names."""
    low, high = PREPROCESSING[mode]
    scale = (high - low) / 255.0
    return keras.layers.Rescaling(scale=scale, offset=low, name=f"preprocess_{mode}")


def build_model(
    backbone: str,
    num_classes: int,
    image_size: int | None = None,
    *,
    weights: str | None = None,
    dropout: float = 0.2,
    bn_mode: str = "auto",
    hidden_units: int = 0,
    head_batchnorm: bool = False,
    input_range: str | None = None,
    width: int | None = None,
    depth: int | None = None,
) -> keras.Model:
    """Raw 0–255 RGB in, class probabilities out: preprocessing → backbone → pooling → head → dense.

    ``weights``: ``"imagenet"`` (downloads; needs internet), ``None`` (random init) or the
    path of a local weights file for the backbone. ``bn_mode``: ``"frozen"`` calls the
    backbone with ``training=False`` so BatchNorm keeps its statistics (right for pretrained
    weights, R13); ``"train"`` lets BatchNorm update; ``"auto"`` freezes only pretrained
    BatchNorm (ImageNet weights, a weights file, or a ``hub:`` SavedModel).

    The head: global average pooling → [BatchNorm if ``head_batchnorm`` (R16)] →
    [``Dense(hidden_units, relu)`` if ``hidden_units`` > 0; none by default, R17] → dropout →
    ``Dense(num_classes)`` in float32. ``input_range`` overrides the spec's preprocessing mode
    (a key of :data:`PREPROCESSING`; used for ``hub:`` backbones, whose range is a parameter).
    ``width`` / ``depth`` resize carlib's compact from-scratch backbones (:func:`knob_backbones`):
    channels of the first stage (doubled per stage) and layers or residual blocks per stage;
    ``None`` keeps the variant's own.
    """
    spec = get_backbone(backbone)
    knobs = check_knobs(backbone, width, depth)
    preprocessing = input_range or spec.preprocessing
    if preprocessing not in PREPROCESSING:
        raise ValueError(f"input_range={preprocessing!r} is unknown: expected one of {sorted(PREPROCESSING)}.")
    size = image_size or spec.default_size
    if weights not in (None, "imagenet"):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights file {str(path)!r} does not exist.")
        weights = str(path)
    inputs = keras.Input(shape=(size, size, 3), name="image")
    x = preprocessing_layer(preprocessing)(inputs)
    extractor = spec.build((size, size, 3), weights, **knobs)
    is_hub = hub.is_hub_backbone(spec.name)
    if is_hub and bn_mode == "train" and not _hub_layer(extractor).accepts_training:
        raise ValueError(f"bn_mode='train' needs a SavedModel whose endpoint takes a training argument; "
                         f"{spec.name!r} uses {_hub_layer(extractor).call_endpoint!r}, which always runs in "
                         "inference mode. Use bn_mode='auto' or 'frozen'.")
    pretrained = weights is not None or is_hub
    frozen_bn = bn_mode == "frozen" or (bn_mode == "auto" and pretrained)
    x = InferenceModeBackbone(extractor, name="backbone_inference_mode")(x) if frozen_bn else extractor(x)
    if len(x.shape) == 4:
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    if head_batchnorm:
        # momentum 0.9 for the same reason as in simple_cnn: short runs leave 0.99's statistics near init.
        x = keras.layers.BatchNormalization(momentum=0.9, name="head_bn")(x)
    if hidden_units:
        x = keras.layers.Dense(hidden_units, activation="relu", name="head_hidden")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="classifier")(x)
    return keras.Model(inputs, outputs, name="carlib_hub" if is_hub else f"carlib_{spec.name}")


def _hub_layer(extractor: keras.Model):
    return next(layer for layer in extractor.layers if isinstance(layer, hub.HubBackbone))


@keras.saving.register_keras_serializable(package="carlib")
class InferenceModeBackbone(keras.layers.Layer):
    """Runs the wrapped backbone with ``training=False`` even while the model trains.

    Keras 3's ``fit`` re-passes ``training=True`` through a functional graph, overriding a
    ``backbone(x, training=False)`` written when the model was built (keras-team/keras#20285),
    so BatchNorm statistics would drift during fine-tuning (R13). Inside this layer the
    argument is fixed; the backbone's weights stay trainable.
    """

    def __init__(self, backbone: keras.Model, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone

    def build(self, input_shape):
        self.backbone.build(input_shape)
        super().build(input_shape)

    def call(self, inputs):
        return self.backbone(inputs, training=False)

    def compute_output_shape(self, input_shape):
        return self.backbone.compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "backbone": keras.saving.serialize_keras_object(self.backbone)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)


def feature_extractor(model: keras.Model) -> keras.Model:
    """The backbone inside a model built by :func:`build_model`."""
    for layer in model.layers:
        if isinstance(layer, InferenceModeBackbone):
            return layer.backbone
        if isinstance(layer, keras.Model):
            return layer
    raise ValueError(f"model {model.name!r} has no backbone sub-model")


def load_model(path, *, compile: bool = True) -> keras.Model:
    """Load a ``.keras`` file saved by carlib, ``hub:`` backbones included.

    A model holding a :class:`carlib.hub.HubBackbone` re-opens its SavedModel, which Keras
    refuses in safe mode (a SavedModel carries graph code); such files are loaded with
    ``safe_mode=False``, everything else with Keras' defaults. Load only files you trust.
    """
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {str(path)!r} does not exist.")
    with zipfile.ZipFile(path) as archive:
        holds_savedmodel = "carlib>HubBackbone" in archive.read("config.json").decode()
    return keras.models.load_model(path, compile=compile, safe_mode=not holds_savedmodel)


def _applications(constructor_name: str, **extra) -> Callable[[tuple[int, int, int], str | None], keras.Model]:
    """A builder for a ``keras.applications`` model without its top."""

    def build(input_shape, weights):
        constructor = getattr(keras.applications, constructor_name)
        return constructor(include_top=False, weights=weights, input_shape=input_shape, pooling=None, **extra)

    return build


def _own_weights(model: keras.Model, weights: str | None) -> keras.Model:
    """Load a local weights file into one of carlib's from-scratch nets (there are no ImageNet weights)."""
    if weights == "imagenet":
        raise ValueError(f"{model.name} has no ImageNet weights: use weights=None or a local weights file.")
    if weights:
        model.load_weights(weights)
    return model


def _conv_bn(x, filters: int, prefix: str, *, kernel: int = 3, gamma_zero: bool = False):
    """Conv (no bias: BatchNorm follows) then BatchNorm with momentum 0.9.

    Momentum 0.9, not Keras' 0.99: short CPU runs take a few hundred steps, and the slow
    default leaves the moving statistics (used at validation) near their init (docs/NOTES.md).
    """
    x = keras.layers.Conv2D(filters, kernel, padding="same", use_bias=False, name=f"{prefix}_conv")(x)
    return keras.layers.BatchNormalization(momentum=0.9, gamma_initializer="zeros" if gamma_zero else "ones",
                                           name=f"{prefix}_bn")(x)


def plain_cnn(input_shape, weights: str | None = None, *, width: int = 16, depth: int = 1,
              name: str = "plain_cnn") -> keras.Model:
    """A plain CNN for CPUs and from-scratch training: 4 stages of ``depth`` × conv-BN-ReLU, 2× max-pool between.

    Stage *i* has ``width × 2^i`` channels. ``simple_cnn`` is width 16, depth 1: ~16 M
    multiply-adds per 64 px image, about 5× faster on 2 cores than two 32–192-wide
    convolutions per stage. ``cnn_small`` (depth 2) costs about twice as much per image and, for
    the same CPU time, learned the embedded data better (the CPU recipe study, README).
    """
    inputs = keras.Input(shape=input_shape)
    x = inputs
    for i in range(4):
        for j in range(depth):
            # depth 1 keeps simple_cnn's original layer names (block0_conv, block0_bn, ...)
            prefix = f"block{i}" if j == 0 else f"block{i}_{j + 1}"
            x = _conv_bn(x, width * 2**i, prefix)
            x = keras.layers.ReLU(name=f"{prefix}_relu")(x)
        if i < 3:
            x = keras.layers.MaxPooling2D(name=f"block{i}_pool")(x)
    return _own_weights(keras.Model(inputs, x, name=name), weights)


def residual_cnn(input_shape, weights: str | None = None, *, width: int = 16, depth: int = 1,
                 name: str = "residual_cnn") -> keras.Model:
    """A small ResNet for CPUs and small datasets: residual blocks between max-pooling steps.

    Stem: conv-BN-ReLU at full resolution, then 4 stages, each starting with a 2× max-pool
    and holding ``depth`` basic blocks (conv-BN-ReLU-conv-BN plus the shortcut, then ReLU;
    He et al. 2016) with ``width × 2^i`` channels; the first block of a wider stage has a 1×1
    projection shortcut. Max-pooling between stages, as in the ResNet-9 that trains CIFAR-10
    in minutes (Page 2018), instead of ResNet's stride-2 convolutions: with strided blocks
    this net memorised the embedded data's 500 training images within 8 epochs (training
    accuracy 0.97, validation at chance, docs/NOTES.md). The last BatchNorm of each block
    starts at γ = 0, so every block starts as the identity (Goyal et al. 2017).
    """
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.ReLU(name="stem_relu")(_conv_bn(inputs, width, "stem"))
    for i in range(4):
        filters = width * 2**i
        x = keras.layers.MaxPooling2D(name=f"stage{i}_pool")(x)
        for j in range(depth):
            prefix = f"stage{i}_block{j}"
            shortcut = x if x.shape[-1] == filters else _conv_bn(x, filters, f"{prefix}_shortcut", kernel=1)
            y = keras.layers.ReLU(name=f"{prefix}_relu1")(_conv_bn(x, filters, f"{prefix}_1"))
            y = _conv_bn(y, filters, f"{prefix}_2", gamma_zero=True)
            x = keras.layers.ReLU(name=f"{prefix}_out")(keras.layers.Add(name=f"{prefix}_add")([shortcut, y]))
    return _own_weights(keras.Model(inputs, x, name=name), weights)


def _variant(builder: Callable[..., keras.Model], name: str, **defaults: int) -> Callable[..., keras.Model]:
    """The builder of a named variant: its own width and depth unless the caller's knobs override them."""

    def build(input_shape, weights, **knobs):
        return builder(input_shape, weights, name=name, **{**defaults, **knobs})

    return build


def _compact(builder: Callable[..., keras.Model], name: str, default_size: int, description: str,
             **knobs: int) -> BackboneSpec:
    return BackboneSpec(name, _variant(builder, name, **knobs), "unit", default_size, description, knobs)


for _spec in (
    # The compact from-scratch family (x/255 in; width and depth can be set, see KNOB_LIMITS).
    _compact(plain_cnn, "simple_cnn", 64, "small plain CNN, fast from scratch on a CPU", width=16, depth=1),
    _compact(plain_cnn, "cnn_small", 64, "plain CNN, two convolutions per stage", width=16, depth=2),
    _compact(residual_cnn, "resnet_tiny", 64, "small ResNet (1 block per stage), from scratch on a CPU",
             width=16, depth=1),
    _compact(residual_cnn, "resnet_small", 64, "ResNet with 2 blocks per stage, from scratch on a CPU",
             width=24, depth=2),
    BackboneSpec("xception", _applications("Xception"), "symmetric", 299, "Xception (keras.applications)"),
    BackboneSpec("efficientnet_b0", _applications("EfficientNetB0"), "raw", 224, "EfficientNetB0, rescales inside"),
    BackboneSpec("efficientnet_b3", _applications("EfficientNetB3"), "raw", 300, "EfficientNetB3, rescales inside"),
    BackboneSpec(
        "efficientnet_v2_b0",
        _applications("EfficientNetV2B0", include_preprocessing=True),
        "raw",
        224,
        "EfficientNetV2B0 with its preprocessing inside",
    ),
    BackboneSpec(
        "efficientnet_v2_s",
        _applications("EfficientNetV2S", include_preprocessing=True),
        "raw",
        384,
        "EfficientNetV2S with its preprocessing inside",
    ),
    BackboneSpec(
        "mobilenet_v3_small",
        _applications("MobileNetV3Small", include_preprocessing=True),
        "raw",
        224,
        "MobileNetV3Small with its preprocessing inside; fast on CPUs",
    ),
    BackboneSpec(
        "convnext_tiny",
        _applications("ConvNeXtTiny", include_preprocessing=True),
        "raw",
        224,
        "ConvNeXtTiny with its preprocessing inside; too slow for CPUs",
    ),
):
    register_backbone(_spec)
del _spec
