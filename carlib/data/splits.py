"""A run's three splits: training, validation (picks the checkpoint) and a held-out test set (scores it).

The test set is the same for every run of a dataset, whatever the run's own ``seed``, so runs of a
study are scored on the same images and their test figures are comparable:

- a pre-split dataset's ``test/`` class folders;
- else the labelled test images the dataset ships (the embedded dataset's ``test-answers.csv``);
- else a stratified share ``test_split`` of the labelled images, held out with a fixed data seed
  (:data:`TEST_SPLIT_SEED`); ``test_split=0`` keeps no test set (a final run).

The validation set is a pre-split dataset's ``validation/`` folder (as given, never re-split), else
a stratified share ``val_split`` of the remaining images, drawn by the run's ``seed`` (runs that
share a seed share the split). With ``val_split=0`` a final run trains on everything but the test
set, the ``validation/`` folder included.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from carlib.data.folders import DataLayout, ImageList, list_class_images, read_sample_submission, stratified_split
from carlib.data.screen import describe_files, screen_images
from carlib.errors import ConfigError, DataError, DataWarning

__all__ = ["TEST_SPLIT_SEED", "RunSplits", "split_for_run", "answered_test_images"]

# The data seed of a carved test split: one test set per dataset, whatever a run's own seed.
TEST_SPLIT_SEED = 0


@dataclasses.dataclass(frozen=True)
class RunSplits:
    """The images of a run: ``images`` are all of the training folders; ``train``, ``val`` and ``test`` the splits.

    ``val_source`` and ``test_source`` say where each split came from, in words (the record keeps them).
    """

    layout: DataLayout
    images: ImageList
    train: ImageList
    val: ImageList
    test: ImageList
    val_source: str
    test_source: str

    def describe(self) -> dict[str, object]:
        """What a record says about the splits."""
        return {"layout": self.layout.kind, "n_train": len(self.train), "n_val": len(self.val),
                "n_test": len(self.test), "val_source": self.val_source, "test_source": self.test_source}


def _empty(class_names: tuple[str, ...]) -> ImageList:
    return ImageList((), np.zeros(0, dtype=np.int32), class_names)


def _concatenate(first: ImageList, second: ImageList) -> ImageList:
    return ImageList(first.paths + second.paths, np.concatenate([first.labels, second.labels]).astype(np.int32),
                     first.class_names, sources=(first.source_paths + second.source_paths)
                     if first.sources or second.sources else ())


def answered_test_images(layout: DataLayout, class_names: tuple[str, ...]) -> ImageList:
    """The test images named in ``test-answers.csv`` (``Id,Category``), labelled with the training folders' indices.

    Unusable files are skipped with one :class:`~carlib.errors.DataWarning` naming each.
    """
    answers = read_sample_submission(layout.answers)
    ids, categories = answers.iloc[:, 0].tolist(), answers.iloc[:, 1].str.strip().tolist()
    unknown = sorted(set(categories) - set(class_names))
    if unknown:
        raise DataError(f"{layout.answers}: categories {unknown[:5]} are not training class folders "
                        f"({', '.join(class_names)}); fix the answers, or remove the file to hold out a test split.")
    screened = screen_images([layout.test_dir / name for name in ids])
    if screened.unusable:
        warnings.warn(f"skipped {len(screened.unusable)} test image(s) that cannot be used: "
                      f"{describe_files(screened.unusable)}", DataWarning, stacklevel=3)
    path_of = dict(zip(screened.sources, screened.usable))
    keep = [i for i, name in enumerate(ids) if str(layout.test_dir / name) in path_of]
    if not keep:
        raise DataError(f"{layout.answers}: none of its {len(ids)} images under {layout.test_dir} can be read.")
    return ImageList(tuple(path_of[str(layout.test_dir / ids[i])] for i in keep),
                     np.asarray([class_names.index(categories[i]) for i in keep], dtype=np.int32), class_names,
                     sources=tuple(str(layout.test_dir / ids[i]) for i in keep))


def split_for_run(layout: DataLayout, *, val_split: float, test_split: float, seed: int) -> RunSplits:
    """The training, validation and test images of a run on ``layout`` (see the module's docstring)."""
    for name, value in (("val_split", val_split), ("test_split", test_split)):
        if not 0 <= value < 1:
            raise ConfigError(f"{name}={value!r} is out of range: expected a fraction in [0, 1).")
    images = list_class_images(layout.train_dir)
    names = images.class_names
    if layout.labelled_test_dir is not None:
        dev, test = images, list_class_images(layout.labelled_test_dir, class_names=names)
        test_source = f"the {layout.labelled_test_dir.name}/ folder"
    elif layout.answers is not None:
        dev, test = images, answered_test_images(layout, names)
        test_source = f"{layout.answers.name} ({layout.test_dir.name}/)"
    elif test_split > 0:
        dev_idx, test_idx = stratified_split(images.labels, test_split, TEST_SPLIT_SEED)
        dev, test = images.subset(dev_idx), images.subset(test_idx)
        test_source = f"{test_split:g} of the labelled images, held out with data seed {TEST_SPLIT_SEED}"
    else:
        dev, test, test_source = images, _empty(names), "none (test_split=0)"
    if layout.val_dir is not None:
        val = list_class_images(layout.val_dir, class_names=names)
        if val_split > 0:
            train, val_source = dev, f"the {layout.val_dir.name}/ folder"
        else:  # a final run: the validation folder trains too
            train, val, val_source = _concatenate(dev, val), _empty(names), \
                f"none (val_split=0: the {layout.val_dir.name}/ folder trains)"
    elif val_split > 0:
        train_idx, val_idx = stratified_split(dev.labels, val_split, seed)
        train, val = dev.subset(train_idx), dev.subset(val_idx)
        val_source = f"{val_split:g} of the training images, split by seed {seed}"
    else:
        train, val, val_source = dev, _empty(names), "none (val_split=0)"
    return RunSplits(layout, images, train, val, test, val_source, test_source)
