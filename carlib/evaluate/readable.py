"""Predicting image files of which some may not decode: each file is decoded once, by the prediction pass itself.

Screening (:mod:`carlib.data.screen`) reads each file's header with PIL and turns away what is
plainly not an image or truncated, without decoding JPEGs and PNGs. A file whose header is
fine but whose content TensorFlow cannot decode (a JPEG naming a table it never defines, a
process libjpeg does not support) is found by the decode that predicts it: the pass leaves it
out and says which one (:func:`carlib.data.pipeline.decodable_batches`), so the caller gives its
row the reason, and no file is decoded a second time to check it first.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from carlib.data.folders import ImageList
from carlib.data.pipeline import decodable_batches
from carlib.evaluate.tta import TTAResult, tta_over_batches
from carlib.models.build import model_image_size

__all__ = ["FilePredictions", "predict_files", "NOT_DECODABLE"]

# The error of a file that passed screening but that TensorFlow's decoder refuses.
NOT_DECODABLE = "TensorFlow cannot decode it (corrupt or unsupported content)"


@dataclasses.dataclass(frozen=True, eq=False)
class FilePredictions:
    """What :func:`predict_files` found: class probabilities of the files that decoded, and which files they are.

    ``probabilities[j]`` belongs to ``images.paths[decoded[j]]``; the other files did not decode.
    ``tta`` is the TTA result (its ``source``: the decoded files) when TTA was asked for.
    """

    probabilities: np.ndarray
    decoded: tuple[int, ...]
    tta: TTAResult | None = None

    def undecodable(self, n_images: int) -> tuple[int, ...]:
        """The indexes (of ``n_images`` given) of the files that did not decode."""
        decoded = set(self.decoded)
        return tuple(i for i in range(n_images) if i not in decoded)


def predict_files(model, images: ImageList, *, batch_size: int = 32, tta: int = 0, tta_preset: str = "light",
                  tta_seed: int = 0, tta_mean: str = "arithmetic") -> FilePredictions:
    """Class probabilities of every file TensorFlow decodes, each decoded once; the others are left out, not fatal.

    Un-augmented (the pixels of :func:`carlib.data.pipeline.eval_dataset`) unless ``tta`` > 1, which
    averages that many passes of ``tta_preset`` (:func:`carlib.evaluate.tta.tta_predict`).
    """
    size = model_image_size(model)
    decoded: list[int] = []

    def batches():
        for indexes, batch in decodable_batches(images, size, batch_size):
            decoded.extend(int(i) for i in indexes)
            yield batch

    stream = batches()
    first = next(stream, None)
    if first is None:  # nothing decoded: no predictions, every file gets its error row
        return FilePredictions(np.empty((0, int(model.output_shape[-1]))), ())
    stream = itertools.chain([first], stream)
    if tta and int(tta) > 1:
        result = tta_over_batches(model, stream, preset=tta_preset, passes=int(tta), seed=tta_seed, mean=tta_mean,
                                  batch_size=batch_size, image_size=size, source=images)
        # which files decoded is known once the pass has run: the result's source is those files
        result = dataclasses.replace(result, source=images.subset(np.array(decoded)))
        return FilePredictions(result.probabilities, tuple(decoded), result)
    # predict_on_batch per batch: the batches come from Python here, and model.predict pays a set-up per call
    probabilities = [np.asarray(model.predict_on_batch(batch.astype(np.float32)), dtype=np.float64)
                     for batch in stream]
    return FilePredictions(np.concatenate(probabilities), tuple(decoded))
