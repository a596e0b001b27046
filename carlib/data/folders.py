"""Finding the data: competition layout or plain class folders, and the stratified split."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import warnings
from pathlib import Path

import numpy as np

from carlib.data.archives import extract_archive
from carlib.data.embedded import cache_root, embedded_data_dir, ensure_embedded_data

__all__ = ["DataLayout", "ImageList", "prepare_data", "list_class_images", "stratified_split", "IMAGE_EXTENSIONS"]

# What tf.io.decode_image reads.
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif"}
COMPETITION = "sf-dl-car-classification"


@dataclasses.dataclass(frozen=True)
class DataLayout:
    """Where a dataset's parts are once extracted."""

    root: Path
    train_dir: Path
    test_dir: Path | None
    sample_submission: Path | None


@dataclasses.dataclass(frozen=True)
class ImageList:
    """Labelled image files of a class-folder tree; ``class_names[label]`` is the folder name."""

    paths: tuple[str, ...]
    labels: np.ndarray
    class_names: tuple[str, ...]
    skipped: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: np.ndarray) -> "ImageList":
        """The images at ``indices`` (same classes)."""
        return ImageList(tuple(self.paths[i] for i in indices), self.labels[indices], self.class_names)


def _missing_data_message(path: Path) -> str:
    return (
        f"data_dir {str(path)!r} does not exist. Download the competition data "
        f"(`kaggle competitions download -c {COMPETITION}`, then unzip the download into that folder: "
        "train.zip, test.zip, sample-submission.csv), point data_dir at any folder of class sub-folders, "
        "or leave data_dir unset to use the embedded synthetic dataset."
    )


def _writable_extract_dir(root: Path) -> Path:
    """Extract next to the archives when possible; read-only inputs (Kaggle's /kaggle/input) go to the cache."""
    if os.access(root, os.W_OK):
        return root
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:10]
    return cache_root() / "extracted" / f"{root.name}-{digest}"


def prepare_data(data_dir: str | os.PathLike | None = None) -> DataLayout:
    """Make a dataset ready to read: extract archives once, find train and test folders.

    ``data_dir`` may hold the competition files (``train.zip``/``test.zip`` or their
    extracted ``train/``/``test_upload/``, ``sample-submission.csv``) or simply class
    sub-folders. ``None`` means the embedded synthetic dataset, generated on first use.
    """
    root = ensure_embedded_data() if data_dir is None else Path(data_dir).expanduser()
    if data_dir is not None and Path(root).resolve() == embedded_data_dir().resolve():
        root = ensure_embedded_data()
    if not root.is_dir():
        raise FileNotFoundError(_missing_data_message(root))
    extract_to = _writable_extract_dir(root)
    for archive, folder in (("train.zip", "train"), ("test.zip", "test_upload")):
        if (root / archive).is_file() and not (root / folder).is_dir():
            extract_archive(root / archive, extract_to)
    base = root if (root / "train").is_dir() else extract_to
    train_dir = base / "train" if (base / "train").is_dir() else root
    test_dir = next((d / "test_upload" for d in (root, extract_to) if (d / "test_upload").is_dir()), None)
    sample = root / "sample-submission.csv"
    return DataLayout(root=root, train_dir=train_dir, test_dir=test_dir, sample_submission=sample if sample.is_file() else None)


def _class_sort_key(name: str):
    # Numeric folder names sort as numbers ("2" before "10"), the competition's labels.
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def list_class_images(train_dir: str | os.PathLike) -> ImageList:
    """Every image under ``train_dir/<class>/``, labelled by folder (classes in numeric/alphabetical order).

    Files that are not images by extension, and hidden files, are skipped with a warning
    that names each one; an empty tree is an error.
    """
    train_dir = Path(train_dir)
    class_dirs = sorted(
        (d for d in train_dir.iterdir() if d.is_dir() and not d.name.startswith((".", "__"))),
        key=lambda d: _class_sort_key(d.name),
    )
    paths, labels, skipped = [], [], []
    for label, class_dir in enumerate(class_dirs):
        for file in sorted(class_dir.rglob("*")):
            if not file.is_file():
                continue
            if file.name.startswith(".") or file.suffix.lower() not in IMAGE_EXTENSIONS:
                skipped.append(str(file))
                continue
            paths.append(str(file))
            labels.append(label)
    if skipped:
        warnings.warn(f"skipped {len(skipped)} non-image file(s): {', '.join(skipped)}", stacklevel=2)
    if not paths:
        raise ValueError(
            f"no images found under {str(train_dir)!r}: expected one sub-folder per class holding "
            f"{'/'.join(sorted(IMAGE_EXTENSIONS))} files (e.g. train/0/001.jpg)."
        )
    return ImageList(tuple(paths), np.asarray(labels, dtype=np.int32), tuple(d.name for d in class_dirs), tuple(skipped))


def stratified_split(labels: np.ndarray, val_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of (train, validation), each class split in the same proportion, fixed by ``seed``.

    ``val_split=0`` gives an empty validation set. A class with a single image stays in training.
    """
    if not 0 <= val_split < 1:
        raise ValueError(f"val_split={val_split!r} is out of range: expected a fraction in [0, 1).")
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        n_val = 0
        if val_split > 0 and len(members) >= 2:  # a single image stays in training
            n_val = min(max(int(round(len(members) * val_split)), 1), len(members) - 1)
        val_idx.extend(members[:n_val])
        train_idx.extend(members[n_val:])
    return np.sort(np.asarray(train_idx, dtype=np.int64)), np.sort(np.asarray(val_idx, dtype=np.int64))
