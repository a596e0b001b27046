"""Finding the data: the competition layout, a pre-split dataset or plain class folders; the stratified split.

Three layouts are recognised (:func:`prepare_data`, ``DataLayout.kind``):

- ``competition``: ``train.zip``/``train/`` of class folders and ``test.zip``/``test_upload/`` of
  unlabelled test images listed by ``sample-submission.csv`` (the embedded dataset adds
  ``test-answers.csv``, the test images' labels);
- ``pre_split``: ``train/`` plus ``validation/`` (or ``val/``, ``valid/``) and/or ``test/``, each of
  class folders (the layout most public datasets arrive in);
- ``class_folders``: one sub-folder per class, nothing else.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from carlib.data.archives import extract_archive
from carlib.data.embedded import cache_root, embedded_data_dir, ensure_embedded_data
from carlib.data.screen import IMAGE_EXTENSIONS, OS_JUNK_FOLDERS, describe_files, screen_images, skip_reason
from carlib.errors import ConfigError, DataError, DataWarning, MissingFileError, SubmissionError

__all__ = ["DataLayout", "ImageList", "ClassFolders", "prepare_data", "find_class_folders", "list_class_images",
           "empty_classes_message", "stratified_split", "sample_images", "read_sample_submission", "IMAGE_EXTENSIONS",
           "DataError", "DataWarning"]

COMPETITION = "sf-dl-car-classification"


VALIDATION_FOLDERS = ("validation", "val", "valid")  # names of a pre-split dataset's validation folder
TEST_FOLDER = "test"
ANSWERS_FILE = "test-answers.csv"


@dataclasses.dataclass(frozen=True)
class DataLayout:
    """Where a dataset's parts are once extracted.

    ``test_dir``: the competition's unlabelled test images (``test_upload/``); ``answers``: their
    labels when the dataset ships them (``test-answers.csv``); ``val_dir``/``labelled_test_dir``: a
    pre-split dataset's validation and test class folders.
    """

    root: Path
    train_dir: Path
    test_dir: Path | None
    sample_submission: Path | None
    kind: str = "class_folders"  # competition | pre_split | class_folders
    val_dir: Path | None = None
    labelled_test_dir: Path | None = None
    answers: Path | None = None


@dataclasses.dataclass(frozen=True)
class ImageList:
    """Labelled image files of a class-folder tree; ``class_names[label]`` is the folder name."""

    paths: tuple[str, ...]
    labels: np.ndarray
    class_names: tuple[str, ...]
    skipped: tuple[str, ...] = ()  # files that cannot be used (in class folders, or junk in ignored ones)
    skip_reasons: tuple[tuple[str, str], ...] = ()  # (file, reason) for each skipped file
    ignored: tuple[tuple[str, str], ...] = ()  # (folder or file, reason): next to the classes, not a class
    sources: tuple[str, ...] = ()  # the original file of each path (a converted copy's source); () = paths

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def source_paths(self) -> tuple[str, ...]:
        """The original file of each image (``paths`` may point at a converted copy in the cache)."""
        return self.sources or self.paths

    @property
    def n_converted(self) -> int:
        """How many images are read from a converted copy (EXIF-rotated, palette BMP, …)."""
        return sum(a != b for a, b in zip(self.paths, self.source_paths))

    def subset(self, indices: np.ndarray) -> "ImageList":
        """The images at ``indices`` (same classes)."""
        sources = tuple(self.sources[i] for i in indices) if self.sources else ()
        return ImageList(tuple(self.paths[i] for i in indices), self.labels[indices], self.class_names,
                         sources=sources)


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
        raise MissingFileError(_missing_data_message(root))
    extract_to = _writable_extract_dir(root)
    for archive, folder in (("train.zip", "train"), ("test.zip", "test_upload")):
        if (root / archive).is_file() and not (root / folder).is_dir():
            extract_archive(root / archive, extract_to)
    base = root if (root / "train").is_dir() else extract_to
    train_dir = base / "train" if (base / "train").is_dir() else root
    test_dir = next((d / "test_upload" for d in (root, extract_to) if (d / "test_upload").is_dir()), None)
    sample = root / "sample-submission.csv"
    answers = root / ANSWERS_FILE
    val_dir = next((base / name for name in VALIDATION_FOLDERS if _holds_class_folders(base / name)), None)
    labelled_test_dir = base / TEST_FOLDER if _holds_class_folders(base / TEST_FOLDER) else None
    if train_dir != root and (val_dir or labelled_test_dir):
        kind = "pre_split"
    elif test_dir is not None or sample.is_file() or (root / "train.zip").is_file():
        kind = "competition"
    else:
        kind = "class_folders"
    return DataLayout(root=root, train_dir=train_dir, test_dir=test_dir,
                      sample_submission=sample if sample.is_file() else None, kind=kind,
                      val_dir=val_dir if kind == "pre_split" else None,
                      labelled_test_dir=labelled_test_dir if kind == "pre_split" else None,
                      answers=answers if answers.is_file() and test_dir is not None else None)


def _holds_class_folders(path: Path) -> bool:
    """Whether ``path`` is a folder with at least one visible sub-folder (a split of a pre-split dataset)."""
    return path.is_dir() and any(p.is_dir() and not p.name.startswith((".", "__")) for p in path.iterdir())


def _class_sort_key(name: str):
    # Numeric folder names sort as numbers ("2" before "10"), the competition's labels.
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


@dataclasses.dataclass(frozen=True)
class ClassFolders:
    """The class folders of a tree and their candidate image files, before any file is opened.

    ``files[i]`` are the files of ``folders[i]`` with an image extension; ``skipped`` are the
    files inside candidate folders that are junk or not images by name, with the reason;
    ``ignored`` are folders and files next to the classes that are not classes, with the
    reason; ``numbered``: the classes are numbered folders (the competition's layout).
    """

    root: Path
    folders: tuple[Path, ...]
    files: tuple[tuple[Path, ...], ...]
    skipped: tuple[tuple[str, str], ...]
    ignored: tuple[tuple[str, str], ...]
    numbered: bool


def find_class_folders(train_dir: str | os.PathLike) -> ClassFolders:
    """Find the class folders under ``train_dir`` and their image files by name (nothing is decoded).

    Hidden and OS-junk folders (``__MACOSX``, ``.ipynb_checkpoints``) are never classes, nor
    are loose files. When the folders holding images are all numbered (the competition's
    ``train/0 … train/9``), the classes are the numbered folders, and any other folder is
    ignored. A folder holding no image file is ignored unless it is numbered like the
    classes: then it is an empty class (see :func:`list_class_images`).
    """
    train_dir = Path(train_dir)
    if not train_dir.is_dir():
        raise MissingFileError(f"{str(train_dir)!r} is not a folder: expected one sub-folder per class.")
    ignored: list[tuple[str, str]] = []
    candidates = []
    for entry in sorted(train_dir.iterdir()):
        if entry.is_file():
            ignored.append((str(entry), "a file next to the class folders, not inside one"))
        elif entry.name in OS_JUNK_FOLDERS or entry.name.startswith("__"):
            ignored.append((str(entry), "OS junk folder"))
        elif entry.name.startswith("."):
            ignored.append((str(entry), "hidden folder"))
        elif entry.is_dir():
            candidates.append(entry)
    per_folder: dict[Path, tuple[list[Path], list[tuple[str, str]]]] = {}
    for folder in candidates:
        files, skipped = [], []
        for file in sorted(folder.rglob("*")):
            if not file.is_file():
                continue
            reason = skip_reason(file, folder)
            if reason:
                skipped.append((str(file), reason))
            else:
                files.append(file)
        per_folder[folder] = (files, skipped)
    with_images = [f for f in candidates if per_folder[f][0]]
    numbered = bool(with_images) and all(f.name.isdigit() for f in with_images)
    classes = []
    for folder in candidates:
        files, skipped = per_folder[folder]
        if numbered and not folder.name.isdigit():
            ignored.append((str(folder), "not a class folder: the class folders are numbered (0, 1, ...)"))
        elif not files and not (numbered and folder.name.isdigit()):
            ignored.append((str(folder), "no image files: not a class folder"))
        else:
            classes.append(folder)
    classes.sort(key=lambda d: _class_sort_key(d.name))
    # Junk inside ignored folders is named too: every file that is not used is accounted for.
    skipped = tuple(sorted(item for folder in candidates for item in per_folder[folder][1]))
    return ClassFolders(train_dir, tuple(classes), tuple(tuple(per_folder[f][0]) for f in classes), skipped,
                        tuple(sorted(ignored)), numbered)


def empty_classes_message(folders: list[Path]) -> str:
    """The error for class folders without a usable image (shared by training and the dataset check)."""
    return (f"class folder(s) without a usable image: {', '.join(repr(str(f)) for f in folders)}. An empty class "
            "would shift the class indices against the labels (classes are numbered by folder order). "
            "Remove the folder or add images to it.")


def list_class_images(train_dir: str | os.PathLike, *, screen: bool = True,
                      class_names: tuple[str, ...] | None = None) -> ImageList:
    """Every usable image under ``train_dir/<class>/``, labelled by folder (classes in numeric/alphabetical order).

    ``class_names``: the classes of another split (a pre-split dataset's training folders), which
    labels these images by name: a folder that is not one of them is an error, and a class may be
    missing here (a small validation folder).

    Class folders are found by :func:`find_class_folders`. With ``screen`` (the default) every
    file is checked before TensorFlow sees it (:func:`carlib.data.screen.screen_images`,
    cached): unusable files are skipped, and files TensorFlow would decode wrongly (EXIF
    rotation, palette BMPs, …) are read from a converted copy. One :class:`DataWarning` names
    every skipped file and ignored folder with its reason. An empty tree is an error, and so
    is a class folder without a usable image (it would shift the class indices).
    """
    found = find_class_folders(train_dir)
    unknown = [f.name for f in found.folders if class_names is not None and f.name not in class_names]
    if unknown:
        raise DataError(f"{str(found.root)!r} has class folder(s) {', '.join(map(repr, unknown))} that the training "
                        f"folders do not have ({', '.join(class_names)}): every split needs the same class names.")
    skipped = list(found.skipped)
    paths, sources, labels, empty = [], [], [], []
    for index, (folder, files) in enumerate(zip(found.folders, found.files)):
        label = index if class_names is None else class_names.index(folder.name)
        if screen:
            result = screen_images(files)
            skipped.extend(result.unusable)
            usable, originals = result.usable, result.sources
        else:
            usable = originals = tuple(map(str, files))
        if not usable:
            empty.append(folder)
        paths.extend(usable)
        sources.extend(originals)
        labels.extend([label] * len(usable))
    skipped.sort()
    if skipped:
        warnings.warn(f"skipped {len(skipped)} file(s) that cannot be used: {describe_files(skipped)}",
                      DataWarning, stacklevel=2)
    if found.ignored:
        warnings.warn(f"ignored {len(found.ignored)} folder(s)/file(s) under {str(found.root)!r} that are not "
                      f"classes: {describe_files(found.ignored)}", DataWarning, stacklevel=2)
    if not paths:
        raise DataError(
            f"no images found under {str(found.root)!r}: expected one sub-folder per class holding "
            f"{'/'.join(sorted(IMAGE_EXTENSIONS))} files (e.g. train/0/001.jpg)."
        )
    if empty and class_names is None:  # in another split an empty class shifts nothing: it is only missing
        raise DataError(empty_classes_message(empty))
    names = tuple(class_names) if class_names is not None else tuple(f.name for f in found.folders)
    return ImageList(tuple(paths), np.asarray(labels, dtype=np.int32), names,
                     tuple(path for path, _ in skipped), tuple(skipped), found.ignored,
                     tuple(sources) if sources != paths else ())


def stratified_split(labels: np.ndarray, val_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of (train, validation), each class split in the same proportion, fixed by ``seed``.

    ``val_split=0`` gives an empty validation set. A class with a single image stays in training.
    """
    if not 0 <= val_split < 1:
        raise ConfigError(f"val_split={val_split!r} is out of range: expected a fraction in [0, 1).")
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


def sample_images(images: ImageList, n: int, seed: int = 0) -> ImageList:
    """``n`` images spread over the classes (one per class in turn), chosen by ``seed``."""
    rng = np.random.default_rng(seed)
    by_class = [rng.permutation(np.flatnonzero(images.labels == label)) for label in np.unique(images.labels)]
    picked = [members[i] for i in range(max(map(len, by_class))) for members in by_class if i < len(members)]
    return images.subset(np.asarray(picked[:n], dtype=np.int64))


def read_sample_submission(path: str | os.PathLike) -> pd.DataFrame:
    """The sample submission as text (Ids keep their exact format); checks it has an id and a label column."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"sample submission {str(path)!r} does not exist.")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if frame.shape[1] < 2:
        raise SubmissionError(f"{str(path)!r} must have an id column and a label column (e.g. Id,Category); "
                              f"found columns {list(frame.columns)}.")
    ids = frame.iloc[:, 0]
    duplicated = ids[ids.duplicated()].tolist()
    if duplicated:
        raise SubmissionError(f"{str(path)!r} lists these ids more than once: {', '.join(duplicated[:10])}.")
    return frame
