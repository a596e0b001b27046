"""Evaluation a user never has to doubt: the run's own clean splits, both checkpoints, optionally TTA.

- :func:`evaluate_model`: a saved model (or a run folder) on the validation or test split a run
  used, rebuilt with :func:`carlib.data.splits.split_for_run` from the same ``val_split``,
  ``test_split`` and ``seed``, never augmented (R15), optionally with TTA (:mod:`carlib.evaluate.tta`).
- :func:`evaluate_run`: both checkpoints of a run record, best and last (R4).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from carlib.data.folders import ImageList, prepare_data
from carlib.data.splits import split_for_run
from carlib.errors import ConfigError, DataError, MissingFileError
from carlib.evaluate.metrics import Evaluation, evaluate_predictions, most_confident_mistakes, resolve_class_names
from carlib.evaluate.predict import load_model, model_for_classes, predict_images, resolve_model_path
from carlib.evaluate.tta import TTAResult, tta_predict
from carlib.records.store import ResultsStore

__all__ = ["ModelEvaluation", "RunEvaluation", "run_images", "validation_images", "evaluate_model", "evaluate_run",
           "SPLITS"]

SPLITS = ("val", "test")


def run_images(data_dir: str | os.PathLike | None, *, val_split: float, test_split: float, seed: int,
               split: str = "val") -> ImageList:
    """The ``val`` or ``test`` images a run with this ``data_dir``, ``val_split``, ``test_split`` and ``seed`` used
    (:func:`carlib.data.splits.split_for_run`; never augmented)."""
    if split not in SPLITS:
        raise ConfigError(f"split={split!r} is unknown: expected one of {', '.join(SPLITS)}.")
    splits = split_for_run(prepare_data(data_dir), val_split=float(val_split), test_split=float(test_split),
                           seed=int(seed))
    images = splits.val if split == "val" else splits.test
    if not len(images):
        source = splits.val_source if split == "val" else splits.test_source
        raise ConfigError(f"the run has no {split} images ({source}): evaluate it on a labelled hold-out "
                          "(evaluate_model(..., images=ImageList)) or score its submission with score_submission.")
    return images


def validation_images(data_dir: str | os.PathLike | None, val_split: float, seed: int,
                      test_split: float = 0.2) -> ImageList:
    """The validation split a run with this ``data_dir``, ``val_split``, ``seed`` and ``test_split`` used."""
    return run_images(data_dir, val_split=val_split, test_split=test_split, seed=seed, split="val")


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
                   test_split: float = 0.2, split: str = "val", images: ImageList | None = None,
                   image_size: int | None = None, batch_size: int = 32,
                   tta: int = 0, tta_preset: str = "light", tta_seed: int = 0, tta_mean: str = "arithmetic",
                   class_names: Sequence[str] | Mapping | None = None, name: str | None = None) -> ModelEvaluation:
    """Evaluate a model (object, ``.keras`` file or run folder) on labelled images.

    By default the images are the ``split`` (``val`` or ``test``) of ``data_dir`` (``None``: the
    embedded dataset) for ``val_split``, ``test_split`` and ``seed``: the same split a run with
    those values used. Pass
    ``images`` to evaluate on another labelled :class:`ImageList`. ``image_size`` other than
    the model's rebuilds it at that size (:func:`model_at_size`). ``tta`` > 1 averages that many
    passes of ``tta_preset`` (:func:`carlib.evaluate.tta.tta_predict`).
    """
    model = load_model(model_or_path)
    model_path = None if hasattr(model_or_path, "predict") else str(resolve_model_path(model_or_path))
    if images is None:
        images = run_images(data_dir, val_split=val_split, test_split=test_split, seed=seed, split=split)
    if len(images) == 0:
        raise DataError("no images to evaluate.")
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
    """A run's checkpoints (``best``, ``last``) evaluated on one of its own splits (``val`` or ``test``)."""

    record: dict
    evaluations: dict[str, ModelEvaluation]
    split: str = "val"

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
            row[f"recorded_{self.split}_accuracy"] = metrics.get(f"{self.split}_accuracy_{name}")
            rows.append(row)
        return pd.DataFrame(rows).set_index("checkpoint")


def _load_record(record: dict | str, results_dir: str | os.PathLike | None) -> dict:
    if isinstance(record, dict):
        return record
    store = ResultsStore(results_dir)
    path = store.records_dir / f"{record}.json"
    if not path.is_file():
        raise MissingFileError(f"no record of run {record!r} in {str(store.records_dir)!r}.")
    return json.loads(path.read_text())


def evaluate_run(record: dict | str, *, checkpoints: Sequence[str] = ("best", "last"),
                 results_dir: str | os.PathLike | None = None, batch_size: int | None = None, tta: int = 0,
                 tta_preset: str = "light", tta_seed: int = 0, tta_mean: str = "arithmetic",
                 image_size: int | None = None, class_names: Sequence[str] | Mapping | None = None,
                 split: str = "val") -> RunEvaluation:
    """Evaluate a run's ``best`` and ``last`` checkpoints on the ``split`` (``val`` or ``test``) it used (R4).

    ``record`` is a run record (as :func:`carlib.run_experiment` returns) or a run id in
    ``results_dir``. The split is rebuilt from the record's ``data_dir``, ``val_split``,
    ``test_split`` and ``seed``, so without TTA the accuracies equal the ones the run recorded.
    """
    record = _load_record(record, results_dir)
    config = record.get("config", {})
    unknown = [c for c in checkpoints if c not in ("best", "last")]
    if unknown:
        raise ConfigError(f"checkpoints {unknown} are unknown: a run has 'best' and 'last'.")
    images = run_images(config.get("data_dir"), val_split=config.get("val_split", 0),
                        test_split=config.get("test_split", 0), seed=config.get("seed", 0), split=split)
    recorded = record.get("data", {}).get("class_names")
    if recorded and list(recorded) != list(images.class_names):
        raise DataError(f"the data's classes {list(images.class_names)} differ from the run's {recorded}: "
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
    return RunEvaluation(record=record, evaluations=evaluations, split=split)
