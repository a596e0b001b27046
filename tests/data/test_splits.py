"""A run's splits: the held-out test set is the same for every seed; pre-split datasets are used as given."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from carlib.data.check import check_dataset
from carlib.data.folders import list_class_images, prepare_data
from carlib.data.splits import TEST_SPLIT_SEED, split_for_run
from carlib.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def class_folders(tiny_data_dir, tmp_path_factory):
    """Plain class folders: no test set, no answers."""
    out = tmp_path_factory.mktemp("folders") / "photos"
    shutil.copytree(prepare_data(tiny_data_dir).train_dir, out)
    return out


@pytest.fixture(scope="module")
def pre_split(tiny_data_dir, tmp_path_factory):
    """train/, valid/ and test/ class folders, as public datasets arrive: of the 80 images every 5th tests (16), every
    other 4th validates (16), the rest trains (48)."""
    out = tmp_path_factory.mktemp("presplit") / "dataset"
    images = list_class_images(prepare_data(tiny_data_dir).train_dir)
    for index, (path, label) in enumerate(zip(images.paths, images.labels)):
        split = "test" if index % 5 == 0 else "valid" if index % 4 == 0 else "train"
        target = out / split / images.class_names[label] / Path(path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    return out


def _names(images) -> set[str]:
    return {Path(p).name for p in images.source_paths}


def test_the_embedded_layout_is_scored_on_its_answered_test_images(tiny_data_dir):
    layout = prepare_data(tiny_data_dir)
    splits = split_for_run(layout, val_split=0.25, test_split=0.2, seed=0)
    assert layout.kind == "competition" and splits.test_source == "test-answers.csv (test_upload/)"
    assert len(splits.test) == 20 and len(splits.train) + len(splits.val) == 80  # test_split is not needed here
    answers = dict(line.split(",") for line in (Path(tiny_data_dir) / "test-answers.csv").read_text().split()[1:])
    for path, label in zip(splits.test.source_paths, splits.test.labels):
        assert splits.test.class_names[label] == answers[Path(path).name]


def test_class_folders_hold_out_one_test_set_for_every_seed(class_folders):
    layout = prepare_data(class_folders)
    runs = [split_for_run(layout, val_split=0.25, test_split=0.25, seed=seed) for seed in (0, 1, 2)]
    assert layout.kind == "class_folders"
    assert runs[0].test_source == f"0.25 of the labelled images, held out with data seed {TEST_SPLIT_SEED}"
    tests = [_names(r.test) for r in runs]
    assert tests[0] == tests[1] == tests[2] and len(tests[0]) == 20  # the same images, whatever the seed
    assert _names(runs[0].val) != _names(runs[1].val)  # validation is drawn by the seed
    everything = _names(runs[0].images)
    for run in runs:
        train, val, test = _names(run.train), _names(run.val), _names(run.test)
        assert not (train & val or train & test or val & test) and train | val | test == everything
        assert set(np.unique(run.test.labels)) == set(range(10))  # stratified
    assert split_for_run(layout, val_split=0.25, test_split=0, seed=0).test_source == "none (test_split=0)"


def test_runs_that_share_a_seed_share_their_split(class_folders):
    layout = prepare_data(class_folders)
    first, second = (split_for_run(layout, val_split=0.25, test_split=0.2, seed=3) for _ in range(2))
    assert first.train.paths == second.train.paths and first.val.paths == second.val.paths


def test_a_pre_split_dataset_is_used_as_given(pre_split):
    layout = prepare_data(pre_split)
    assert layout.kind == "pre_split" and layout.val_dir.name == "valid" and layout.labelled_test_dir.name == "test"
    splits = split_for_run(layout, val_split=0.3, test_split=0.2, seed=7)  # neither fraction applies
    assert (len(splits.train), len(splits.val), len(splits.test)) == (48, 16, 16)
    assert splits.val_source == "the valid/ folder" and splits.test_source == "the test/ folder"
    assert _names(splits.val) == {Path(p).name for p in (pre_split / "valid").rglob("*.jpg")}
    names = splits.train.class_names
    for images in (splits.val, splits.test):
        for path, label in zip(images.source_paths, images.labels):
            assert Path(path).parent.name == names[label]  # labelled by folder name, in the training folders' order
    described = splits.describe()
    assert described == {"layout": "pre_split", "n_train": 48, "n_val": 16, "n_test": 16,
                         "val_source": "the valid/ folder", "test_source": "the test/ folder"}


def test_a_final_run_on_a_pre_split_dataset_trains_on_the_validation_folder_too(pre_split):
    splits = split_for_run(prepare_data(pre_split), val_split=0, test_split=0, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (64, 0, 16)
    assert splits.val_source == "none (val_split=0: the valid/ folder trains)"


def test_a_split_with_a_class_the_training_folders_lack_is_an_error(pre_split, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(pre_split, broken)
    (broken / "test" / "0").rename(broken / "test" / "zeppelin")
    with pytest.raises(DataError, match="class folder.*'zeppelin' that the training folders do not have"):
        split_for_run(prepare_data(broken), val_split=0.2, test_split=0.2, seed=0)


def test_fractions_out_of_range_fail(class_folders):
    with pytest.raises(ConfigError, match=r"test_split=1 is out of range"):
        split_for_run(prepare_data(class_folders), val_split=0.2, test_split=1, seed=0)


def test_data_check_reports_each_split_its_balance_and_duplicates_across_splits(pre_split, tmp_path):
    leaky = tmp_path / "leaky"
    shutil.copytree(pre_split, leaky)
    leaked = next((leaky / "train" / "3").iterdir())
    shutil.copy(leaked, leaky / "test" / "3" / "copy-of-a-training-image.jpg")
    for image in (leaky / "valid" / "7").iterdir():
        image.unlink()  # a split without one class
    report = check_dataset(leaky)
    assert report.usable and report.layout == "pre_split"
    assert {s: sum(c.values()) for s, c in report.split_counts.items()} == {"train": 48, "validation": 15, "test": 17}
    assert report.split_counts["validation"]["7"] == 0
    assert report.cross_split_duplicates == [("train", str(leaked), "test",
                                              str(leaky / "test" / "3" / "copy-of-a-training-image.jpg"))]
    text = report.to_text()
    assert "splits: train 48 images, validation 15 images" in text and "duplicates across splits" in text
    assert any("appear in two splits" in w for w in report.warnings)
    assert any("validation split has no images of class(es) 7" in w for w in report.warnings)
