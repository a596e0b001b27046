"""Predicting any photos with a trained model: no training folder, no sample submission, one row per image.

:func:`predict_photos` takes files and folders (searched recursively; hidden files, OS junk and
non-image files in folders are skipped), reads every image through the same screening, decoding
and resizing as evaluation (:func:`carlib.data.screen.screen_images`, then one decode per file in the
prediction pass itself: :func:`carlib.evaluate.readable.predict_files`), optionally with TTA, and
returns one row per image:
the file, the predicted class (index and name), its probability, the next best classes with
``top_k`` > 1, and an ``error`` that says why a file could not be predicted (such a file gets a
row, never a crash).

Class names come from the model itself (:func:`carlib.models.build.save_model` writes them into
the ``.keras`` file at training time), else from ``classes.json`` next to it, else from the run's
record (runs of older carlib versions), else from ``class_names=``. A model without any is still
used: its class indices stand in for names, with a :class:`carlib.errors.ModelWarning` that says
how to name them (the predictions themselves are right; only their names are missing).
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from carlib.base.files import atomic_path
from carlib.data.folders import ImageList, find_class_folders, prepare_data
from carlib.data.screen import screen_images, skip_reason
from carlib.data.tta_presets import check_tta_preset
from carlib.errors import ConfigError, DataError, ModelError, ModelWarning
from carlib.evaluate.predict import load_model, model_for_classes, resolve_model_path
from carlib.evaluate.readable import NOT_DECODABLE, predict_files
from carlib.models.build import read_class_names, read_class_names_file

__all__ = ["predict_photos", "find_photos", "model_class_names", "write_predictions", "predictions_summary",
           "PHOTO_COLUMNS"]

# The first columns of every predictions table; top_k > 1 adds class_index_2, class_name_2, probability_2, ….
PHOTO_COLUMNS = ("file", "class_index", "class_name", "probability")


def find_photos(paths: Sequence[str | os.PathLike]) -> tuple[list[tuple[str, str | None]], list[tuple[str, str]]]:
    """The photos ``paths`` name, in order: ``(file, why it cannot be read or None)``, and the files skipped in folders.

    A folder is searched recursively (sorted); files that are never images by their name (hidden,
    OS junk, other extensions: :func:`carlib.data.screen.skip_reason`) are skipped there and
    returned with the reason. A file named explicitly always gets a row: with the reason if it is
    not an image by its name or does not exist. A file found twice is listed once.
    """
    found: list[tuple[str, str | None]] = []
    skipped: list[tuple[str, str]] = []
    seen: set[Path] = set()

    def add(path: Path, problem: str | None) -> None:
        key = path.resolve() if path.exists() else path.absolute()
        if key not in seen:
            seen.add(key)
            found.append((str(path), problem))

    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            for file in sorted(path.rglob("*")):
                if not file.is_file():
                    continue
                reason = skip_reason(file, path)
                if reason:
                    skipped.append((str(file), reason))
                else:
                    add(file, None)
        elif path.is_file():
            add(path, skip_reason(path, path.parent))
        else:
            add(path, "no such file or folder")
    return found, skipped


def _names_from(source: str | os.PathLike | Sequence[str]) -> tuple[tuple[str, ...], str]:
    """Class names given by the caller: a list, a classes.json / labels.txt file, or a training data folder."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if path.is_dir():  # the training folders, named and ordered as training read them
            return tuple(folder.name for folder in find_class_folders(prepare_data(path).train_dir).folders), \
                f"the class folders of {path}"
        return read_class_names_file(path), str(path)
    return tuple(str(name) for name in source), "class_names="


def _record_class_names(model_path: Path) -> tuple[str, ...] | None:
    """The class names in the record of the run whose folder holds ``model_path`` (runs of every carlib version)."""
    record_path = model_path.parent.parent.parent / "records" / f"{model_path.parent.name}.json"
    try:
        names = json.loads(record_path.read_text()).get("data", {}).get("class_names")
    except (OSError, ValueError, AttributeError):
        return None
    return tuple(str(name) for name in names) if isinstance(names, list) else None


def model_class_names(model_or_path, class_names: str | os.PathLike | Sequence[str] | None = None,
                      ) -> tuple[tuple[str, ...] | None, str]:
    """``(names, where they came from)`` for a model; ``(None, why not)`` when nothing names its classes.

    ``class_names`` (a list, a ``classes.json``/``labels.txt`` file, or the training data folder)
    wins; else the model file (:func:`carlib.models.build.read_class_names`: inside the file, or
    ``classes.json`` next to it); else the record of the run the file belongs to.
    """
    if class_names is not None:
        return _names_from(class_names)
    if hasattr(model_or_path, "predict"):
        return None, "an in-memory model carries no class names"
    path = resolve_model_path(model_or_path)
    names = read_class_names(path)
    if names is not None:
        return names, str(path)
    names = _record_class_names(path)
    if names is not None:
        return names, f"the run record of {path.parent.name}"
    return None, f"{path} was saved without class names"


def predict_photos(model_or_path, paths: Sequence[str | os.PathLike] | str | os.PathLike, *, top_k: int = 1,
                   tta: int = 0, tta_preset: str = "light", tta_seed: int = 0, batch_size: int = 32,
                   image_size: int | None = None,
                   class_names: str | os.PathLike | Sequence[str] | None = None) -> pd.DataFrame:
    """Predict photos with a trained model: one row per image, in the order found.

    ``model_or_path``: a model, a ``.keras`` file or a run folder. ``paths``: files and folders
    (folders recursively). Columns: ``file``, ``class_index``, ``class_name``, ``probability``;
    with ``top_k`` > 1 also ``class_index_<r>``, ``class_name_<r>``, ``probability_<r>`` for ranks
    2..k; and ``error``: empty, or why the file could not be predicted (no such file, not an image,
    truncated, undecodable) — such a row has no class. ``tta`` > 1 averages that many passes of
    ``tta_preset``; ``image_size`` predicts at another test size (FixRes). ``class_names`` names
    the classes of a model saved without them (see :func:`model_class_names`).

    ``frame.attrs`` holds ``model``, ``class_names``, ``class_names_from`` and ``skipped`` (files
    in the folders that are not images, with the reason).
    """
    top_k = int(top_k)
    if top_k < 1:
        raise ConfigError(f"top_k={top_k} is out of range: expected an integer >= 1.")
    if tta and int(tta) > 1:
        check_tta_preset(tta_preset)
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    found, skipped = find_photos(paths)
    if not found:
        raise DataError(f"no image files in {', '.join(map(str, paths)) or 'no path given'}"
                        + (f" ({len(skipped)} other file(s) skipped: not images by their names)." if skipped else "."))
    model = load_model(model_or_path)
    n_outputs = int(model.output_shape[-1])
    names, names_from = model_class_names(model_or_path, class_names)
    if names is None:
        warnings.warn(f"{names_from}: the class_name column holds the class index. Name the classes with "
                      "class_names= (carlib predict --classes): a classes.json or labels.txt, or the training data "
                      "folder; or put a classes.json (a list of names) next to the model.", ModelWarning, stacklevel=2)
        names, names_from = tuple(str(i) for i in range(n_outputs)), "none: class indices"
    if len(names) != n_outputs:
        raise ModelError(f"the model predicts {n_outputs} classes but {names_from} names {len(names)}: "
                         f"{', '.join(names[:12])}{', …' if len(names) > 12 else ''}.")
    model, _ = model_for_classes(model, names, image_size)

    errors = {file: problem for file, problem in found if problem}
    screened = screen_images([file for file, problem in found if not problem])  # JPEG and PNG: headers only
    errors.update(dict(screened.unusable))

    k = min(top_k, n_outputs)
    files = [file for file, _ in found]
    rank_columns = {}
    for rank in range(1, k + 1):
        suffix = "" if rank == 1 else f"_{rank}"
        rank_columns[f"class_index{suffix}"] = pd.Series(pd.NA, index=files, dtype="Int64")
        rank_columns[f"class_name{suffix}"] = pd.Series(None, index=files, dtype=object)
        rank_columns[f"probability{suffix}"] = pd.Series(np.nan, index=files, dtype=float)
    if screened.usable:
        images = ImageList(screened.usable, np.zeros(len(screened.usable), np.int32), names, sources=screened.sources)
        predicted = predict_files(model, images, batch_size=batch_size, tta=tta, tta_preset=tta_preset,
                                  tta_seed=tta_seed)
        errors.update({screened.sources[i]: NOT_DECODABLE for i in predicted.undecodable(len(images))})
        readable = [screened.sources[i] for i in predicted.decoded]
        probabilities = predicted.probabilities
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        for rank in range(1, k + 1):
            suffix = "" if rank == 1 else f"_{rank}"
            best = order[:, rank - 1]
            rank_columns[f"class_index{suffix}"].loc[readable] = best  # by file, never by position
            rank_columns[f"class_name{suffix}"].loc[readable] = [names[i] for i in best]
            rank_columns[f"probability{suffix}"].loc[readable] = probabilities[np.arange(len(best)), best]
    frame = pd.DataFrame({"file": files, **{name: column.reset_index(drop=True) for name, column in rank_columns.items()},
                          "error": [errors.get(file, "") for file in files]})
    frame.attrs.update(model=None if hasattr(model_or_path, "predict") else str(resolve_model_path(model_or_path)),
                       class_names=list(names), class_names_from=names_from, skipped=skipped,
                       tta=int(tta) if tta and int(tta) > 1 else 0)
    return frame


def write_predictions(frame: pd.DataFrame, out: str | os.PathLike) -> Path | None:
    """Write a predictions table as CSV, atomically (``"-"``: to standard output; returns None then)."""
    if str(out) == "-":
        frame.to_csv(sys.stdout, index=False, lineterminator="\n")
        return None
    out = Path(out).expanduser()
    with atomic_path(out) as temporary:
        frame.to_csv(temporary, index=False, lineterminator="\n")
    return out


def predictions_summary(frame: pd.DataFrame, out: str | os.PathLike | None = None) -> str:
    """A few lines for the CLI: how many images were predicted, which could not be, where the names came from."""
    failed = frame[frame["error"] != ""]
    lines = [(f"wrote {out}: " if out is not None else "") + f"{len(frame)} image(s), {len(frame) - len(failed)} "
             f"predicted" + (f" with {frame.attrs['tta']}-pass TTA" if frame.attrs.get("tta") else "")
             + f"; class names from {frame.attrs.get('class_names_from', '?')}"]
    if len(failed):
        lines.append(f"  {len(failed)} could not be predicted (see the error column): "
                     + ", ".join(f"{f} ({e})" for f, e in zip(failed["file"][:5], failed["error"][:5]))
                     + (", …" if len(failed) > 5 else ""))
    if frame.attrs.get("skipped"):
        lines.append(f"  {len(frame.attrs['skipped'])} file(s) in the folders skipped: not images by their names "
                     "(hidden, OS junk, other extensions)")
    return "\n".join(lines)
