"""Exporting a trained model for deployment: a TensorFlow SavedModel or a TFLite file, with its class names.

Both take what every carlib model takes: raw 0–255 RGB, float32, shape ``(N, size, size, 3)`` at
the model's input size (the preprocessing is inside the model). :func:`export_model` writes

- ``saved_model``: a SavedModel folder whose ``serving_default`` signature (also ``serve``) maps
  ``image`` to ``probabilities`` (N×C), ``class_index`` (N) and ``class_name`` (N strings, looked
  up in the SavedModel's asset ``assets/labels.txt``, one class name per line);
- ``tflite``: a ``.tflite`` file whose ``serving_default`` signature maps ``image`` to
  ``probabilities`` and ``class_index`` (TFLite builtin ops only), and ``labels.txt`` next to it.

Both are built through Keras' ``ExportArchive`` (the path Keras' own LiteRT export takes). After
writing, the artifact is loaded the way a deployer would (``tf.saved_model.load``,
``tf.lite.Interpreter``) and compared with the Keras model on random images: the largest
probability difference is part of the result.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from carlib.base.files import atomic_path
from carlib.errors import ConfigError, ModelError, ModelWarning, OutputExistsError
from carlib.evaluate.photos import model_class_names
from carlib.evaluate.predict import load_model, resolve_model_path
from carlib.models.build import model_image_size

__all__ = ["EXPORT_FORMATS", "Export", "export_model", "default_export_path", "float32_model",
           "saved_model_probabilities", "tflite_probabilities", "LABELS_FILE"]

EXPORT_FORMATS = ("saved_model", "tflite")
LABELS_FILE = "labels.txt"
# Above this difference from the Keras model (probabilities) the export warns: something did not convert.
_WARN_ABOVE = 1e-3


@dataclasses.dataclass(frozen=True)
class Export:
    """An exported model: where it is, its labels file, its input size, and how closely it matches the Keras model.

    ``max_abs_diff``: the largest difference of any class probability between the exported model
    (loaded as a deployer would) and the Keras model, on ``n_checked`` random 0–255 images.
    ``from_mixed_precision``: the Keras model computes in mixed precision; the export (and the model
    it was compared with) computes in float32 (:func:`float32_model`).
    """

    format: str
    path: Path
    labels: Path
    image_size: int
    class_names: tuple[str, ...]
    class_names_from: str
    max_abs_diff: float
    n_checked: int
    from_mixed_precision: bool = False

    def summary(self) -> str:
        """Two lines for the CLI."""
        what = "SavedModel" if self.format == "saved_model" else "TFLite model"
        return (f"wrote {what} {self.path} (input: float32 (N, {self.image_size}, {self.image_size}, 3), raw 0-255 RGB; "
                f"{len(self.class_names)} class names in {self.labels}, from {self.class_names_from})\n"
                f"  max |probability difference| against the .keras model"
                + (" (rebuilt in float32: it was trained in mixed precision)" if self.from_mixed_precision else "")
                + f" on {self.n_checked} random images: {self.max_abs_diff:.2g}")


def default_export_path(model_path: str | os.PathLike, format: str) -> Path:
    """Where an export goes by default: ``<model's folder>/export/<model name>/saved_model`` or ``…/model.tflite``."""
    model_path = Path(model_path)
    folder = model_path.parent / "export" / model_path.stem
    return folder / ("saved_model" if format == "saved_model" else "model.tflite")


def _serving_archive(model: keras.Model, labels: Path | None) -> keras.export.ExportArchive:
    """The model's forward pass as a ``serve`` endpoint: probabilities, class index, and class name if ``labels``."""
    size = model_image_size(model)
    archive = keras.export.ExportArchive()
    archive.track(model)
    table = None
    if labels is not None:  # tracked, so the labels file becomes the SavedModel's asset
        table = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(str(labels), tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER, tf.string,
                                          tf.lookup.TextFileIndex.WHOLE_LINE), default_value="")
        archive.track(table)

    def serve(image):
        probabilities = model(image, training=False)
        index = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        outputs = {"probabilities": probabilities, "class_index": index}
        if table is not None:
            outputs["class_name"] = table.lookup(tf.cast(index, tf.int64))
        return outputs

    archive.add_endpoint("serve", serve, input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32,
                                                                           name="image")])
    return archive


def _write_labels(path: Path, class_names: Sequence[str]) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text("".join(f"{name}\n" for name in class_names), encoding="utf-8")


def _replace_folder(built: Path, target: Path) -> None:
    """Put the folder ``built`` at ``target``; an older SavedModel there is replaced, anything else is kept."""
    if target.exists():
        if not (target / "saved_model.pb").is_file():
            raise OutputExistsError(f"{str(target)!r} exists and is not a SavedModel: nothing was overwritten; "
                                    "choose another --out.")
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(built, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(built, target)


def _float32_config(config):
    """A copy of a serialized model config whose layers compute in float32 (mixed-precision policies replaced)."""
    if isinstance(config, dict):
        if config.get("class_name") in ("DTypePolicy", "FloatDTypePolicy") and \
                str(config.get("config", {}).get("name", "")).startswith("mixed_"):
            return {**config, "config": {**config["config"], "name": "float32"}}
        return {key: _float32_config(value) for key, value in config.items()}
    if isinstance(config, list):
        return [_float32_config(value) for value in config]
    return config


def float32_model(model: keras.Model) -> keras.Model:
    """The model computing in float32: a model trained with mixed precision (float16/bfloat16 compute, float32
    weights) is rebuilt with float32 layers and the same weights; any other model is returned as it is.

    TFLite's builtin kernels and most CPUs want float32, and a float32 export is the more exact one.
    """
    config = model.get_config()
    converted = _float32_config(config)
    if converted == config:
        return model
    rebuilt = model.__class__.from_config(converted)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def _check_images(size: int, n: int) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (n, size, size, 3)).astype(np.float32)


def saved_model_probabilities(path: str | os.PathLike, images: np.ndarray) -> dict[str, np.ndarray]:
    """Run an exported SavedModel's serving signature as a deployer would (``tf.saved_model.load``)."""
    serving = tf.saved_model.load(str(path)).signatures["serving_default"]
    return {name: value.numpy() for name, value in serving(image=tf.constant(images, tf.float32)).items()}


def tflite_probabilities(path: str | os.PathLike, images: np.ndarray) -> dict[str, np.ndarray]:
    """Run an exported TFLite model's signature as a deployer would (``tf.lite.Interpreter``)."""
    with warnings.catch_warnings():  # TensorFlow points at ai_edge_litert, the same interpreter packaged alone
        warnings.simplefilter("ignore", UserWarning)
        interpreter = tf.lite.Interpreter(model_path=str(path))
    runner = interpreter.get_signature_runner("serving_default")
    return dict(runner(image=np.asarray(images, np.float32)))


def export_model(model_or_path, format: str = "saved_model", out: str | os.PathLike | None = None, *,
                 class_names: str | os.PathLike | Sequence[str] | None = None, check_images: int = 8) -> Export:
    """Export a model (a model, a ``.keras`` file or a run folder) as a SavedModel or a TFLite file.

    ``out``: the SavedModel folder, or the ``.tflite`` file (a folder gets ``model.tflite``);
    default :func:`default_export_path`. The class names (the model's own, see
    :func:`carlib.evaluate.photos.model_class_names`; ``class_names`` for a model saved without
    them) go into ``labels.txt``: the SavedModel's asset, or the file next to the ``.tflite``. An
    existing export at ``out`` is replaced. A model trained with mixed precision is exported computing
    in float32 (:func:`float32_model`). ``check_images`` random images compare the exported model
    with the Keras model (:attr:`Export.max_abs_diff`).
    """
    if format not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format {format!r}: expected one of {', '.join(EXPORT_FORMATS)}.")
    in_memory = hasattr(model_or_path, "predict")
    if out is None and in_memory:
        raise ConfigError("an in-memory model has no folder to export next to: pass out=.")
    original = load_model(model_or_path)
    model = float32_model(original)
    size = model_image_size(model)
    n_outputs = int(model.output_shape[-1])
    names, names_from = model_class_names(model_or_path, class_names)
    if names is None:
        warnings.warn(f"{names_from}: labels.txt holds the class indices. Name the classes with class_names= "
                      "(carlib export --classes).", ModelWarning, stacklevel=2)
        names, names_from = tuple(str(i) for i in range(n_outputs)), "none: class indices"
    if len(names) != n_outputs:
        raise ModelError(f"the model predicts {n_outputs} classes but {names_from} names {len(names)}.")
    if any("\n" in name or "\r" in name for name in names):
        raise ModelError("a class name contains a line break: labels.txt holds one name per line.")
    target = Path(out).expanduser() if out is not None else default_export_path(resolve_model_path(model_or_path),
                                                                                 format)
    if format == "tflite" and target.suffix.lower() != ".tflite":
        target = target / "model.tflite"
    target.parent.mkdir(parents=True, exist_ok=True)
    images = _check_images(size, max(1, int(check_images)))
    expected = np.asarray(model(images, training=False), np.float64)

    with tempfile.TemporaryDirectory(prefix=f".{target.name}.", dir=target.parent) as work:
        work = Path(work)
        labels = work / LABELS_FILE
        _write_labels(labels, names)
        if format == "saved_model":
            built = work / "saved_model"
            _serving_archive(model, labels).write_out(str(built), verbose=False)
            got = saved_model_probabilities(built, images)
            _replace_folder(built, target)
            labels_path = target / "assets" / LABELS_FILE
        else:
            _serving_archive(model, None).write_out(str(work / "saved_model"), verbose=False)
            converter = tf.lite.TFLiteConverter.from_saved_model(str(work / "saved_model"))
            try:
                flatbuffer = converter.convert()
            except Exception as err:  # the converter raises its own types, with pages of MLIR diagnostics
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise ModelError(f"TFLite cannot convert this model ({first}); export it as a SavedModel "
                                 "(--format saved_model).") from None
            with atomic_path(target, suffix=".tflite") as temporary:
                temporary.write_bytes(flatbuffer)
            got = tflite_probabilities(target, images)
            labels_path = target.parent / LABELS_FILE
            _write_labels(labels_path, names)
    difference = float(np.max(np.abs(np.asarray(got["probabilities"], np.float64) - expected)))
    if not difference <= _WARN_ABOVE:
        warnings.warn(f"the exported model's probabilities differ from the Keras model's by up to {difference:.3g} on "
                      "random images: check it before deploying.", ModelWarning, stacklevel=2)
    return Export(format, target, labels_path, size, tuple(names), names_from, difference, len(images),
                  from_mixed_precision=model is not original)
