"""Test-time augmentation that really augments (R20), with diagnostics that prove it.

Each image is predicted ``passes`` times and the class probabilities are averaged.
Pass 0 is always the un-augmented image (so ``passes=1`` is plain prediction and the clean
view is always part of the mean); pass ``p >= 1`` applies one random draw of the TTA preset,
seeded by ``(seed, p)``. The draw is the *same for every image of a pass*: what pass ``p``
does to an image never depends on which other images are predicted with it, so
:func:`tta_pass_images` on a handful of images returns exactly what :func:`tta_predict` fed
the model for them (``tta_predict`` calls it batch by batch; a visualization cannot lie).

What a pass may do to an image is a TTA preset (:mod:`carlib.data.tta_presets`).
If every pass fed the model identical images, :func:`tta_predict` warns (:class:`TTAWarning`)
naming the preset: that is the reviewer's R20, ten identical passes averaged.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from carlib.data.augment import augment_image
from carlib.data.folders import ImageList
from carlib.data.pipeline import eval_dataset, resize_image
from carlib.data.tta_presets import available_tta_presets, build_tta_pipeline, check_tta_preset
from carlib.errors import ConfigError, DataError, TTAWarning
from carlib.models.build import model_image_size

__all__ = [
    "TTAWarning",
    "accuracy_by_passes",
    "TTADiagnostics",
    "TTAResult",
    "tta_pass_images",
    "tta_predict",
    "tta_over_batches",
    "load_image_batches",
    "MEANS",
]

MEANS = ("arithmetic", "geometric")
# Probabilities are clipped here before the logarithm of the geometric mean.
_GEOMETRIC_EPS = 1e-7


def _check_passes(passes) -> int:
    if isinstance(passes, bool) or not isinstance(passes, (int, np.integer)) or passes < 1:
        raise ConfigError(f"passes={passes!r} is out of range: expected an integer >= 1 (1 = no TTA, e.g. 8).")
    return int(passes)


def _pass_seed(seed: int, pass_index: int) -> int:
    """The albumentations seed of one pass: a pure function of (seed, pass)."""
    return int(np.random.SeedSequence([int(seed), int(pass_index)]).generate_state(1)[0])


def _as_uint8_batch(images: np.ndarray, image_size: int) -> np.ndarray:
    """Raw 0–255 RGB (uint8 or float) as an N×size×size×3 uint8 array, resized like the eval pipeline."""
    array = np.asarray(images)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3:
        raise DataError(f"images must be an N×H×W×3 RGB array (or an ImageList); got shape {array.shape}.")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.number):
            raise DataError(f"images must hold numbers 0–255; got dtype {array.dtype}.")
        low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
        if low < 0 or high > 255.5:
            raise DataError(f"images must be raw RGB in 0–255; values span [{low:g}, {high:g}].")
        if array.size and high <= 1.0:
            raise DataError(
                "images look scaled to [0, 1]; carlib models take raw 0–255 RGB and scale inside (R6). "
                "Pass the images before dividing by 255."
            )
        array = np.clip(np.round(array), 0, 255).astype(np.uint8)
    if array.shape[1:3] != (image_size, image_size):
        array = resize_image(array, image_size).numpy()  # the same resize as files get
    return array


def load_image_batches(images: ImageList | np.ndarray, image_size: int, batch_size: int = 32):
    """Yield the images as uint8 N×size×size×3 batches in order: files through the eval pipeline, arrays resized."""
    if isinstance(images, ImageList):
        for batch, _ in eval_dataset(images, image_size, batch_size, cache=False):
            yield batch.numpy().astype(np.uint8)  # the pipeline's floats are whole numbers 0–255
    else:
        array = _as_uint8_batch(images, image_size)
        for start in range(0, len(array), batch_size):
            yield array[start:start + batch_size]


def tta_pass_images(images: ImageList | np.ndarray, preset: str = "light", passes: int = 8, seed: int = 0, *,
                    image_size: int = 224, batch_size: int = 32) -> np.ndarray:
    """What each TTA pass feeds the model: a passes × N × size × size × 3 uint8 array.

    ``images`` is an :class:`~carlib.data.folders.ImageList` (decoded and resized by the
    evaluation pipeline) or raw 0–255 RGB arrays. Pass 0 is the un-augmented image; pass
    ``p >= 1`` applies the preset's draw seeded by ``(seed, p)`` to every image. Keep ``N``
    small (a few images to look at): the result holds every view in memory.
    """
    passes = _check_passes(passes)
    pipeline = build_tta_pipeline(preset, image_size)
    views = []
    for batch in load_image_batches(images, image_size, batch_size):
        out = np.empty((passes, *batch.shape), dtype=np.uint8)
        out[0] = batch
        for p in range(1, passes):
            if pipeline is None:
                out[p] = batch
                continue
            pass_seed = _pass_seed(seed, p)
            for i, image in enumerate(batch):
                out[p, i] = augment_image(pipeline, np.ascontiguousarray(image), pass_seed)
        views.append(out)
    if not views:
        return np.empty((passes, 0, image_size, image_size, 3), dtype=np.uint8)
    return np.concatenate(views, axis=1)


@dataclasses.dataclass(frozen=True, eq=False)
class TTADiagnostics:
    """How much the passes disagree, i.e. whether TTA did anything.

    - ``pass_agreement[p]``: fraction of images whose pass-``p`` class equals the TTA (mean) class;
    - ``per_image_spread[i]``: standard deviation across passes of the probability image ``i``
      gives its TTA class; ``mean_spread`` is its mean over images;
    - ``changed[i]``: the passes do not all predict the same class for image ``i``;
      ``n_changed`` counts them;
    - ``identical_passes``: every pass fed the model exactly the same images (TTA did nothing).
    """

    preset: str
    passes: int
    pass_agreement: np.ndarray
    per_image_spread: np.ndarray
    changed: np.ndarray
    identical_passes: bool

    @property
    def mean_spread(self) -> float:
        """Mean over images of the spread of the TTA class's probability across passes."""
        return float(self.per_image_spread.mean()) if self.per_image_spread.size else 0.0

    @property
    def n_changed(self) -> int:
        """How many images change their predicted class across passes."""
        return int(self.changed.sum())

    def to_dict(self) -> dict:
        """Plain numbers (JSON-serialisable) for printing or recording."""
        return {
            "preset": self.preset,
            "passes": self.passes,
            "pass_agreement": [float(a) for a in self.pass_agreement],
            "mean_spread": self.mean_spread,
            "n_changed": self.n_changed,
            "n_images": int(self.changed.size),
            "identical_passes": self.identical_passes,
        }

    def summary(self) -> str:
        """One line for logs and the CLI."""
        agreement = ", ".join(f"{a:.2f}" for a in self.pass_agreement)
        flag = "  IDENTICAL PASSES: TTA did nothing" if self.identical_passes else ""
        return (f"TTA preset {self.preset!r}, {self.passes} passes: agreement with the mean per pass [{agreement}], "
                f"mean spread {self.mean_spread:.4f}, {self.n_changed}/{self.changed.size} images change class "
                f"across passes{flag}")


@dataclasses.dataclass(frozen=True, eq=False)
class TTAResult:
    """Predictions of :func:`tta_predict`: the mean over passes, each pass, and diagnostics."""

    probabilities: np.ndarray  # N × C, the mean over passes
    per_pass: np.ndarray  # passes × N × C
    diagnostics: TTADiagnostics
    preset: str
    passes: int
    seed: int
    mean: str
    image_size: int
    source: ImageList | np.ndarray = dataclasses.field(repr=False)

    @property
    def predictions(self) -> np.ndarray:
        """The TTA class index of each image."""
        return self.probabilities.argmax(axis=1)

    def pass_images(self, indices: Sequence[int]) -> np.ndarray:
        """The exact views the passes fed the model for the images at ``indices`` (passes × n × H × W × 3)."""
        indices = np.asarray(indices, dtype=np.int64)
        subset = self.source.subset(indices) if isinstance(self.source, ImageList) else np.asarray(self.source)[indices]
        return tta_pass_images(subset, self.preset, self.passes, self.seed, image_size=self.image_size)


def _average(per_pass: np.ndarray, mean: str) -> np.ndarray:
    if mean == "arithmetic":
        return per_pass.mean(axis=0)
    log_mean = np.log(np.clip(per_pass, _GEOMETRIC_EPS, 1.0)).mean(axis=0)
    geometric = np.exp(log_mean)
    return geometric / geometric.sum(axis=1, keepdims=True)  # renormalised: rows are probabilities again


def _diagnostics(per_pass: np.ndarray, probabilities: np.ndarray, preset: str, identical: bool) -> TTADiagnostics:
    mean_class = probabilities.argmax(axis=1)
    pass_classes = per_pass.argmax(axis=2)  # passes × N
    n = probabilities.shape[0]
    chosen = per_pass[:, np.arange(n), mean_class]  # passes × N: each pass's probability of the TTA class
    return TTADiagnostics(
        preset=preset,
        passes=per_pass.shape[0],
        pass_agreement=(pass_classes == mean_class[None]).mean(axis=1) if n else np.ones(per_pass.shape[0]),
        per_image_spread=chosen.std(axis=0),
        changed=(pass_classes != pass_classes[:1]).any(axis=0),
        identical_passes=identical,
    )


def tta_predict(model, images: ImageList | np.ndarray, *, preset: str = "light", passes: int = 8, seed: int = 0,
                mean: str = "arithmetic", batch_size: int = 32, image_size: int | None = None) -> TTAResult:
    """Predict ``images`` ``passes`` times through the TTA preset and average the class probabilities.

    ``images``: an :class:`~carlib.data.folders.ImageList` or raw 0–255 RGB arrays (N×H×W×3,
    uint8 or float; resized to the model's input size). ``mean``: ``"arithmetic"`` (default) or
    ``"geometric"`` (renormalised). The same ``seed`` gives the same result. Warns with
    :class:`TTAWarning`, naming the preset, when every pass fed identical images.
    """
    size = image_size or model_image_size(model)
    return tta_over_batches(model, load_image_batches(images, size, batch_size), preset=preset, passes=passes,
                            seed=seed, mean=mean, batch_size=batch_size, image_size=size, source=images)


def tta_over_batches(model, batches: Iterable[np.ndarray], *, preset: str, passes: int, seed: int, mean: str,
                     batch_size: int, image_size: int, source: ImageList | np.ndarray) -> TTAResult:
    """:func:`tta_predict` over uint8 batches already at ``image_size`` (``source``: the images they hold).

    For callers that decode the images themselves, e.g. the prediction pass that leaves out files
    TensorFlow cannot decode (:func:`carlib.evaluate.readable.predict_files`).
    """
    passes = _check_passes(passes)
    if mean not in MEANS:
        raise ConfigError(f"mean={mean!r} is unknown: expected one of {', '.join(MEANS)}.")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} is out of range: expected an integer >= 1.")
    check_tta_preset(preset)
    chunks, any_difference = [], False
    for batch in batches:
        views = tta_pass_images(batch, preset, passes, seed, image_size=image_size, batch_size=len(batch))
        # A pass that fed the un-augmented images again (preset "none", a transform that drew p = 0 for the
        # whole batch) would predict what pass 0 predicts: score only the distinct passes and copy.
        distinct = [0] + [p for p in range(1, passes) if not np.array_equal(views[p], views[0])]
        any_difference = any_difference or len(distinct) > 1
        flat = views[distinct].reshape(len(distinct) * len(batch), image_size, image_size, 3).astype(np.float32)
        # predict_on_batch per slice: model.predict pays ~0.2 s of set-up per call, once per image batch here
        probabilities = np.concatenate([np.asarray(model.predict_on_batch(flat[i:i + batch_size]), dtype=np.float64)
                                        for i in range(0, len(flat), batch_size)])
        probabilities = probabilities.reshape(len(distinct), len(batch), -1)
        per_batch = np.repeat(probabilities[:1], passes, axis=0)
        per_batch[distinct] = probabilities
        chunks.append(per_batch)
    if not chunks:
        raise DataError("tta_predict got no images.")
    per_pass = np.concatenate(chunks, axis=1)
    averaged = _average(per_pass, mean)
    identical = passes > 1 and not any_difference
    if identical:
        warnings.warn(
            f"TTA preset {preset!r} does not augment: all {passes} passes fed the model identical images, so the "
            "'TTA' average is just one prediction repeated (review point R20). Use an augmenting TTA preset "
            f"({', '.join(p for p in available_tta_presets() if p != 'none')}) or check your preset's transforms "
            "(probabilities p > 0, non-zero ranges).",
            TTAWarning,
            stacklevel=3,  # the caller of tta_predict
        )
    return TTAResult(
        probabilities=averaged,
        per_pass=per_pass,
        diagnostics=_diagnostics(per_pass, averaged, preset, identical),
        preset=preset,
        passes=passes,
        seed=int(seed),
        mean=mean,
        image_size=image_size,
        source=source,
    )


def accuracy_by_passes(result: TTAResult, labels: Sequence[int]) -> pd.DataFrame:
    """Accuracy of the mean over the first *k* passes, for k = 1 (no TTA: pass 0 is un-augmented) … all passes.

    Computed from ``result.per_pass`` (no extra predictions), with the result's own mean
    (arithmetic or geometric), so "accuracy without TTA vs with N passes" is one table.
    """
    labels = np.asarray(labels)
    if len(labels) != result.per_pass.shape[1]:
        raise DataError(f"labels: {len(labels)} labels for {result.per_pass.shape[1]} images.")
    rows = []
    for k in range(1, result.passes + 1):
        probabilities = _average(result.per_pass[:k], result.mean)
        rows.append({"passes": k, "accuracy": float((probabilities.argmax(axis=1) == labels).mean()),
                     "tta": k > 1})
    return pd.DataFrame(rows)
