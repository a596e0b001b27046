"""Metrics of a set of predictions: accuracy, per-class and top-2 accuracy, the confusion matrix, confident mistakes.

Pure NumPy and pandas: labels and probabilities in, numbers and tables out. Class names come
from the folder names unless the user passes ``class_names``: a list indexed by class, or a
mapping from folder name (or class index) to display name.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from carlib.errors import ConfigError, DataError

__all__ = ["Evaluation", "evaluate_predictions", "most_confident_mistakes", "resolve_class_names", "accuracy"]


def resolve_class_names(folder_names: Sequence[str], class_names: Sequence[str] | Mapping | None = None) -> tuple[str, ...]:
    """Display names of the classes, in class-index order.

    ``class_names=None`` keeps the folder names. A sequence must have one name per class. A
    mapping may be keyed by folder name or by class index (int or its string); classes it
    does not name keep their folder name.
    """
    folder_names = tuple(str(n) for n in folder_names)
    if class_names is None:
        return folder_names
    if isinstance(class_names, Mapping):
        names = []
        for index, folder in enumerate(folder_names):
            for key in (folder, index, str(index)):
                if key in class_names:
                    names.append(str(class_names[key]))
                    break
            else:
                names.append(folder)
        return tuple(names)
    if isinstance(class_names, str) or len(class_names) != len(folder_names):
        raise ConfigError(
            f"class_names has {1 if isinstance(class_names, str) else len(class_names)} entries but there are "
            f"{len(folder_names)} classes ({', '.join(folder_names)}): give one name per class in class-index order, "
            "or a mapping {folder name: display name}."
        )
    return tuple(str(n) for n in class_names)


@dataclasses.dataclass(frozen=True, eq=False)
class Evaluation:
    """Metrics of one set of predictions.

    ``per_class``: one row per class (``n``, ``correct``, ``accuracy``; accuracy is NaN for a
    class with no images). ``confusion``: counts, rows = true class, columns = predicted class,
    both labelled with the class names.
    """

    accuracy: float
    top2_accuracy: float
    n: int
    class_names: tuple[str, ...]
    per_class: pd.DataFrame
    confusion: pd.DataFrame

    def to_dict(self) -> dict[str, Any]:
        """The headline numbers (JSON-serialisable)."""
        return {"accuracy": self.accuracy, "top2_accuracy": self.top2_accuracy, "n": self.n}


def _check_predictions(labels, probabilities) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2:
        raise DataError(f"probabilities must be an N×C array (one row per image); got shape {probabilities.shape}.")
    if labels.ndim != 1 or len(labels) != len(probabilities):
        raise DataError(f"labels must be one class index per image: {labels.shape} labels for "
                         f"{len(probabilities)} rows of probabilities.")
    if len(labels) and not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"labels must be integer class indices; got dtype {labels.dtype}.")
    n_classes = probabilities.shape[1]
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise DataError(f"labels must lie in 0..{n_classes - 1} (one column of probabilities per class); "
                         f"got {labels.min()}..{labels.max()}.")
    if not np.isfinite(probabilities).all():
        raise DataError("probabilities contain NaN or infinite values (a diverged model?).")
    return labels.astype(np.int64), probabilities


def _top_k(probabilities: np.ndarray, k: int) -> np.ndarray:
    # Stable sort on the negated scores: ties go to the lower class index, as argmax does.
    return np.argsort(-probabilities, axis=1, kind="stable")[:, :k]


def evaluate_predictions(labels, probabilities, class_names: Sequence[str] | None = None) -> Evaluation:
    """Accuracy, per-class accuracy, top-2 accuracy and the labelled confusion matrix.

    ``labels``: N class indices; ``probabilities``: N×C scores (any monotone scores work;
    the predicted class is the argmax, ties to the lower index). ``class_names``: C names
    (default ``"0"``..``"C-1"``).
    """
    labels, probabilities = _check_predictions(labels, probabilities)
    n, n_classes = probabilities.shape
    names = resolve_class_names([str(i) for i in range(n_classes)], class_names)
    if n == 0:
        raise DataError("no predictions to evaluate (0 images).")
    top = _top_k(probabilities, min(2, n_classes))
    predicted = top[:, 0]
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    support = confusion.sum(axis=1)
    correct = np.diag(confusion)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class_accuracy = np.where(support > 0, correct / np.maximum(support, 1), np.nan)
    per_class = pd.DataFrame({"class": names, "n": support, "correct": correct, "accuracy": per_class_accuracy})
    confusion_frame = pd.DataFrame(confusion, index=pd.Index(names, name="true"), columns=pd.Index(names, name="predicted"))
    return Evaluation(
        accuracy=float((predicted == labels).mean()),
        top2_accuracy=float((top == labels[:, None]).any(axis=1).mean()),
        n=int(n),
        class_names=names,
        per_class=per_class,
        confusion=confusion_frame,
    )


def most_confident_mistakes(labels, probabilities, *, k: int = 12, class_names: Sequence[str] | None = None,
                            paths: Sequence[str] | None = None) -> pd.DataFrame:
    """The ``k`` wrong predictions made with the highest confidence, most confident first.

    Columns: ``index`` (position in the inputs), ``path`` (when ``paths`` is given), ``true``,
    ``predicted`` (class names), ``confidence`` (probability of the predicted class) and
    ``true_probability``.
    """
    labels, probabilities = _check_predictions(labels, probabilities)
    names = resolve_class_names([str(i) for i in range(probabilities.shape[1])], class_names)
    if paths is not None and len(paths) != len(labels):
        raise DataError(f"paths has {len(paths)} entries for {len(labels)} images.")
    predicted = _top_k(probabilities, 1)[:, 0]
    wrong = np.flatnonzero(predicted != labels)
    confidence = probabilities[wrong, predicted[wrong]]
    order = wrong[np.argsort(-confidence, kind="stable")][: max(int(k), 0)]
    frame = pd.DataFrame({"index": order})
    if paths is not None:
        frame["path"] = [paths[i] for i in order]
    frame["true"] = [names[labels[i]] for i in order]
    frame["predicted"] = [names[predicted[i]] for i in order]
    frame["confidence"] = probabilities[order, predicted[order]]
    frame["true_probability"] = probabilities[order, labels[order]]
    return frame


def accuracy(labels, probabilities) -> float:
    """The share of images whose most probable class is the true one (ties to the lower class index)."""
    labels, probabilities = _check_predictions(labels, probabilities)
    if len(labels) == 0:
        raise DataError("no predictions to score (0 images).")
    return float((_top_k(probabilities, 1)[:, 0] == labels).mean())
