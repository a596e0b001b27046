"""The dataset check: what a folder of photos holds, and what is wrong with it, before any training.

:func:`check_dataset` (and ``carlib data check PATH [--json]``) reports images per class and the
class imbalance, the image size distribution, duplicates by content hash (within the training
set, and between training and test), every file that cannot be used with its reason, files
read through a converted copy (EXIF-rotated photos, palette BMPs, …), folders that are not
classes, and mismatches between ``sample-submission.csv`` and the test folder in both
directions. It uses the same rules as training (:func:`carlib.data.folders.find_class_folders`,
:func:`carlib.data.screen.screen_images`), so what it calls usable is what a run trains on.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from carlib.data.folders import empty_classes_message, find_class_folders, prepare_data, read_sample_submission
from carlib.data.screen import ImageInfo, screen_images, skip_reason
from carlib.errors import ArchiveError, DataError, SubmissionError

__all__ = ["DatasetReport", "check_dataset", "report_json", "TINY_SIDE", "HUGE_SIDE"]

TINY_SIDE = 32  # px: an image whose shorter side is below this carries little detail at any training size
HUGE_SIDE = 4000  # px: an image whose longer side reaches this costs ~50 MB+ to decode, every epoch without a cache


def _size_summary(infos: list[ImageInfo]) -> dict[str, Any]:
    if not infos:
        return {"n": 0}
    widths = np.array([i.width for i in infos])
    heights = np.array([i.height for i in infos])
    return {
        "n": len(infos),
        "width": {"min": int(widths.min()), "median": float(np.median(widths)), "max": int(widths.max())},
        "height": {"min": int(heights.min()), "median": float(np.median(heights)), "max": int(heights.max())},
        "n_tiny": int(np.sum(np.minimum(widths, heights) < TINY_SIDE)),
        "n_huge": int(np.sum(np.maximum(widths, heights) >= HUGE_SIDE)),
        "tiny": [i.path for i in infos if min(i.width, i.height) < TINY_SIDE],
        "huge": [i.path for i in infos if max(i.width, i.height) >= HUGE_SIDE],
    }


@dataclasses.dataclass
class DatasetReport:
    """What :func:`check_dataset` found. ``usable`` is False when training cannot go on (see ``errors``).

    Paths are absolute. ``unusable``: (file, reason) for every file that cannot be used,
    training and test; ``ignored``: (folder or file, reason) next to the classes;
    ``converted``: (file, why) read through a converted copy; ``duplicate_groups``: lists of
    training files with identical bytes (``conflicting_groups``: those spanning several
    classes); ``train_test_duplicates``: (training file, test file) pairs with identical bytes.
    """

    path: str
    train_dir: str | None = None
    test_dir: str | None = None
    sample_submission: str | None = None
    class_counts: dict[str, int] = dataclasses.field(default_factory=dict)
    imbalance_ratio: float | None = None
    sizes: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    unusable: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    ignored: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    converted: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    duplicate_groups: list[list[str]] = dataclasses.field(default_factory=list)
    conflicting_groups: list[list[str]] = dataclasses.field(default_factory=list)
    train_test_duplicates: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    n_test_images: int = 0
    missing_test_files: list[str] = dataclasses.field(default_factory=list)
    layout: str | None = None  # competition | pre_split | class_folders
    split_dirs: dict[str, str] = dataclasses.field(default_factory=dict)  # a pre-split dataset's validation and test
    split_counts: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)  # split -> class -> images
    cross_split_duplicates: list[tuple[str, str, str, str]] = dataclasses.field(default_factory=list)
    unlisted_test_files: list[str] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def usable(self) -> bool:
        """Whether training can go on (no errors; warnings are fine)."""
        return not self.errors

    @property
    def n_train_images(self) -> int:
        """Usable training images over all classes."""
        return sum(self.class_counts.values())

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-serialisable (``carlib data check --json``)."""
        data = dataclasses.asdict(self)
        for key in ("unusable", "ignored", "converted"):
            data[key] = [{"path": p, "reason": r} for p, r in getattr(self, key)]
        data["train_test_duplicates"] = [{"train": a, "test": b} for a, b in self.train_test_duplicates]
        data["cross_split_duplicates"] = [{"split": a, "path": p, "other_split": b, "other_path": q}
                                          for a, p, b, q in self.cross_split_duplicates]
        data["usable"] = self.usable
        data["n_train_images"] = self.n_train_images
        return data

    def to_text(self) -> str:
        """A readable report: verdict, classes, sizes, duplicates, then every problem file with its reason."""
        lines = [f"dataset check: {self.path}" + (f" ({self.layout} layout)" if self.layout else "")]
        lines.append("verdict: usable for training" if self.usable
                     else f"verdict: NOT usable for training ({len(self.errors)} error(s) below)")
        if len(self.split_counts) > 1:  # a pre-split dataset: images per class in each split
            splits = list(self.split_counts)
            lines.append("splits: " + ", ".join(f"{s} {sum(self.split_counts[s].values())} images" +
                                                (f" ({self.split_dirs[s]})" if s in self.split_dirs else "")
                                                for s in splits))
            names = list(dict.fromkeys(n for counts in self.split_counts.values() for n in counts))
            width = max(len(n) for n in names)
            lines.append(f"  {'class':>{width}}  " + "  ".join(f"{s:>10}" for s in splits))
            lines += [f"  {n:>{width}}  " + "  ".join(f"{self.split_counts[s].get(n, 0):>10d}" for s in splits)
                      for n in names]
        if self.class_counts:
            lines.append(f"train: {self.train_dir}: {len(self.class_counts)} classes, {self.n_train_images} usable "
                         f"images ({len(self.unusable)} unusable files in all, {len(self.converted)} read through a "
                         "converted copy)")
            width = max(len(name) for name in self.class_counts)
            lines += [f"  {name:>{width}}  {count:6d}" for name, count in self.class_counts.items()]
            if self.imbalance_ratio is not None:
                lines.append(f"  imbalance (largest / smallest class): {self.imbalance_ratio:.2f}")
        for split, summary in self.sizes.items():
            if summary.get("n"):
                w, h = summary["width"], summary["height"]
                lines.append(f"image sizes ({split}, {summary['n']} images): width min/median/max "
                             f"{w['min']}/{w['median']:g}/{w['max']}, height {h['min']}/{h['median']:g}/{h['max']}; "
                             f"{summary['n_tiny']} tiny (shorter side < {TINY_SIDE} px), "
                             f"{summary['n_huge']} huge (longer side >= {HUGE_SIDE} px)")
        if self.test_dir:
            lines.append(f"test: {self.test_dir}: {self.n_test_images} usable images")
        if self.sample_submission:
            lines.append(f"sample submission: {self.sample_submission}: {len(self.missing_test_files)} id(s) without "
                         f"a file, {len(self.unlisted_test_files)} test file(s) not listed")
        sections = [
            ("unusable files", self.unusable),
            ("ignored (not class folders)", self.ignored),
            ("read through a converted copy", self.converted),
            ("sample-submission ids without a test file", [(name, "missing") for name in self.missing_test_files]),
            ("test files not in sample-submission.csv", [(name, "not listed") for name in self.unlisted_test_files]),
            ("training duplicates across classes (identical bytes)", [(" = ".join(g), "conflicting labels")
                                                                      for g in self.conflicting_groups]),
            ("train/test duplicates (identical bytes)",
             [(f"{a} = {b}", "leak") for a, b in self.train_test_duplicates]),
            ("duplicates across splits (identical bytes)",
             [(f"{p} ({a}) = {q} ({b})", "leak") for a, p, b, q in self.cross_split_duplicates]),
        ]
        for title, items in sections:
            if items:
                lines.append(f"{title} ({len(items)}):")
                lines += [f"  {path}: {reason}" for path, reason in items]
        if self.duplicate_groups:
            lines.append(f"duplicate groups within train: {len(self.duplicate_groups)} "
                         f"({sum(len(g) for g in self.duplicate_groups)} files)")
        for title, items in (("errors", self.errors), ("warnings", self.warnings)):
            if items:
                lines.append(f"{title}:")
                lines += [f"  - {item}" for item in items]
        return "\n".join(lines)


def _test_files(test_dir: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    files, skipped = [], []
    for file in sorted(test_dir.rglob("*")):
        if file.is_file():
            reason = skip_reason(file, test_dir)
            (skipped.append((str(file), reason)) if reason else files.append(file))
    return files, skipped


def check_dataset(path: str | os.PathLike | None = None) -> DatasetReport:
    """Check a dataset folder (competition layout, archives or class folders; None = the embedded dataset).

    Archives are extracted as for training. Never raises for bad data: every problem is in
    the report, and ``report.usable`` says whether training can go on.
    """
    report = DatasetReport(path=str(Path(path).expanduser()) if path is not None else "(embedded dataset)")
    try:
        layout = prepare_data(path)
        found = find_class_folders(layout.train_dir)
    except (FileNotFoundError, ArchiveError, DataError) as err:
        report.errors.append(str(err))
        return report
    report.path = str(layout.root)
    report.train_dir = str(layout.train_dir)
    report.ignored = list(found.ignored)
    report.unusable = list(found.skipped)

    # Training images, per class, with content hashes.
    report.class_counts, hashes = _screen_class_folders(report, found, "train")
    empty = [folder for folder in found.folders if not report.class_counts[folder.name]]
    counts = [c for c in report.class_counts.values() if c]
    report.imbalance_ratio = max(counts) / min(counts) if counts else None
    for members in hashes.values():
        if len(members) > 1:
            report.duplicate_groups.append([p for _, p in members])
            if len({c for c, _ in members}) > 1:
                report.conflicting_groups.append([f"{p} (class {c})" for c, p in members])

    # Test images, the sample submission, and leaks between the two sets.
    if layout.test_dir is not None:
        report.test_dir = str(layout.test_dir)
        files, skipped = _test_files(layout.test_dir)
        screened = screen_images(files, with_hashes=True)
        report.unusable += skipped + list(screened.unusable)
        report.n_test_images = len(screened.usable)
        test_infos = [screened.infos[s] for s in screened.sources]
        report.sizes["test"] = _size_summary(test_infos)
        report.converted += [(i.path, i.convert) for i in test_infos if i.convert]
        for info in test_infos:
            for _, train_path in hashes.get(info.sha1 or "", []):
                report.train_test_duplicates.append((train_path, info.path))
        if layout.sample_submission is not None:
            _check_sample_submission(report, layout.sample_submission, layout.test_dir, files)
    _check_labelled_splits(report, layout, hashes)
    report.unusable.sort()
    _verdict(report, found, empty)
    return report


def _screen_class_folders(report: DatasetReport, found, split: str) -> tuple[dict[str, int], dict[str, list]]:
    """Screen one split's class folders into ``report`` (unusable and converted files, the split's sizes).

    Returns the usable images per class and the content hashes, sha1 -> [(class, path)].
    """
    hashes: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
    counts, infos = {}, []
    for folder, files in zip(found.folders, found.files):
        screened = screen_images(files, with_hashes=True)
        report.unusable += screened.unusable
        counts[folder.name] = len(screened.usable)
        for source in screened.sources:
            info = screened.infos[source]
            infos.append(info)
            if info.convert:
                report.converted.append((source, info.convert))
            if info.sha1:
                hashes[info.sha1].append((folder.name, source))
    report.sizes[split] = _size_summary(infos)
    return counts, hashes


def _check_labelled_splits(report: DatasetReport, layout, train_hashes: dict[str, list[tuple[str, str]]]) -> None:
    """A pre-split dataset's validation and test class folders: images per class, unusable files, and duplicates
    across splits (identical bytes in two splits make the held-out figures optimistic)."""
    report.layout = layout.kind
    report.split_counts = {"train": dict(report.class_counts)}
    seen = {"train": train_hashes}
    for split, folder in (("validation", layout.val_dir), ("test", layout.labelled_test_dir)):
        if folder is None:
            continue
        report.split_dirs[split] = str(folder)
        found = find_class_folders(folder)
        report.unusable += list(found.skipped)
        report.ignored += list(found.ignored)
        unknown = [f.name for f in found.folders if f.name not in report.class_counts]
        if unknown:
            report.errors.append(f"the {folder.name}/ split has class folder(s) {', '.join(map(repr, unknown))} that "
                                 f"train/ does not have: every split needs the training folders' class names.")
        counts, hashes = _screen_class_folders(report, found, split)
        report.split_counts[split] = {name: counts.get(name, 0) for name in report.class_counts} | \
            {name: n for name, n in counts.items() if name not in report.class_counts}
        for other, other_hashes in seen.items():
            for sha1, members in hashes.items():
                for _, first in other_hashes.get(sha1, []):
                    for _, second in members:
                        report.cross_split_duplicates.append((other, first, split, second))
        seen[split] = hashes


def _check_sample_submission(report: DatasetReport, sample: Path, test_dir: Path, files: list[Path]) -> None:
    report.sample_submission = str(sample)
    try:
        ids = read_sample_submission(sample).iloc[:, 0].tolist()
    except (SubmissionError, ValueError, OSError) as err:
        report.warnings.append(f"{sample.name} cannot be read, so submissions cannot be written: {err}")
        return
    present = {f.relative_to(test_dir).as_posix() for f in files}
    report.missing_test_files = [i for i in ids if i not in present]
    listed = set(ids)
    report.unlisted_test_files = sorted(p for p in present if p not in listed)


def _verdict(report: DatasetReport, found, empty: list[Path]) -> None:
    """Errors (training cannot go on) and warnings, each naming the problem and what to do."""
    if not report.n_train_images:
        report.errors.append(f"no usable images under {report.train_dir!r}: expected one sub-folder per class "
                             "holding image files (e.g. train/0/001.jpg).")
    elif empty:
        report.errors.append(empty_classes_message(empty))
    elif len(report.class_counts) < 2:
        report.errors.append(f"only one class ({next(iter(report.class_counts))!r}) under {report.train_dir!r}: a "
                             "classifier needs at least two class folders.")
    if report.unusable:
        report.warnings.append(f"{len(report.unusable)} file(s) cannot be used and are skipped (listed above); "
                               "runs record them under data.skipped.")
    if report.ignored:
        report.warnings.append(f"{len(report.ignored)} folder(s)/file(s) next to the classes are ignored "
                               "(listed above).")
    if report.imbalance_ratio and report.imbalance_ratio >= 5:
        report.warnings.append(f"the largest class has {report.imbalance_ratio:.1f}x the images of the smallest: "
                               "watch per-class accuracy, not only the mean.")
    if report.conflicting_groups:
        report.warnings.append(f"{len(report.conflicting_groups)} identical image(s) appear in different classes: "
                               "their labels contradict each other; remove the wrong copies.")
    if report.train_test_duplicates:
        report.warnings.append(f"{len(report.train_test_duplicates)} test image(s) are byte-identical to training "
                               "images (listed above).")
    if report.cross_split_duplicates:
        report.warnings.append(f"{len(report.cross_split_duplicates)} image(s) appear in two splits (listed above): "
                               "the held-out figures are optimistic by that much; remove one copy of each.")
    for split, counts in report.split_counts.items():
        missing = [name for name, n in counts.items() if not n]
        if split != "train" and missing:
            report.warnings.append(f"the {split} split has no images of class(es) {', '.join(missing)}: its figures "
                                   "say nothing about them.")
    within = sum(len(g) - 1 for g in report.duplicate_groups)
    if within:
        report.warnings.append(f"{within} training image(s) are copies of others: with a validation split, copies "
                               "on both sides inflate validation accuracy.")
    if report.missing_test_files:
        report.warnings.append(f"{len(report.missing_test_files)} id(s) in sample-submission.csv have no file in "
                               "the test folder: carlib predict gives them the fallback class.")
    if report.unlisted_test_files:
        report.warnings.append(f"{len(report.unlisted_test_files)} test file(s) are not in sample-submission.csv: "
                               "carlib predict ignores them.")
    sizes = report.sizes.get("train", {})
    if sizes.get("n_tiny"):
        report.warnings.append(f"{sizes['n_tiny']} training image(s) have a side under {TINY_SIDE} px: upscaled, "
                               "they carry little detail.")


def report_json(report: DatasetReport) -> str:
    """The report as indented JSON text."""
    return json.dumps(report.to_dict(), indent=1)
