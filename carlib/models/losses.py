"""The training loss: sparse categorical cross-entropy, with optional label smoothing.

Keras 3's ``SparseCategoricalCrossentropy`` has no ``label_smoothing`` argument (only the
one-hot ``CategoricalCrossentropy`` has), and switching to one-hot labels would change the
pipeline and make Keras resolve ``metrics=["accuracy"]`` to categorical accuracy. This loss
takes the integer labels the pipeline yields, so the ``accuracy`` metric, records and plots
stay as they are.
"""

from __future__ import annotations

import keras

from carlib.errors import ConfigError

__all__ = ["SmoothedSparseCategoricalCrossentropy", "classification_loss"]


@keras.saving.register_keras_serializable(package="carlib")
class SmoothedSparseCategoricalCrossentropy(keras.losses.Loss):
    """Cross-entropy of integer labels against targets smoothed towards uniform (Szegedy et al. 2016).

    The target of an image of class *k* among *C* classes is ``1 - ε + ε/C`` for *k* and
    ``ε/C`` for every other class, as ``CategoricalCrossentropy(label_smoothing=ε)`` does
    with one-hot labels; ``ε = 0`` is plain sparse cross-entropy. Predictions are
    probabilities (carlib's classifier ends in a softmax).
    """

    def __init__(self, label_smoothing: float = 0.1, name: str = "smoothed_sparse_categorical_crossentropy",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        if not 0 <= float(label_smoothing) < 1:
            raise ConfigError(f"label_smoothing={label_smoothing!r} is out of range: expected a fraction in [0, 1), "
                             "e.g. 0.1.")
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        num_classes = keras.ops.shape(y_pred)[-1]
        labels = keras.ops.reshape(keras.ops.cast(y_true, "int32"), (-1,))
        one_hot = keras.ops.one_hot(labels, num_classes, dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(one_hot, y_pred, label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def classification_loss(label_smoothing: float = 0.0):
    """What ``compile`` gets: Keras' own sparse cross-entropy without smoothing (unchanged runs and files),
    :class:`SmoothedSparseCategoricalCrossentropy` with it."""
    if not label_smoothing:
        return "sparse_categorical_crossentropy"
    return SmoothedSparseCategoricalCrossentropy(label_smoothing)
