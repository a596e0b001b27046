"""EfficientNet-Lite in Keras 3, and the conversion of its PyTorch ImageNet weights.

EfficientNet-Lite (Tan & Le's EfficientNet, re-tuned for mobile accelerators) is EfficientNet-B0's
block table without squeeze-excitation, with ReLU6 instead of swish, a stem and head that do not
grow with the variant, BatchNorm ε = 1e-3 and TensorFlow's "same" padding. It takes (x − 127) / 128:
that rescaling is the model's first layer, so the model takes raw 0–255 RGB like every carlib model.

Layer names follow ``keras.applications.EfficientNet`` (``stem_conv``, ``block6c_dwconv``,
``top_conv``), so "the top N blocks" means the same thing for both (:mod:`carlib.train.stages`).
"""

from __future__ import annotations

import dataclasses
import math
import string

import keras
import numpy as np

from carlib.errors import WeightsError

__all__ = ["LiteVariant", "LITE_VARIANTS", "efficientnet_lite", "keras_weights_from_torch", "set_layer_weights",
           "IMAGENET_CLASSES"]

IMAGENET_CLASSES = 1000
_BN_EPSILON = 1e-3
_DROP_CONNECT_RATE = 0.2
_STEM_FILTERS, _HEAD_FILTERS = 32, 1280  # fixed in every Lite variant


@dataclasses.dataclass(frozen=True)
class _StageArgs:
    repeats: int
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int


# EfficientNet-B0's block table: 16 blocks in 7 stages.
_B0_STAGES = (
    _StageArgs(1, 3, 1, 1, 32, 16),
    _StageArgs(2, 3, 2, 6, 16, 24),
    _StageArgs(2, 5, 2, 6, 24, 40),
    _StageArgs(3, 3, 2, 6, 40, 80),
    _StageArgs(3, 5, 1, 6, 80, 112),
    _StageArgs(4, 5, 2, 6, 112, 192),
    _StageArgs(1, 3, 1, 6, 192, 320),
)


@dataclasses.dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite size: width and depth multipliers, the resolution it was trained at, its dropout."""

    name: str
    width: float
    depth: float
    resolution: int
    dropout: float


LITE_VARIANTS = {
    "lite0": LiteVariant("lite0", 1.0, 1.0, 224, 0.2),
    "lite1": LiteVariant("lite1", 1.0, 1.1, 240, 0.2),
    "lite2": LiteVariant("lite2", 1.1, 1.2, 260, 0.3),
}


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def _blocks(variant: LiteVariant) -> list[tuple[str, _StageArgs]]:
    """Each block's Keras name prefix and arguments, bottom to top (the first and last stage never repeat more)."""
    blocks = []
    for index, stage in enumerate(_B0_STAGES):
        fixed = index in (0, len(_B0_STAGES) - 1)
        repeats = stage.repeats if fixed else int(math.ceil(variant.depth * stage.repeats))
        filters_in = _round_filters(stage.filters_in, variant.width)
        filters_out = _round_filters(stage.filters_out, variant.width)
        for repeat in range(repeats):
            args = dataclasses.replace(stage, filters_in=filters_in if repeat == 0 else filters_out,
                                       filters_out=filters_out, stride=stage.stride if repeat == 0 else 1)
            blocks.append((f"block{index + 1}{string.ascii_lowercase[repeat]}", args))
    return blocks


def efficientnet_lite(variant: str, input_shape: tuple[int, int, int], *, include_top: bool = False,
                      name: str | None = None) -> keras.Model:
    """An EfficientNet-Lite with random weights: raw 0–255 RGB in; features (or 1000 ImageNet probabilities) out.

    ``include_top=False`` ends at the head's 1×1 convolution (1280 channels, ReLU6), unpooled, as
    ``keras.applications`` models without top do; ``True`` adds global pooling, dropout and the
    1000-class softmax. Load weights with :func:`keras_weights_from_torch` or ``load_weights``.
    """
    spec = LITE_VARIANTS[variant]
    layers = keras.layers
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Rescaling(1 / 128.0, offset=-127.0 / 128.0, name="lite_preprocess")(inputs)
    x = layers.Conv2D(_STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = layers.BatchNormalization(epsilon=_BN_EPSILON, name="stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_activation")(x)
    blocks = _blocks(spec)
    for number, (prefix, args) in enumerate(blocks):
        x = _mbconv(x, prefix, args, drop_rate=_DROP_CONNECT_RATE * number / len(blocks))
    x = layers.Conv2D(_HEAD_FILTERS, 1, padding="same", use_bias=False, name="top_conv")(x)
    x = layers.BatchNormalization(epsilon=_BN_EPSILON, name="top_bn")(x)
    x = layers.ReLU(6.0, name="top_activation")(x)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dropout(spec.dropout, name="top_dropout")(x)
        x = layers.Dense(IMAGENET_CLASSES, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, x, name=name or f"efficientnet_{variant}")


def _mbconv(x, prefix: str, args: _StageArgs, drop_rate: float):
    """An inverted-residual block: [1×1 expand] → depthwise k×k → 1×1 project, [+ input]; no squeeze-excitation."""
    layers = keras.layers
    inputs = x
    expanded = args.filters_in * args.expand
    if args.expand != 1:
        x = layers.Conv2D(expanded, 1, padding="same", use_bias=False, name=f"{prefix}_expand_conv")(x)
        x = layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{prefix}_expand_bn")(x)
        x = layers.ReLU(6.0, name=f"{prefix}_expand_activation")(x)
    x = layers.DepthwiseConv2D(args.kernel, strides=args.stride, padding="same", use_bias=False,
                               name=f"{prefix}_dwconv")(x)
    x = layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{prefix}_bn")(x)
    x = layers.ReLU(6.0, name=f"{prefix}_activation")(x)
    x = layers.Conv2D(args.filters_out, 1, padding="same", use_bias=False, name=f"{prefix}_project_conv")(x)
    x = layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{prefix}_project_bn")(x)
    if args.stride == 1 and args.filters_in == args.filters_out:
        if drop_rate > 0:  # stochastic depth: drop the whole residual branch of an image
            x = layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=f"{prefix}_drop")(x)
        x = layers.Add(name=f"{prefix}_add")([x, inputs])
    return x


def _conv(weight: np.ndarray) -> np.ndarray:
    return weight.transpose(2, 3, 1, 0)  # OIHW → HWIO


def _depthwise(weight: np.ndarray) -> np.ndarray:
    return weight.transpose(2, 3, 0, 1)  # (C, 1, kh, kw) → (kh, kw, C, 1)


def _batchnorm(state: dict[str, np.ndarray], torch_name: str) -> list[np.ndarray]:
    return [state[f"{torch_name}.{part}"] for part in ("weight", "bias", "running_mean", "running_var")]


def keras_weights_from_torch(variant: str, state: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """The weights of each layer of :func:`efficientnet_lite` (``include_top=True``), by layer name, from the
    PyTorch state dict of the ``efficientnet_lite_pytorch`` port (``_conv_stem``, ``_blocks.N.*``, ``_fc``).

    Raises :class:`~carlib.errors.WeightsError` when a tensor is missing or has another shape than
    the architecture needs (a file of another variant, say).
    """
    spec = LITE_VARIANTS[variant]
    converted: dict[str, list[np.ndarray]] = {}
    try:
        converted["stem_conv"] = [_conv(state["_conv_stem.weight"])]
        converted["stem_bn"] = _batchnorm(state, "_bn0")
        for number, (prefix, args) in enumerate(_blocks(spec)):
            torch_block = f"_blocks.{number}"
            if args.expand != 1:
                converted[f"{prefix}_expand_conv"] = [_conv(state[f"{torch_block}._expand_conv.weight"])]
                converted[f"{prefix}_expand_bn"] = _batchnorm(state, f"{torch_block}._bn0")
            converted[f"{prefix}_dwconv"] = [_depthwise(state[f"{torch_block}._depthwise_conv.weight"])]
            converted[f"{prefix}_bn"] = _batchnorm(state, f"{torch_block}._bn1")
            converted[f"{prefix}_project_conv"] = [_conv(state[f"{torch_block}._project_conv.weight"])]
            converted[f"{prefix}_project_bn"] = _batchnorm(state, f"{torch_block}._bn2")
        converted["top_conv"] = [_conv(state["_conv_head.weight"])]
        converted["top_bn"] = _batchnorm(state, "_bn1")
        converted["predictions"] = [state["_fc.weight"].T, state["_fc.bias"]]
    except KeyError as err:
        raise WeightsError(f"the PyTorch weights lack tensor {err.args[0]!r}: they are not EfficientNet-{variant} "
                           "weights of the efficientnet_lite_pytorch layout.") from None
    return converted


def set_layer_weights(model: keras.Model, weights: dict[str, list[np.ndarray]]) -> None:
    """Put ``weights`` (layer name → arrays) into ``model``; every named layer must exist with matching shapes."""
    for layer_name, arrays in weights.items():
        try:
            layer = model.get_layer(layer_name)
        except ValueError:
            raise WeightsError(f"the converted weights name layer {layer_name!r}, which {model.name!r} lacks.") from None
        expected = [tuple(v.shape) for v in layer.weights]
        given = [tuple(a.shape) for a in arrays]
        if expected != given:
            raise WeightsError(f"layer {layer_name!r} of {model.name!r} has weight shapes {expected}, the file gives "
                               f"{given}: the weights belong to another variant.")
        layer.set_weights([np.asarray(a, dtype=v.dtype) for a, v in zip(arrays, layer.weights)])
