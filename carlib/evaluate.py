"""Evaluation a user never has to doubt: the run's own clean validation split, both checkpoints, TTA, FixRes.

- :func:`evaluate_predictions`: accuracy, per-class accuracy, top-2 accuracy and the confusion
  matrix (a DataFrame labelled with class names) from labels and probabilities;
  :func:`most_confident_mistakes` for the gallery of confident errors.
- :func:`evaluate_model`: a saved model (or a run folder) on the validation split a run used,
  rebuilt with :func:`carlib.data.folders.stratified_split` from the same ``val_split`` and
  ``seed``, never augmented (R15), optionally with TTA (:mod:`carlib.tta`).
- :func:`evaluate_run`: both checkpoints of a run record, best and last (R4).
- :func:`resolution_curve`: one trained model at several test image sizes (FixRes: Touvron et
  al., "Fixing the train-test resolution discrepancy", NeurIPS 2019), so "bigger is better"
  (R21) is a measured curve. The model is rebuilt at each size with the same weights
  (:func:`model_at_size`): convolution and dense weights of a globally pooled CNN do not
  depend on the input size.

Class names come from the folder names unless the user passes ``class_names``: a list indexed
by class, or a mapping from folder name (or class index) to display name.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from carlib.data.folders import ImageList, list_class_images, prepare_data, stratified_split
from carlib.tta import TTAResult, model_image_size, tta_predict

__all__ = [
    "Evaluation",
    "ModelEvaluation",
    "RunEvaluation",
    "evaluate_predictions",
    "most_confident_mistakes",
    "resolve_class_names",
    "load_model",
    "resolve_model_path",
    "model_at_size",
    "predict_images",
    "validation_images",
    "evaluate_model",
    "evaluate_run",
    "resolution_curve",
    "default_test_sizes",
]


# ----------------------------------------------------------------------------- metrics
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
        raise ValueError(
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
        raise ValueError(f"probabilities must be an N×C array (one row per image); got shape {probabilities.shape}.")
    if labels.ndim != 1 or len(labels) != len(probabilities):
        raise ValueError(f"labels must be one class index per image: {labels.shape} labels for "
                         f"{len(probabilities)} rows of probabilities.")
    if len(labels) and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices; got dtype {labels.dtype}.")
    n_classes = probabilities.shape[1]
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must lie in 0..{n_classes - 1} (one column of probabilities per class); "
                         f"got {labels.min()}..{labels.max()}.")
    if not np.isfinite(probabilities).all():
        raise ValueError("probabilities contain NaN or infinite values (a diverged model?).")
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
        raise ValueError("no predictions to evaluate (0 images).")
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
        raise ValueError(f"paths has {len(paths)} entries for {len(labels)} images.")
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


# ------------------------------------------------------------------------------ models
def resolve_model_path(path: str | os.PathLike) -> Path:
    """The ``.keras`` file to load for ``path``: the file itself, or the right checkpoint of a run folder.

    For a run folder (``<results>/runs/<run_id>/``) the run's record decides: a run with a
    validation split uses ``best.keras`` (best validation accuracy); a final run
    (``val_split=0``) uses ``last.keras``, because its "best" checkpoint only followed the noisy
    training accuracy and the epoch budget was chosen for the last weights (R9).
    """
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"model {str(path)!r} does not exist: give a .keras file or a run folder "
                                "(<results_dir>/runs/<run_id>/).")
    record_path = path.parent.parent / "records" / f"{path.name}.json"
    if not record_path.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} is a folder without its run record ({str(record_path)!r}), so carlib cannot tell which "
            "checkpoint to use: pass best.keras or last.keras explicitly."
        )
    record = json.loads(record_path.read_text())
    final = float(record.get("config", {}).get("val_split", 0.2)) == 0
    chosen = path / ("last.keras" if final else "best.keras")
    if not chosen.is_file():
        raise FileNotFoundError(f"{str(chosen)!r} does not exist (the run may have failed before saving it).")
    return chosen


def load_model(model_or_path):
    """A Keras model from a model (returned as is), a ``.keras`` file, or a run folder (see :func:`resolve_model_path`)."""
    import keras

    from carlib.backbones import load_model as load_keras_file  # registers carlib's layers; hub-aware

    if isinstance(model_or_path, keras.Model):
        return model_or_path
    return load_keras_file(resolve_model_path(model_or_path))


def _with_spatial_size(config: Any, old: tuple, new: tuple) -> Any:
    """A copy of a serialized model config whose input shapes (None, old_h, old_w, C) become new."""
    if isinstance(config, dict):
        out = {}
        for key, value in config.items():
            if (key in ("batch_shape", "batch_input_shape", "input_shape", "shape") and isinstance(value, (list, tuple))
                    and len(value) == 4 and tuple(value[1:3]) == old):
                value = [value[0], new[0], new[1], value[3]]
            out[key] = _with_spatial_size(value, old, new)
        return out
    if isinstance(config, list):
        return [_with_spatial_size(v, old, new) for v in config]
    return config


def model_at_size(model, image_size: int):
    """The same network and weights with a ``image_size``² input (a new model; ``model`` is not changed).

    A model built for one size has that size in its ``Input`` (and in nested backbones), but a
    globally pooled CNN's weights do not depend on it: carlib rewrites the input shapes in the
    model's config, rebuilds it with ``keras.Model.from_config`` and copies the weights
    (``get_weights``/``set_weights``). At the model's own size the model itself is returned.
    """
    import carlib.backbones  # noqa: F401  custom layers must be registered for from_config

    size = model_image_size(model)
    image_size = int(image_size)
    if image_size < 16:
        raise ValueError(f"image_size={image_size} is out of range: expected an integer >= 16 (pixels).")
    if image_size == size:
        return model
    config = _with_spatial_size(model.get_config(), (size, size), (image_size, image_size))
    try:  # a size-dependent layer fails while rebuilding (shape check) or while copying weights
        rebuilt = model.__class__.from_config(config)
        rebuilt.set_weights(model.get_weights())
    except ValueError as err:
        raise ValueError(
            f"model {model.name!r} cannot run at {image_size} px with its {size} px weights ({err}); "
            "resolution evaluation needs weights that do not depend on the input size "
            "(a CNN with global pooling, as carlib.build_model makes; not Flatten → Dense)."
        ) from None
    return rebuilt


def model_for_classes(model, class_names: Sequence[str], image_size: int | None = None):
    """``(model, size)``: the model at the test size (``image_size`` or its own), checked to predict one output per class."""
    size = int(image_size or model_image_size(model))
    model = model_at_size(model, size)
    n_outputs = int(model.output_shape[-1])
    if n_outputs != len(class_names):
        raise ValueError(f"the model predicts {n_outputs} classes but the data has {len(class_names)} "
                         f"({', '.join(class_names)}): is it the right model for this dataset (data_dir)?")
    return model, size


def predict_images(model, images: ImageList, *, batch_size: int = 32) -> np.ndarray:
    """Class probabilities (N×C) for an image list through the un-augmented evaluation pipeline."""
    from carlib.data.pipeline import eval_dataset

    size = model_image_size(model)
    if len(images) == 0:
        raise ValueError("no images to predict.")
    return np.asarray(model.predict(eval_dataset(images, size, batch_size), verbose=0), dtype=np.float64)


def validation_images(data_dir: str | os.PathLike | None, val_split: float, seed: int) -> ImageList:
    """The validation split a run with this ``data_dir``, ``val_split`` and ``seed`` used (never augmented)."""
    from carlib.config import ConfigError

    if not val_split:
        raise ConfigError(
            "val_split=0 leaves no validation images (a final run trains on everything): evaluate it on a labelled "
            "hold-out (evaluate_model(..., images=ImageList)) or score its submission with score_submission."
        )
    layout = prepare_data(data_dir)
    images = list_class_images(layout.train_dir)
    _, val_idx = stratified_split(images.labels, float(val_split), int(seed))
    return images.subset(val_idx)


@dataclasses.dataclass(frozen=True, eq=False)
class ModelEvaluation:
    """One model evaluated on one labelled image set."""

    name: str
    model_path: str | None
    image_size: int
    images: ImageList
    probabilities: np.ndarray
    metrics: Evaluation
    tta: TTAResult | None = None

    @property
    def accuracy(self) -> float:
        """Fraction of images whose predicted class is the true one."""
        return self.metrics.accuracy

    @property
    def labels(self) -> np.ndarray:
        """True class index of each image."""
        return self.images.labels

    def mistakes(self, k: int = 12) -> pd.DataFrame:
        """The ``k`` most confident mistakes, with the image paths (see :func:`most_confident_mistakes`)."""
        return most_confident_mistakes(self.images.labels, self.probabilities, k=k,
                                       class_names=self.metrics.class_names, paths=self.images.paths)

    def to_dict(self) -> dict[str, Any]:
        """The headline numbers plus how they were obtained."""
        row = {"checkpoint": self.name, **self.metrics.to_dict(), "image_size": self.image_size,
               "tta_passes": self.tta.passes if self.tta else 1, "tta_preset": self.tta.preset if self.tta else None,
               "model_path": self.model_path}
        if self.tta:
            row["tta_n_changed"] = self.tta.diagnostics.n_changed
        return row


def evaluate_model(model_or_path, data_dir: str | os.PathLike | None = None, *, val_split: float = 0.2, seed: int = 0,
                   images: ImageList | None = None, image_size: int | None = None, batch_size: int = 32,
                   tta: int = 0, tta_preset: str = "light", tta_seed: int = 0, tta_mean: str = "arithmetic",
                   class_names: Sequence[str] | Mapping | None = None, name: str | None = None) -> ModelEvaluation:
    """Evaluate a model (object, ``.keras`` file or run folder) on labelled images.

    By default the images are the validation split of ``data_dir`` (``None``: the embedded
    dataset) for ``val_split`` and ``seed``: the same split a run with those values used. Pass
    ``images`` to evaluate on another labelled :class:`ImageList`. ``image_size`` other than
    the model's rebuilds it at that size (:func:`model_at_size`). ``tta`` > 1 averages that many
    passes of ``tta_preset`` (:func:`carlib.tta.tta_predict`).
    """
    model = load_model(model_or_path)
    model_path = None if hasattr(model_or_path, "predict") else str(resolve_model_path(model_or_path))
    if images is None:
        images = validation_images(data_dir, val_split, seed)
    if len(images) == 0:
        raise ValueError("no images to evaluate.")
    model, size = model_for_classes(model, images.class_names, image_size)
    tta_result = None
    if tta and int(tta) > 1:
        tta_result = tta_predict(model, images, preset=tta_preset, passes=int(tta), seed=tta_seed, mean=tta_mean,
                                 batch_size=batch_size)
        probabilities = tta_result.probabilities
    else:
        probabilities = predict_images(model, images, batch_size=batch_size)
    names = resolve_class_names(images.class_names, class_names)
    return ModelEvaluation(
        name=name or (Path(model_path).stem if model_path else model.name),
        model_path=model_path,
        image_size=size,
        images=images,
        probabilities=probabilities,
        metrics=evaluate_predictions(images.labels, probabilities, names),
        tta=tta_result,
    )


@dataclasses.dataclass(frozen=True, eq=False)
class RunEvaluation:
    """A run's checkpoints (``best``, ``last``) evaluated on its own validation split."""

    record: dict
    evaluations: dict[str, ModelEvaluation]

    def __getitem__(self, checkpoint: str) -> ModelEvaluation:
        return self.evaluations[checkpoint]

    @property
    def best(self) -> ModelEvaluation:
        """The best-validation-accuracy checkpoint."""
        return self.evaluations["best"]

    @property
    def last(self) -> ModelEvaluation:
        """The weights after the last epoch."""
        return self.evaluations["last"]

    def table(self) -> pd.DataFrame:
        """One row per checkpoint: accuracy, top-2, images, size, TTA, and the accuracy the run recorded."""
        metrics = self.record.get("metrics", {})
        rows = []
        for name, evaluation in self.evaluations.items():
            row = evaluation.to_dict()
            row["recorded_val_accuracy"] = metrics.get(f"val_accuracy_{name}")
            rows.append(row)
        return pd.DataFrame(rows).set_index("checkpoint")


def _load_record(record: dict | str, results_dir: str | os.PathLike | None) -> dict:
    if isinstance(record, dict):
        return record
    from carlib.results import ResultsStore

    store = ResultsStore(results_dir)
    path = store.records_dir / f"{record}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no record of run {record!r} in {str(store.records_dir)!r}.")
    return json.loads(path.read_text())


def evaluate_run(record: dict | str, *, checkpoints: Sequence[str] = ("best", "last"),
                 results_dir: str | os.PathLike | None = None, batch_size: int | None = None, tta: int = 0,
                 tta_preset: str = "light", tta_seed: int = 0, tta_mean: str = "arithmetic",
                 image_size: int | None = None, class_names: Sequence[str] | Mapping | None = None) -> RunEvaluation:
    """Evaluate a run's ``best`` and ``last`` checkpoints on the validation split it used (R4).

    ``record`` is a run record (as :func:`carlib.run_experiment` returns) or a run id in
    ``results_dir``. The split is rebuilt from the record's ``data_dir``, ``val_split`` and
    ``seed``, so without TTA the accuracies equal the ones the run recorded.
    """
    record = _load_record(record, results_dir)
    config = record.get("config", {})
    unknown = [c for c in checkpoints if c not in ("best", "last")]
    if unknown:
        raise ValueError(f"checkpoints {unknown} are unknown: a run has 'best' and 'last'.")
    images = validation_images(config.get("data_dir"), config.get("val_split", 0), config.get("seed", 0))
    recorded = record.get("data", {}).get("class_names")
    if recorded and list(recorded) != list(images.class_names):
        raise ValueError(f"the data's classes {list(images.class_names)} differ from the run's {recorded}: "
                         "the dataset changed since the run.")
    paths = record.get("checkpoint", {})
    run_dir = Path(record.get("run_dir", ""))
    evaluations = {}
    for name in checkpoints:
        path = Path(paths.get(name) or run_dir / f"{name}.keras")
        evaluations[name] = evaluate_model(path, images=images, image_size=image_size,
                                           batch_size=batch_size or int(config.get("batch_size", 32)), tta=tta,
                                           tta_preset=tta_preset, tta_seed=tta_seed, tta_mean=tta_mean,
                                           class_names=class_names, name=name)
    return RunEvaluation(record=record, evaluations=evaluations)


# ------------------------------------------------------------------------- resolution
def default_test_sizes(train_size: int) -> list[int]:
    """Test sizes around the training size: ×0.75, ×1, ×8/7, ×9/7, ×10/7, rounded to multiples of 8.

    For 224 px that is 168, 224, 256, 288, 320 (the FixRes paper's range); the training
    size itself is always included.
    """
    sizes = {max(16, int(round(train_size * f / 8)) * 8) for f in (0.75, 8 / 7, 9 / 7, 10 / 7)}
    return sorted(sizes | {int(train_size)})


def resolution_curve(model_or_path, images: ImageList, sizes: Sequence[int] | None = None, *,
                     batch_size: int = 32) -> pd.DataFrame:
    """Accuracy of one trained model at several test image sizes (FixRes, Touvron et al., NeurIPS 2019).

    Each size rebuilds the model with the same weights (:func:`model_at_size`) and decodes the
    images at that size through the evaluation pipeline. Returns one row per size:
    ``image_size``, ``accuracy``, ``top2_accuracy``, ``n``, ``train_size`` (the model's own
    input size) and ``is_train_size``.
    """
    model = load_model(model_or_path)
    train_size = model_image_size(model)
    sizes = default_test_sizes(train_size) if sizes is None else sorted({int(s) for s in sizes})
    if not sizes:
        raise ValueError("sizes is empty: give the test image sizes to evaluate, e.g. [224, 256, 288, 320].")
    rows = []
    for size in sizes:
        sized = model_at_size(model, size)
        metrics = evaluate_predictions(images.labels, predict_images(sized, images, batch_size=batch_size))
        rows.append({"image_size": size, "accuracy": metrics.accuracy, "top2_accuracy": metrics.top2_accuracy,
                     "n": metrics.n, "train_size": train_size, "is_train_size": size == train_size})
    return pd.DataFrame(rows)
