"""One trained model at several test image sizes (FixRes: Touvron et al., "Fixing the train-test resolution
discrepancy", NeurIPS 2019), so "bigger is better" (R21) is a measured curve.

The model is rebuilt at each size with the same weights (:func:`carlib.evaluate.predict.model_at_size`):
convolution and dense weights of a globally pooled CNN do not depend on the input size.
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd

from carlib.data.folders import ImageList
from carlib.errors import ConfigError
from carlib.evaluate.metrics import evaluate_predictions
from carlib.evaluate.predict import load_model, model_at_size, model_image_size, predict_images

__all__ = ["default_test_sizes", "resolution_curve"]


def default_test_sizes(train_size: int) -> list[int]:
    """Test sizes around the training size: ×0.75, ×1, ×8/7, ×9/7, ×10/7, rounded to multiples of 8.

    For 224 px that is 168, 224, 256, 288, 320 (the FixRes paper's range); the training
    size itself is always included.
    """
    sizes = {max(16, int(round(train_size * f / 8)) * 8) for f in (0.75, 8 / 7, 9 / 7, 10 / 7)}
    return sorted(sizes | {int(train_size)})


def resolution_curve(model_or_path, images: ImageList, sizes: Sequence[int] | None = None, *,
                     batch_size: int = 32) -> pd.DataFrame:
    """Accuracy of one trained model at several test image sizes (FixRes, Touvron et al., NeurIPS 2019).

    Each size rebuilds the model with the same weights (:func:`model_at_size`) and decodes the
    images at that size through the evaluation pipeline. Returns one row per size:
    ``image_size``, ``accuracy``, ``top2_accuracy``, ``n``, ``train_size`` (the model's own
    input size) and ``is_train_size``.
    """
    model = load_model(model_or_path)
    train_size = model_image_size(model)
    sizes = default_test_sizes(train_size) if sizes is None else sorted({int(s) for s in sizes})
    if not sizes:
        raise ConfigError("sizes is empty: give the test image sizes to evaluate, e.g. [224, 256, 288, 320].")
    rows = []
    for size in sizes:
        sized = model_at_size(model, size)
        metrics = evaluate_predictions(images.labels, predict_images(sized, images, batch_size=batch_size))
        rows.append({"image_size": size, "accuracy": metrics.accuracy, "top2_accuracy": metrics.top2_accuracy,
                     "n": metrics.n, "train_size": train_size, "is_train_size": size == train_size})
    return pd.DataFrame(rows)
