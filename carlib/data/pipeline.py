"""tf.data pipelines: decode → resize → cache → shuffle → batch → augment (training only) → prefetch.

Images leave the pipeline as float32 RGB in 0–255: the model does its own preprocessing.
Validation, test and TTA inputs come from :func:`eval_dataset`, which has no augmentation
parameter at all, so a validation set cannot be augmented by mistake (R15).

Speed (issue 6, measured by ``carlib bench``): files are decoded in parallel, JPEGs at least
twice the training size are downscaled in the DCT domain while decoding, then resized by pixel
area (box-filter antialiasing, much cheaper than an antialiased bilinear kernel), resized images are
decoded once and cached (in memory when they fit, else on disk), and albumentations runs
once per *batch* in a parallel map (one Python call per batch, not per image).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import uuid
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import psutil
import tensorflow as tf

from carlib.data.augment import augment_batch, build_augmentation
from carlib.data.embedded import cache_root
from carlib.data.folders import ImageList
from carlib.errors import ConfigError

__all__ = [
    "load_image",
    "resize_image",
    "training_dataset",
    "eval_dataset",
    "decodable_batches",
    "augmented_views",
    "resolve_cache",
    "decoded_bytes",
    "CACHE_MODES",
    "MEMORY_CACHE_FRACTION",
]

AUTOTUNE = tf.data.AUTOTUNE
CACHE_MODES = ("auto", "memory", "disk", "none")
# "auto" caches decoded images in memory when they take at most this share of the RAM available
# when the pipeline is built (train and validation are sized separately), else on disk.
MEMORY_CACHE_FRACTION = 0.25
# Disk caching needs this much free space beyond the cache itself.
DISK_CACHE_MARGIN_BYTES = 1024**3
# Part of the disk cache key: bump when load_image changes the pixels it produces.
DECODER_VERSION = 3
_JPEG_RATIOS = (1, 2, 4, 8)


def _decode_jpeg_downscaled(data: tf.Tensor, image_size: int) -> tf.Tensor:
    # libjpeg can scale by 1/2, 1/4, 1/8 while decoding (DCT domain), which is much cheaper than a
    # full decode followed by a resize. Pick the largest ratio that keeps both sides >= image_size,
    # so the final resize still only shrinks (and averages by area).
    shape = tf.image.extract_jpeg_shape(data)
    short_side = tf.minimum(shape[0], shape[1])
    index = tf.constant(0)
    for i, ratio in enumerate(_JPEG_RATIOS[1:], start=1):
        index = tf.where(short_side >= ratio * image_size, tf.constant(i), index)
    branches = [lambda r=r: tf.io.decode_jpeg(data, channels=3, ratio=r) for r in _JPEG_RATIOS]
    return tf.switch_case(index, branches)


def resize_image(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Resize an H×W×3 image (or N×H×W×3 batch) to ``image_size``² uint8 without aliasing.

    Shrinking in both directions averages the source pixels each output pixel covers ("area",
    as OpenCV's ``INTER_AREA``): antialiased and ~2.3× faster than TensorFlow's antialiased
    bilinear kernel (``carlib bench``); anything else (enlarging a small image) is bilinear.
    """
    height, width = tf.shape(image)[-3], tf.shape(image)[-2]
    shrinks = tf.logical_and(height >= image_size, width >= image_size)
    size = (image_size, image_size)
    resized = tf.cond(shrinks,
                      lambda: tf.image.resize(image, size, method="area"),
                      lambda: tf.image.resize(image, size, method="bilinear", antialias=True))
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def load_image(path: tf.Tensor, image_size: int) -> tf.Tensor:
    """Read, decode and resize one image file to ``image_size``² uint8 RGB.

    JPEGs whose short side is at least twice ``image_size`` are downscaled by 2, 4 or 8
    while decoding; every image then goes through one :func:`resize_image`.
    """
    data = tf.io.read_file(path)
    image = tf.cond(
        tf.io.is_jpeg(data),
        lambda: _decode_jpeg_downscaled(data, image_size),
        lambda: tf.io.decode_image(data, channels=3, expand_animations=False),
    )
    return resize_image(image, image_size)


def decoded_bytes(n_images: int, image_size: int) -> int:
    """Bytes that ``n_images`` decoded, resized uint8 images take in a cache."""
    return n_images * image_size * image_size * 3


def _available_memory() -> int:
    return int(psutil.virtual_memory().available)


def resolve_cache(n_images: int, image_size: int, cache: str | bool | None = "auto") -> str:
    """Where decoded images are cached: ``"memory"``, ``"disk"`` or ``"none"``.

    ``"auto"`` (or ``None``) picks memory when the images take at most
    :data:`MEMORY_CACHE_FRACTION` of the available RAM, else disk when the cache folder has
    room (plus :data:`DISK_CACHE_MARGIN_BYTES`), else none. ``True``/``False`` mean
    memory/none.
    """
    if cache is True:
        return "memory"
    if cache is False:
        return "none"
    if cache is None:
        cache = "auto"
    if cache not in CACHE_MODES:
        raise ConfigError(f"data_cache={cache!r} is unknown: expected one of {', '.join(CACHE_MODES)}.")
    if cache != "auto":
        return cache
    needed = decoded_bytes(n_images, image_size)
    if needed <= MEMORY_CACHE_FRACTION * _available_memory():
        return "memory"
    folder = _disk_cache_folder()
    folder.mkdir(parents=True, exist_ok=True)
    if shutil.disk_usage(folder).free >= needed + DISK_CACHE_MARGIN_BYTES:
        return "disk"
    return "none"


def _disk_cache_folder() -> Path:
    return cache_root() / "decoded"


def _disk_cache_prefix(images: ImageList, image_size: int) -> Path:
    """A cache file prefix that changes whenever a file, its label, the size or the decoder changes."""
    digest = hashlib.sha256(f"v{DECODER_VERSION}|{image_size}".encode())
    for path, label in zip(images.paths, images.labels):
        stat = os.stat(path)
        digest.update(f"|{path}|{stat.st_size}|{stat.st_mtime_ns}|{int(label)}".encode())
    return _disk_cache_folder() / f"{digest.hexdigest()[:24]}-{len(images)}x{image_size}"


def _write_disk_cache(ds: tf.data.Dataset, prefix: Path) -> None:
    # tf.data finishes a cache file only when an iteration reaches the end, and a half-written one
    # blocks later runs. Write under a private name in one full pass, then rename (data before index:
    # a reader treats the index as the sign of a complete cache).
    prefix.parent.mkdir(parents=True, exist_ok=True)
    tmp = prefix.with_name(f"{prefix.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        for _ in ds.cache(str(tmp)).batch(256).prefetch(AUTOTUNE):
            pass
        for data_file in tmp.parent.glob(f"{tmp.name}.data-*"):
            os.replace(data_file, prefix.parent / (prefix.name + data_file.name[len(tmp.name):]))
        os.replace(f"{tmp}.index", f"{prefix}.index")
    finally:
        for leftover in tmp.parent.glob(f"{tmp.name}*"):
            leftover.unlink(missing_ok=True)


def _decoded(images: ImageList, image_size: int, cache: str | bool | None) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices((list(images.paths), images.labels.astype(np.int32)))
    ds = ds.map(lambda p, y: (load_image(p, image_size), y), num_parallel_calls=AUTOTUNE)
    mode = resolve_cache(len(images), image_size, cache)
    if mode == "memory":
        return ds.cache()
    if mode == "disk" and len(images):
        prefix = _disk_cache_prefix(images, image_size)
        if not Path(f"{prefix}.index").is_file():
            try:
                _write_disk_cache(ds, prefix)
            except (OSError, tf.errors.OpError) as err:
                warnings.warn(f"could not write the decoded-image cache {prefix} ({err}); decoding every epoch "
                              "instead. Free disk space or set data_cache='none'.", stacklevel=3)
                return ds
        return ds.cache(str(prefix))
    return ds


def _to_float(images: tf.Tensor, labels: tf.Tensor):
    return tf.cast(images, tf.float32), labels


def eval_dataset(images: ImageList, image_size: int, batch_size: int, *,
                 cache: str | bool | None = "auto") -> tf.data.Dataset:
    """Un-augmented, un-shuffled batches in file order: for validation, test and TTA inputs."""
    ds = _decoded(images, image_size, cache)
    return ds.batch(batch_size).map(_to_float, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def decodable_batches(images: ImageList, image_size: int, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(indexes, batch)`` of the files TensorFlow decodes, in file order; a file it cannot decode is left out.

    Each file is read and decoded once, by :func:`load_image` (the pixels :func:`eval_dataset` gives,
    as uint8 N×size×size×3); ``indexes`` say which of ``images`` each batch holds, so a caller knows
    which files failed without decoding anything a second time. Nothing is cached: one pass.
    """
    if not len(images):
        return
    ds = tf.data.Dataset.from_tensor_slices((np.arange(len(images)), list(images.paths)))
    ds = ds.map(lambda index, path: (index, load_image(path, image_size)), num_parallel_calls=AUTOTUNE)
    # ignore_errors drops an element whose decode fails; the index it carries keeps every file's identity
    for indexes, batch in ds.ignore_errors().batch(batch_size).prefetch(AUTOTUNE):
        yield indexes.numpy(), batch.numpy()


class _ThreadLocalAugmenter:
    """One albumentations pipeline per worker thread: their RNGs are not thread-safe."""

    def __init__(self, spec: str, image_size: int):
        self.spec, self.image_size = spec, image_size
        self._local = threading.local()

    def __call__(self, images: np.ndarray, seed: np.ndarray) -> np.ndarray:
        pipeline = getattr(self._local, "pipeline", None)
        if pipeline is None:
            pipeline = self._local.pipeline = build_augmentation(self.spec, self.image_size)
        return augment_batch(pipeline, images, int(seed))


def training_dataset(
    images: ImageList,
    image_size: int,
    batch_size: int,
    *,
    augmentation: str = "none",
    seed: int = 0,
    cache: str | bool | None = "auto",
) -> tf.data.Dataset:
    """Shuffled, augmented batches for training, different every epoch and repeatable by ``seed``.

    Each batch's augmentation seed comes from a seeded random stream that is re-drawn every
    epoch, and the shuffle is seeded too, so two runs with the same seed see the same
    augmented images whatever the thread scheduling.
    """
    ds = _decoded(images, image_size, cache)
    ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True).batch(batch_size)
    if build_augmentation(augmentation, image_size) is None:
        return ds.map(_to_float, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)
    augmenter = _ThreadLocalAugmenter(augmentation, image_size)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)

    def augment(batch, batch_seed):
        batch_images, labels = batch
        out = tf.numpy_function(augmenter, [batch_images, batch_seed], tf.uint8, stateful=False)
        out.set_shape((None, image_size, image_size, 3))
        return tf.cast(out, tf.float32), labels

    return tf.data.Dataset.zip(ds, seeds).map(augment, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def augmented_views(images: ImageList, augmentation: str, image_size: int, *, views: int = 4,
                    seed: int = 0) -> np.ndarray:
    """What training sees: ``views`` augmented versions of each image, shape (n, 1 + views, H, W, 3) uint8.

    Column 0 is the decoded, resized image without augmentation. The views go through the
    same functions as :func:`training_dataset` (``load_image``, ``build_augmentation``,
    ``augment_batch``), so a gallery of them shows exactly what the model is trained on.
    """
    pipeline = build_augmentation(augmentation, image_size)
    rows = []
    for index, path in enumerate(images.paths):
        original = load_image(tf.constant(path), image_size).numpy()
        copies = np.repeat(original[None], views, axis=0)
        row_seed = int(np.random.default_rng([seed, index]).integers(2**32))
        augmented = copies if pipeline is None else augment_batch(pipeline, copies, row_seed)
        rows.append(np.concatenate([original[None], augmented]))
    return np.stack(rows)
