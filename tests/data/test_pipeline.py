"""The tf.data pipeline: only the training split is augmented (R15); augmentation is repeatable by seed."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from carlib.data import pipeline
from carlib.data.folders import list_class_images, prepare_data
from carlib.data.pipeline import eval_dataset, load_image, training_dataset


@pytest.fixture(scope="module")
def images(tiny_data_dir):
    return list_class_images(prepare_data(tiny_data_dir).train_dir).subset(np.arange(0, 80, 4))


def _collect(ds):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(xs), np.concatenate(ys)


@pytest.fixture
def augment_calls(monkeypatch):
    """Records (seed, number of images) for every call of the augmentation function the pipeline uses."""
    calls = []
    original = pipeline.augment_batch

    def counting(pipe, batch, seed):
        calls.append((seed, len(batch)))
        return original(pipe, batch, seed)

    monkeypatch.setattr(pipeline, "augment_batch", counting)
    return calls


def test_eval_dataset_has_no_way_to_augment():
    assert "augmentation" not in inspect.signature(eval_dataset).parameters


def test_eval_dataset_is_raw_pixels_in_file_order_and_never_augments(images, augment_calls):
    ds = eval_dataset(images, 32, batch_size=8)
    first_x, first_y = _collect(ds)
    second_x, second_y = _collect(ds)
    assert first_x.dtype == np.float32 and first_x.shape == (len(images), 32, 32, 3)
    assert 0 <= first_x.min() and first_x.max() <= 255 and first_x.max() > 1  # raw 0–255, no /255
    np.testing.assert_array_equal(first_x, second_x)
    np.testing.assert_array_equal(first_y, images.labels)
    direct = np.stack([load_image(p, 32).numpy() for p in images.paths]).astype(np.float32)
    np.testing.assert_array_equal(first_x, direct)
    assert augment_calls == []


def test_training_dataset_augments_every_image_once_per_epoch(images, augment_calls):
    ds = training_dataset(images, 32, batch_size=8, augmentation="medium", seed=3)
    epoch1, labels1 = _collect(ds)
    assert sum(n for _, n in augment_calls) == len(images)
    epoch2, _ = _collect(ds)
    assert sum(n for _, n in augment_calls) == 2 * len(images)
    seeds = [seed for seed, _ in augment_calls]
    assert len(set(seeds)) == len(seeds)  # a fresh seed per batch and epoch
    assert not np.array_equal(epoch1, epoch2)
    assert sorted(labels1) == sorted(images.labels)


def test_training_dataset_is_repeatable_by_seed(images):
    first = _collect(training_dataset(images, 32, batch_size=8, augmentation="heavy", seed=7))
    again = _collect(training_dataset(images, 32, batch_size=8, augmentation="heavy", seed=7))
    other = _collect(training_dataset(images, 32, batch_size=8, augmentation="heavy", seed=8))
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


def test_no_augmentation_preset_keeps_pixels_and_labels_together(images, augment_calls):
    x, y = _collect(training_dataset(images, 32, batch_size=8, augmentation="none", seed=0))
    assert augment_calls == []
    reference = {hash(img.tobytes()): label for img, label in zip(*_collect(eval_dataset(images, 32, 8)))}
    assert {hash(img.tobytes()): label for img, label in zip(x, y)} == reference


def test_every_preset_returns_the_training_size(images):
    from carlib.data.augment import available_presets

    for preset in available_presets():
        x, _ = _collect(training_dataset(images.subset(np.arange(4)), 40, batch_size=4, augmentation=preset))
        assert x.shape == (4, 40, 40, 3), preset


# --------------------------------------------------------------- speed features (issue 6)
def test_large_jpegs_are_downscaled_while_decoding_to_nearly_the_full_decode(tmp_path):
    import tensorflow as tf
    from PIL import Image

    rng = np.random.default_rng(0)
    # A smooth photo-like 640x480 image (noise would make any two resamplings differ a lot).
    yy, xx = np.mgrid[0:480, 0:640]
    rgb = np.stack([(xx * 0.4) % 256, (yy * 0.5) % 256, (xx + yy) * 0.2 % 256], axis=-1)
    rgb = (rgb + rng.normal(0, 3, rgb.shape)).clip(0, 255).astype(np.uint8)
    path = tmp_path / "photo.jpg"
    Image.fromarray(rgb).save(path, quality=92)
    for size in (64, 100, 224, 300):  # ratios 4, 2, 2 and 1 (480 < 2 * 300)
        loaded = load_image(tf.constant(str(path)), size).numpy().astype(int)
        full = tf.io.decode_jpeg(tf.io.read_file(str(path)), channels=3)
        reference = pipeline.resize_image(full, size).numpy().astype(int)
        difference = np.abs(loaded - reference)
        assert loaded.shape == (size, size, 3)
        assert difference.mean() < 2.0, (size, difference.mean())


def test_augment_batch_draws_per_image_and_repeats_by_seed():
    from carlib.data.augment import augment_batch, build_augmentation

    rng = np.random.default_rng(1)
    batch = np.repeat(rng.integers(0, 256, (1, 24, 24, 3), dtype=np.uint8), 16, axis=0)
    pipe = build_augmentation("medium", 24)
    first = augment_batch(pipe, batch, seed=5)
    again = augment_batch(build_augmentation("medium", 24), batch, seed=5)
    other = augment_batch(pipe, batch, seed=6)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert len({image.tobytes() for image in first}) > 8  # identical inputs, different draws
    assert first.shape == batch.shape and first.dtype == np.uint8


def test_resolve_cache_sizes_the_cache_to_the_machine(monkeypatch):
    monkeypatch.setattr(pipeline, "_available_memory", lambda: 10 * 1024**3)
    assert pipeline.resolve_cache(1000, 64) == "memory"
    assert pipeline.resolve_cache(1000, 64, None) == "memory"
    assert pipeline.resolve_cache(10, 64, "none") == "none" and pipeline.resolve_cache(10, 64, False) == "none"
    assert pipeline.resolve_cache(10, 64, "disk") == "disk"
    monkeypatch.setattr(pipeline, "_available_memory", lambda: 1024)
    assert pipeline.resolve_cache(1000, 64) == "disk"
    monkeypatch.setattr(pipeline.shutil, "disk_usage", lambda path: type("U", (), {"free": 10})())
    assert pipeline.resolve_cache(1000, 64) == "none"
    with pytest.raises(ValueError, match=r"data_cache='ram' is unknown: expected one of auto, memory, disk, none"):
        pipeline.resolve_cache(10, 64, "ram")


def test_disk_cache_is_written_once_completely_and_gives_the_same_batches(images, tmp_path, monkeypatch):
    import os

    from carlib.data.embedded import cache_root

    monkeypatch.setenv("CARLIB_CACHE", str(tmp_path / "fresh-cache"))  # the folder does not exist yet

    folder = cache_root() / "decoded"
    in_memory = _collect(eval_dataset(images, 32, 8, cache="memory"))
    on_disk = _collect(eval_dataset(images, 32, 8, cache="disk"))
    np.testing.assert_array_equal(in_memory[0], on_disk[0])
    np.testing.assert_array_equal(in_memory[1], on_disk[1])
    written = sorted(p.name for p in folder.iterdir())
    indexes = [name for name in written if name.endswith(".index") and f"-{len(images)}x32" in name]
    assert len(indexes) == 1 and not [name for name in written if ".tmp-" in name or "lockfile" in name]
    stamp = os.path.getmtime(folder / indexes[0])
    training = _collect(training_dataset(images, 32, 8, augmentation="none", seed=0, cache="disk"))
    assert os.path.getmtime(folder / indexes[0]) == stamp  # read, not rewritten
    assert sorted(training[1]) == sorted(images.labels)
    # Touching a file changes the key: a stale cache is never read.
    os.utime(images.paths[0], ns=(1, 1))
    _collect(eval_dataset(images, 32, 8, cache="disk"))
    assert len([p for p in folder.iterdir() if p.name.endswith(f"-{len(images)}x32.index")]) == 2


def test_a_disk_cache_that_cannot_be_written_falls_back_to_decoding_with_a_warning(images, monkeypatch):
    def full_disk(ds, prefix):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pipeline, "_write_disk_cache", full_disk)
    with pytest.warns(UserWarning, match=r"could not write the decoded-image cache .*No space left on device.*"
                                         r"decoding every epoch instead"):
        ds = eval_dataset(images, 32, 8, cache="disk")
    np.testing.assert_array_equal(_collect(ds)[0], _collect(eval_dataset(images, 32, 8, cache="none"))[0])


def test_resize_averages_when_shrinking_and_interpolates_when_enlarging():
    import tensorflow as tf

    stripes = np.zeros((64, 64, 3), dtype=np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes: plain bilinear sampling would alias them to black or white
    shrunk = pipeline.resize_image(tf.constant(stripes), 16).numpy()
    assert shrunk.shape == (16, 16, 3) and shrunk.dtype == np.uint8
    assert np.abs(shrunk.astype(int) - 128).max() <= 1  # every output pixel is the mean of its area
    small = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3) * 5
    enlarged = pipeline.resize_image(tf.constant(small), 8).numpy()
    assert enlarged.shape == (8, 8, 3) and len(np.unique(enlarged[..., 0])) > 16  # interpolated, not blocky
    batch = pipeline.resize_image(tf.constant(np.stack([stripes, stripes])), 16).numpy()
    np.testing.assert_array_equal(batch[0], shrunk)
