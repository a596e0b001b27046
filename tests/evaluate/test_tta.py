"""TTA that really augments (R20): passes differ, identity presets warn, the mean is the mean, seeds repeat."""

from __future__ import annotations

import warnings

import albumentations as A
import numpy as np
import pytest
from scipy.stats import gmean

from carlib.data.tta_presets import TTA_PRESETS, available_tta_presets, register_tta_preset
from carlib.errors import ConfigError, TTAWarning
from carlib.evaluate.checkpoints import validation_images
from carlib.evaluate.tta import load_image_batches, tta_pass_images, tta_predict
from carlib.models.build import build_model


@pytest.fixture(scope="module")
def model():
    """An untrained 32 px model: TTA's mechanics do not need accuracy."""
    return build_model("simple_cnn", 10, 32)


@pytest.fixture(scope="module")
def images(tiny_data_dir):
    return validation_images(tiny_data_dir, 0.25, 0)


def test_augmenting_preset_gives_passes_that_differ(model, images):
    with warnings.catch_warnings():
        warnings.simplefilter("error", TTAWarning)
        result = tta_predict(model, images, preset="light", passes=4, seed=0)
    assert result.per_pass.shape == (4, len(images), 10) and result.probabilities.shape == (len(images), 10)
    views = result.pass_images(range(len(images)))
    for p in range(1, 4):
        assert not np.array_equal(views[p], views[0]), f"pass {p} fed the un-augmented images"
        assert not np.allclose(result.per_pass[p], result.per_pass[0]), f"pass {p} predicted exactly pass 0"
    assert not np.array_equal(views[1], views[2]), "augmented passes repeated the same draw"
    assert not result.diagnostics.identical_passes
    assert result.diagnostics.mean_spread > 0


def test_identity_preset_warns_naming_it(model, images):
    with pytest.warns(TTAWarning, match="TTA preset 'none' does not augment"):
        result = tta_predict(model, images, preset="none", passes=3)
    diagnostics = result.diagnostics
    assert diagnostics.identical_passes and diagnostics.n_changed == 0 and diagnostics.mean_spread == 0
    np.testing.assert_array_equal(diagnostics.pass_agreement, np.ones(3))
    np.testing.assert_allclose(result.per_pass[1], result.per_pass[0])


class _CountingModel:
    """Wraps a model and counts the images it is asked to predict."""

    def __init__(self, model):
        self.model, self.n_images = model, 0

    def predict_on_batch(self, batch):
        self.n_images += len(batch)
        return self.model.predict_on_batch(batch)


def test_passes_identical_to_pass_zero_are_scored_once(model, images):
    counting = _CountingModel(model)
    with pytest.warns(TTAWarning):
        result = tta_predict(counting, images, preset="none", passes=4, image_size=32)
    assert counting.n_images == len(images), "identical passes were predicted again"
    for p in range(1, 4):
        np.testing.assert_array_equal(result.per_pass[p], result.per_pass[0])


def test_a_pass_that_drew_no_change_keeps_its_place_among_augmented_ones(model, images, monkeypatch):
    """Pass 2 feeds the un-augmented images again: it is copied from pass 0, passes 1 and 3 are scored."""
    import carlib.evaluate.tta as tta_module

    real = tta_module.tta_pass_images

    def pass_two_unchanged(*args, **kwargs):
        views = real(*args, **kwargs)
        views[2] = views[0]
        return views

    monkeypatch.setattr(tta_module, "tta_pass_images", pass_two_unchanged)
    counting = _CountingModel(model)
    result = tta_predict(counting, images, preset="medium", passes=4, seed=5, image_size=32)
    assert counting.n_images == 3 * len(images)
    views = result.pass_images(range(len(images)))
    for p in range(4):
        expected = views[0] if p == 2 else views[p]
        direct = model.predict(expected.astype(np.float32), verbose=0)
        np.testing.assert_allclose(result.per_pass[p], direct, atol=1e-5)


def test_user_preset_that_never_fires_warns_with_its_name(model, images, monkeypatch):
    register_tta_preset("never_flips", lambda size: [A.HorizontalFlip(p=0.0)])
    try:
        assert "never_flips" in available_tta_presets()
        with pytest.warns(TTAWarning, match="'never_flips'"):
            tta_predict(model, images, preset="never_flips", passes=2)
        with pytest.raises(ValueError, match="already registered"):
            register_tta_preset("never_flips", lambda size: [])
    finally:
        TTA_PRESETS.unregister("never_flips")  # keep the registry clean for other tests


def test_mean_over_passes_is_the_average_of_the_per_pass_predictions(model, images):
    result = tta_predict(model, images, preset="medium", passes=3, seed=5)
    np.testing.assert_allclose(result.probabilities, result.per_pass.mean(axis=0), rtol=0, atol=1e-12)
    # each pass's predictions are the model's predictions of exactly the views pass_images shows
    views = result.pass_images(range(len(images)))
    for p in range(3):
        direct = model.predict(views[p].astype(np.float32), verbose=0)
        np.testing.assert_allclose(result.per_pass[p], direct, atol=1e-5)


def test_geometric_mean_option(model, images):
    arithmetic = tta_predict(model, images, preset="light", passes=3, seed=1)
    geometric = tta_predict(model, images, preset="light", passes=3, seed=1, mean="geometric")
    np.testing.assert_allclose(geometric.per_pass, arithmetic.per_pass)
    expected = gmean(np.clip(geometric.per_pass, 1e-7, 1), axis=0)
    np.testing.assert_allclose(geometric.probabilities, expected / expected.sum(axis=1, keepdims=True), atol=1e-9)
    np.testing.assert_allclose(geometric.probabilities.sum(axis=1), 1.0)
    assert not np.allclose(geometric.probabilities, arithmetic.probabilities, rtol=0, atol=1e-9)


def test_same_seed_repeats_and_another_seed_changes_the_views(model, images):
    first = tta_predict(model, images, preset="light", passes=3, seed=7)
    again = tta_predict(model, images, preset="light", passes=3, seed=7)
    other = tta_predict(model, images, preset="light", passes=3, seed=8)
    np.testing.assert_array_equal(first.per_pass, again.per_pass)
    assert not np.array_equal(first.pass_images([0, 1])[1:], other.pass_images([0, 1])[1:])


def test_pass_zero_is_the_unaugmented_image_and_subsets_see_the_same_views(images):
    everything = tta_pass_images(images, "light", 3, 2, image_size=32)
    clean = np.concatenate(list(load_image_batches(images, 32)))
    np.testing.assert_array_equal(everything[0], clean)
    subset = tta_pass_images(images.subset(np.array([4, 9])), "light", 3, 2, image_size=32)
    np.testing.assert_array_equal(subset, everything[:, [4, 9]])


def test_flip_preset_mirrors(images):
    views = tta_pass_images(images.subset(np.array([0])), "flip", 2, 0, image_size=32)
    np.testing.assert_array_equal(views[1], views[0][:, :, ::-1])


def test_arrays_work_like_image_lists_and_scaled_arrays_are_refused(model, images):
    array = np.concatenate(list(load_image_batches(images, 32)))
    from_list = tta_predict(model, images, preset="light", passes=2, seed=3)
    from_uint8 = tta_predict(model, array, preset="light", passes=2, seed=3)
    from_float = tta_predict(model, array.astype(np.float32), preset="light", passes=2, seed=3)
    np.testing.assert_allclose(from_uint8.per_pass, from_list.per_pass, atol=1e-6)
    np.testing.assert_allclose(from_float.per_pass, from_list.per_pass, atol=1e-6)
    np.testing.assert_array_equal(from_uint8.pass_images([2]), from_list.pass_images([2]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tta_predict(model, array / 255.0, passes=2)


def test_bad_arguments_say_what_is_allowed(model, images):
    with pytest.raises(ConfigError, match="Did you mean 'light'"):
        tta_predict(model, images, preset="ligth")
    with pytest.raises(ConfigError, match="passes=0"):
        tta_predict(model, images, passes=0)
    with pytest.raises(ConfigError, match="arithmetic, geometric"):
        tta_predict(model, images, mean="median")


def test_passes_one_is_plain_prediction_without_warning(model, images):
    with warnings.catch_warnings():
        warnings.simplefilter("error", TTAWarning)
        result = tta_predict(model, images, preset="light", passes=1)
    direct = model.predict(np.concatenate(list(load_image_batches(images, 32))).astype(np.float32), verbose=0)
    np.testing.assert_allclose(result.probabilities, direct, atol=1e-5)
    assert not result.diagnostics.identical_passes


def test_accuracy_by_passes_starts_without_tta_and_ends_at_the_full_mean():
    from carlib.evaluate.tta import TTADiagnostics, TTAResult, accuracy_by_passes

    per_pass = np.array([[[0.9, 0.1], [0.4, 0.6]],     # pass 0: image 0 right, image 1 wrong (label 0)
                         [[0.6, 0.4], [0.9, 0.1]],
                         [[0.2, 0.8], [0.9, 0.1]]])
    result = TTAResult(per_pass.mean(axis=0), per_pass, TTADiagnostics.__new__(TTADiagnostics), "light", 3, 0,
                       "arithmetic", 32, np.zeros((2, 32, 32, 3), np.uint8))
    table = accuracy_by_passes(result, [0, 0])
    assert table["passes"].tolist() == [1, 2, 3] and table["tta"].tolist() == [False, True, True]
    assert table["accuracy"].tolist() == [0.5, 1.0, 1.0]
    with pytest.raises(ValueError, match="labels"):
        accuracy_by_passes(result, [0])
