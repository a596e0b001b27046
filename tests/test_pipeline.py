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
    """Counts every call of the augmentation function the pipeline uses."""
    calls = []
    original = pipeline.augment_image

    def counting(pipe, image, seed):
        calls.append(seed)
        return original(pipe, image, seed)

    monkeypatch.setattr(pipeline, "augment_image", counting)
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
    assert len(augment_calls) == len(images)
    epoch2, _ = _collect(ds)
    assert len(augment_calls) == 2 * len(images)
    assert len(set(augment_calls)) == len(augment_calls)  # a fresh seed per image and epoch
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
    from carlib.augment import available_presets

    for preset in available_presets():
        x, _ = _collect(training_dataset(images.subset(np.arange(4)), 40, batch_size=4, augmentation=preset))
        assert x.shape == (4, 40, 40, 3), preset
