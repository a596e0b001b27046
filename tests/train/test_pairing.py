"""Runs of different configurations that share a seed share their randomness: split, initial weights, data order
and augmentation draws, so a paired verdict compares like with like (docs/training.md)."""

from __future__ import annotations

import numpy as np

from carlib.config import ExperimentConfig
from carlib.train.setup import prepare_training


def _setup(fast_config, **changes):
    return prepare_training(ExperimentConfig.from_dict({**fast_config, **changes}))


def _first_batch(setup):
    images, labels = next(iter(setup.train_ds))
    return images.numpy(), labels.numpy()


def test_same_seed_same_split_weights_order_and_augmentation_across_configurations(fast_config):
    base = _setup(fast_config, seed=5, lr=1e-3, augmentation="medium")
    other_lr = _setup(fast_config, seed=5, lr=3e-2, augmentation="medium")
    other_aug = _setup(fast_config, seed=5, lr=1e-3, augmentation="none", dropout=0.5)
    other_seed = _setup(fast_config, seed=6, lr=1e-3, augmentation="medium")

    assert base.data.train_images.paths == other_lr.data.train_images.paths == other_aug.data.train_images.paths
    assert base.data.test_images.paths == other_seed.data.test_images.paths  # the test set never depends on seed
    assert base.data.val_images.paths != other_seed.data.val_images.paths

    for same in (other_lr, other_aug):  # the same initial weights (dropout has none)
        assert all(np.array_equal(a, b) for a, b in zip(base.model.get_weights(), same.model.get_weights()))
    assert not all(np.array_equal(a, b) for a, b in zip(base.model.get_weights(), other_seed.model.get_weights()))

    images, labels = _first_batch(base)
    images_lr, labels_lr = _first_batch(other_lr)
    _, labels_aug = _first_batch(other_aug)
    _, labels_seed = _first_batch(other_seed)
    np.testing.assert_array_equal(labels, labels_lr)
    np.testing.assert_array_equal(labels, labels_aug)  # the same data order, whatever the augmentation
    np.testing.assert_array_equal(images, images_lr)  # the same augmentation draws
    assert not np.array_equal(labels, labels_seed)
