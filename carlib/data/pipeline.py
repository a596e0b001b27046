"""tf.data pipelines: decode → resize → (cache) → augment (training only) → batch → prefetch.

Images leave the pipeline as float32 RGB in 0–255: the model does its own preprocessing.
Validation, test and TTA inputs come from :func:`eval_dataset`, which has no augmentation
parameter at all, so a validation set cannot be augmented by mistake (R15).
"""

from __future__ import annotations

import threading

import numpy as np
import tensorflow as tf

from carlib.augment import augment_image, build_augmentation
from carlib.data.folders import ImageList

__all__ = ["load_image", "training_dataset", "eval_dataset", "augmented_views", "MEMORY_CACHE_LIMIT_BYTES"]

AUTOTUNE = tf.data.AUTOTUNE
# Decoded, resized uint8 images are cached in memory when they fit under this size
# (the embedded data at 224 px is ~150 MB; the competition's 15.5k photos at 320 px are 4.7 GB).
MEMORY_CACHE_LIMIT_BYTES = 2 * 1024**3


def load_image(path: tf.Tensor, image_size: int) -> tf.Tensor:
    """Read, decode and resize one image file to ``image_size``² uint8 RGB."""
    data = tf.io.read_file(path)
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image = tf.image.resize(image, (image_size, image_size), antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def _decoded(images: ImageList, image_size: int, cache: bool | None) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices((list(images.paths), images.labels.astype(np.int32)))
    ds = ds.map(lambda p, y: (load_image(p, image_size), y), num_parallel_calls=AUTOTUNE)
    if cache is None:  # auto: decode once when it fits in memory
        cache = len(images) * image_size * image_size * 3 <= MEMORY_CACHE_LIMIT_BYTES
    return ds.cache() if cache else ds


def _to_float(images: tf.Tensor, labels: tf.Tensor):
    return tf.cast(images, tf.float32), labels


def eval_dataset(images: ImageList, image_size: int, batch_size: int, *, cache: bool | None = None) -> tf.data.Dataset:
    """Un-augmented, un-shuffled batches in file order: for validation, test and TTA inputs."""
    ds = _decoded(images, image_size, cache)
    return ds.batch(batch_size).map(_to_float, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


class _ThreadLocalAugmenter:
    """One albumentations pipeline per worker thread: their RNGs are not thread-safe."""

    def __init__(self, spec: str, image_size: int):
        self.spec, self.image_size = spec, image_size
        self._local = threading.local()

    def __call__(self, image: np.ndarray, seed: np.ndarray) -> np.ndarray:
        pipeline = getattr(self._local, "pipeline", None)
        if pipeline is None:
            pipeline = self._local.pipeline = build_augmentation(self.spec, self.image_size)
        return np.ascontiguousarray(augment_image(pipeline, image, int(seed) % 2**32), dtype=np.uint8)


def training_dataset(
    images: ImageList,
    image_size: int,
    batch_size: int,
    *,
    augmentation: str = "none",
    seed: int = 0,
    cache: bool | None = None,
) -> tf.data.Dataset:
    """Shuffled, augmented batches for training, different every epoch and repeatable by ``seed``.

    Each image's augmentation seed comes from a seeded random stream that is re-drawn every
    epoch, so two runs with the same seed see the same augmented images whatever the
    thread scheduling.
    """
    ds = _decoded(images, image_size, cache)
    ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    if build_augmentation(augmentation, image_size) is not None:
        augmenter = _ThreadLocalAugmenter(augmentation, image_size)
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)

        def augment(example, image_seed):
            image, label = example
            out = tf.numpy_function(augmenter, [image, image_seed], tf.uint8, stateful=False)
            out.set_shape((image_size, image_size, 3))
            return out, label

        ds = tf.data.Dataset.zip(ds, seeds).map(augment, num_parallel_calls=AUTOTUNE)
    return ds.batch(batch_size).map(_to_float, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def augmented_views(images: ImageList, augmentation: str, image_size: int, *, views: int = 4,
                    seed: int = 0) -> np.ndarray:
    """What training sees: ``views`` augmented versions of each image, shape (n, 1 + views, H, W, 3) uint8.

    Column 0 is the decoded, resized image without augmentation. The views go through the
    same functions as :func:`training_dataset` (``build_augmentation``, ``augment_image``),
    so a gallery of them shows exactly what the model is trained on.
    """
    pipeline = build_augmentation(augmentation, image_size)
    rows = []
    for index, path in enumerate(images.paths):
        original = load_image(tf.constant(path), image_size).numpy()
        row = [original]
        for view in range(views):
            view_seed = int(np.random.default_rng([seed, index, view]).integers(2**32))
            row.append(original if pipeline is None else augment_image(pipeline, original, view_seed))
        rows.append(np.stack(row))
    return np.stack(rows)
