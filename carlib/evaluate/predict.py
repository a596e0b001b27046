"""Models on images: which checkpoint a path means, a model at another input size, and un-augmented predictions.

- :func:`resolve_model_path` / :func:`load_model`: a ``.keras`` file, or the right checkpoint of a
  run folder (``best.keras``, or ``last.keras`` for a final run, R9); carlib's one model loader.
- :func:`model_at_size`: the same network and weights at another input size (FixRes).
- :func:`predict_images`: class probabilities through the evaluation pipeline, never augmented (R15).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import keras
import numpy as np

from carlib.data.folders import ImageList
from carlib.data.pipeline import eval_dataset
from carlib.errors import ConfigError, DataError, MissingFileError, ModelError
from carlib.models.build import loads_in_safe_mode, model_image_size

__all__ = ["resolve_model_path", "load_model", "model_at_size", "model_for_classes", "predict_images",
           "model_image_size"]


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
        raise MissingFileError(f"model {str(path)!r} does not exist: give a .keras file or a run folder "
                                "(<results_dir>/runs/<run_id>/).")
    record_path = path.parent.parent / "records" / f"{path.name}.json"
    if not record_path.is_file():
        raise MissingFileError(
            f"{str(path)!r} is a folder without its run record ({str(record_path)!r}), so carlib cannot tell which "
            "checkpoint to use: pass best.keras or last.keras explicitly."
        )
    record = json.loads(record_path.read_text())
    final = float(record.get("config", {}).get("val_split", 0.2)) == 0
    chosen = path / ("last.keras" if final else "best.keras")
    if not chosen.is_file():
        raise MissingFileError(f"{str(chosen)!r} does not exist (the run may have failed before saving it).")
    return chosen


def load_model(model_or_path, *, compile: bool = True) -> keras.Model:
    """A Keras model from a model (returned as is), a ``.keras`` file, or a run folder (see :func:`resolve_model_path`).

    carlib's layers and loss are registered when :mod:`carlib.models.build` is imported, so its files load
    with them. A file holding a SavedModel (``hub:``) backbone loads with ``safe_mode=False``, which Keras
    needs to re-open the SavedModel (:func:`carlib.models.build.loads_in_safe_mode`); load only files you
    trust. ``compile=False`` skips restoring the optimizer and loss (enough to predict).
    """
    if isinstance(model_or_path, keras.Model):
        return model_or_path
    path = resolve_model_path(model_or_path)
    return keras.models.load_model(path, compile=compile, safe_mode=loads_in_safe_mode(path))


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
    size = model_image_size(model)
    image_size = int(image_size)
    if image_size < 16:
        raise ConfigError(f"image_size={image_size} is out of range: expected an integer >= 16 (pixels).")
    if image_size == size:
        return model
    config = _with_spatial_size(model.get_config(), (size, size), (image_size, image_size))
    try:  # a size-dependent layer fails while rebuilding (shape check) or while copying weights
        rebuilt = model.__class__.from_config(config)
        rebuilt.set_weights(model.get_weights())
    except ValueError as err:
        raise ModelError(
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
        raise ModelError(f"the model predicts {n_outputs} classes but the data has {len(class_names)} "
                         f"({', '.join(class_names)}): is it the right model for this dataset (data_dir)?")
    return model, size


def predict_images(model, images: ImageList, *, batch_size: int = 32) -> np.ndarray:
    """Class probabilities (N×C) for an image list through the un-augmented evaluation pipeline."""
    size = model_image_size(model)
    if len(images) == 0:
        raise DataError("no images to predict.")
    return np.asarray(model.predict(eval_dataset(images, size, batch_size), verbose=0), dtype=np.float64)
