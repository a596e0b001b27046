"""carlib's compact from-scratch backbones for CPUs: a plain CNN and a small ResNet, with width and depth knobs.

Registered as ``simple_cnn``, ``cnn_small``, ``resnet_tiny`` and ``resnet_small``
(:mod:`carlib.models.registry`); they take x/255 pixels (``unit`` preprocessing inside the model).
"""

from __future__ import annotations

import keras

from carlib.errors import ConfigError

__all__ = ["plain_cnn", "residual_cnn"]


def _own_weights(model: keras.Model, weights: str | None) -> keras.Model:
    """Load a local weights file into one of carlib's from-scratch nets (there are no ImageNet weights)."""
    if weights == "imagenet":
        raise ConfigError(f"{model.name} has no ImageNet weights: use weights=None or a local weights file.")
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
    the same CPU time, learned the embedded data better (the CPU recipe study, docs/cpu-recipe.md).
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
