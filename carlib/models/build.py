"""Building and saving carlib models: raw 0–255 RGB in, class probabilities out.

:func:`build_model` puts the backbone's preprocessing inside the model (so training,
evaluation, TTA and export share one input contract), keeps pretrained BatchNorm in
inference mode when asked (:class:`InferenceModeBackbone`, R13), and adds carlib's head.
:func:`loads_in_safe_mode` tells carlib's loader (:func:`carlib.evaluate.predict.load_model`) whether
Keras may read a ``.keras`` file in safe mode (not with a SavedModel, ``hub:``, backbone inside).
:func:`save_model` writes one with its class names inside (:func:`read_class_names` reads them back).
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Sequence

import keras

from carlib.base.files import atomic_path
from carlib.errors import ConfigError, MissingFileError, ModelError
from carlib.models import losses  # noqa: F401  registers the label-smoothing loss, so compiled .keras files load
from carlib.models.hub import is_hub_backbone
from carlib.models.hub_layer import HubBackbone  # registered as carlib>HubBackbone, so .keras files holding one load
from carlib.models.registry import check_knobs, get_backbone
from carlib.models.spec import PREPROCESSING

__all__ = ["build_model", "ensure_weights", "preprocessing_layer", "InferenceModeBackbone", "feature_extractor",
           "loads_in_safe_mode",
           "model_image_size", "save_model", "add_class_names", "read_class_names", "read_class_names_file",
           "CLASS_NAMES_FILE"]

# Keras writes metadata.json into every .keras file and never reads it back: carlib adds its own key there.
_METADATA_MEMBER = "metadata.json"
_METADATA_KEY = "carlib"
# A file next to a model that names its classes, for models saved without them (see read_class_names).
CLASS_NAMES_FILE = "classes.json"


def preprocessing_layer(mode: str) -> keras.layers.Layer:
    """The layer mapping raw 0–255 RGB to the range ``mode`` names."""
    low, high = PREPROCESSING[mode]
    scale = (high - low) / 255.0
    return keras.layers.Rescaling(scale=scale, offset=low, name=f"preprocess_{mode}")


def build_model(
    backbone: str,
    num_classes: int,
    image_size: int | None = None,
    *,
    weights: str | None = "auto",
    dropout: float = 0.2,
    bn_mode: str = "auto",
    hidden_units: int = 0,
    head_batchnorm: bool = False,
    input_range: str | None = None,
    width: int | None = None,
    depth: int | None = None,
) -> keras.Model:
    """Raw 0–255 RGB in, class probabilities out: preprocessing → backbone → pooling → head → dense.

    ``weights``: ``"auto"`` (the backbone's default: ImageNet for ``efficientnet_lite0/1/2``, random
    for the others), ``"imagenet"`` (from carlib's or Keras' cache; a keras.applications file is
    downloaded once, :func:`ensure_weights`), ``None`` (random init) or the path of a local
    weights file for the backbone. ``bn_mode``: ``"frozen"`` calls the
    backbone with ``training=False`` so BatchNorm keeps its statistics (right for pretrained
    weights, R13); ``"train"`` lets BatchNorm update; ``"auto"`` freezes only pretrained
    BatchNorm (ImageNet weights, a weights file, or a ``hub:`` SavedModel).

    The head: global average pooling → [BatchNorm if ``head_batchnorm`` (R16)] →
    [``Dense(hidden_units, relu)`` if ``hidden_units`` > 0; none by default, R17] → dropout →
    ``Dense(num_classes)`` in float32. ``input_range`` overrides the spec's preprocessing mode
    (a key of :data:`PREPROCESSING`; used for ``hub:`` backbones, whose range is a parameter).
    ``width`` / ``depth`` resize carlib's compact from-scratch backbones (:func:`knob_backbones`):
    channels of the first stage (doubled per stage) and layers or residual blocks per stage;
    ``None`` keeps the variant's own.
    """
    spec = get_backbone(backbone)
    knobs = check_knobs(backbone, width, depth)
    preprocessing = input_range or spec.preprocessing
    if preprocessing not in PREPROCESSING:
        raise ConfigError(f"input_range={preprocessing!r} is unknown: expected one of {sorted(PREPROCESSING)}.")
    size = image_size or spec.default_size
    if weights == "auto":
        weights = None if is_hub_backbone(backbone) else spec.default_weights
    ensure_weights(backbone, weights)
    if weights not in (None, "imagenet"):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise MissingFileError(f"weights file {str(path)!r} does not exist.")
        weights = str(path)
    inputs = keras.Input(shape=(size, size, 3), name="image")
    x = preprocessing_layer(preprocessing)(inputs)
    extractor = spec.build((size, size, 3), weights, **knobs)
    is_hub = is_hub_backbone(spec.name)
    if is_hub and bn_mode == "train" and not _hub_layer(extractor).accepts_training:
        raise ConfigError(f"bn_mode='train' needs a SavedModel whose endpoint takes a training argument; "
                         f"{spec.name!r} uses {_hub_layer(extractor).call_endpoint!r}, which always runs in "
                         "inference mode. Use bn_mode='auto' or 'frozen'.")
    pretrained = weights is not None or is_hub
    frozen_bn = bn_mode == "frozen" or (bn_mode == "auto" and pretrained)
    x = InferenceModeBackbone(extractor, name="backbone_inference_mode")(x) if frozen_bn else extractor(x)
    if len(x.shape) == 4:
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    if head_batchnorm:
        # momentum 0.9 for the same reason as in simple_cnn: short runs leave 0.99's statistics near init.
        x = keras.layers.BatchNormalization(momentum=0.9, name="head_bn")(x)
    if hidden_units:
        x = keras.layers.Dense(hidden_units, activation="relu", name="head_hidden")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="classifier")(x)
    return keras.Model(inputs, outputs, name="carlib_hub" if is_hub else f"carlib_{spec.name}")


def ensure_weights(backbone: str, weights: str | None) -> None:
    """Make sure ``weights="imagenet"`` for ``backbone`` is on this machine before anything trains.

    carlib's packaged weights are converted into its cache; a keras.applications file is taken
    from Keras' cache or downloaded. Without them (no package, no internet) this raises
    :class:`~carlib.errors.WeightsError` with one line that says how to get them. Other values
    need nothing.
    """
    if weights != "imagenet" or is_hub_backbone(backbone):
        return
    spec = get_backbone(backbone)
    if spec.fetch_imagenet is None:
        raise ConfigError(f"backbone {backbone!r} has no ImageNet weights: use weights=None or a local weights file.")
    spec.fetch_imagenet()


def _hub_layer(extractor: keras.Model):
    return next(layer for layer in extractor.layers if isinstance(layer, HubBackbone))


@keras.saving.register_keras_serializable(package="carlib")
class InferenceModeBackbone(keras.layers.Layer):
    """Runs the wrapped backbone with ``training=False`` even while the model trains.

    Keras 3's ``fit`` re-passes ``training=True`` through a functional graph, overriding a
    ``backbone(x, training=False)`` written when the model was built (keras-team/keras#20285),
    so BatchNorm statistics would drift during fine-tuning (R13). Inside this layer the
    argument is fixed; the backbone's weights stay trainable.
    """

    def __init__(self, backbone: keras.Model, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone

    def build(self, input_shape):
        self.backbone.build(input_shape)
        super().build(input_shape)

    def call(self, inputs):
        return self.backbone(inputs, training=False)

    def compute_output_shape(self, input_shape):
        return self.backbone.compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "backbone": keras.saving.serialize_keras_object(self.backbone)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)


def feature_extractor(model: keras.Model) -> keras.Model:
    """The backbone inside a model built by :func:`build_model`."""
    for layer in model.layers:
        if isinstance(layer, InferenceModeBackbone):
            return layer.backbone
        if isinstance(layer, keras.Model):
            return layer
    raise ModelError(f"model {model.name!r} has no backbone sub-model")


def loads_in_safe_mode(path: str | os.PathLike) -> bool:
    """Whether Keras may load the ``.keras`` file ``path`` in safe mode: not when it holds a SavedModel backbone.

    A :class:`carlib.models.hub_layer.HubBackbone` re-opens its SavedModel, which Keras refuses in safe
    mode (a SavedModel carries graph code); every other carlib model loads with Keras' defaults.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"model file {str(path)!r} does not exist.")
    try:
        with zipfile.ZipFile(path) as archive:
            config = archive.read("config.json").decode()
    except (zipfile.BadZipFile, KeyError):
        raise ModelError(f"{str(path)!r} is not a .keras model file (a zip archive holding config.json): give a "
                         "file saved by carlib or keras' model.save, or a run folder.") from None
    return "carlib>HubBackbone" not in config


def model_image_size(model) -> int:
    """The square input size a model was built for; a clear error if it has none."""
    shape = model.input_shape
    if isinstance(shape, list):
        shape = shape[0]
    height, width = shape[1], shape[2]
    if height is None or width is None or height != width:
        raise ModelError(
            f"model {model.name!r} has input shape {shape}: carlib needs a fixed square input size "
            "(models built by carlib.build_model have one); pass image_size explicitly."
        )
    return int(height)


def save_model(model: keras.Model, path: str | os.PathLike, class_names: Sequence[str] | None = None) -> Path:
    """Save ``model`` as a ``.keras`` file that carries its class names; the file is replaced atomically.

    ``class_names[i]`` names output ``i``. They go into the file's ``metadata.json`` (Keras writes
    that member and never reads it, so ``keras.models.load_model`` loads the file as before), so a
    copied model file keeps them; :func:`read_class_names` reads them back. ``None`` saves a plain
    Keras file.
    """
    path = Path(path)
    if class_names is not None:
        _check_class_names(model, class_names)
    with atomic_path(path, suffix=".keras") as temporary:
        model.save(temporary)
        if class_names is not None:
            add_class_names(temporary, class_names)
    return path


def _check_class_names(model: keras.Model, class_names: Sequence[str]) -> None:
    outputs = model.output_shape[-1] if not isinstance(model.output_shape, list) else None
    if outputs is not None and int(outputs) != len(class_names):
        raise ModelError(f"{len(class_names)} class names for a model with {outputs} outputs: class_names[i] must "
                         "name output i.")


def add_class_names(path: str | os.PathLike, class_names: Sequence[str]) -> None:
    """Write ``class_names`` into an existing ``.keras`` file (its ``metadata.json``), atomically.

    A zip member cannot be changed in place: the archive is copied member by member (each with
    its own compression) with the new metadata, then renamed over the file.
    """
    path = Path(path)
    names = [str(name) for name in class_names]
    with zipfile.ZipFile(path) as source, atomic_path(path, suffix=".keras") as temporary:
        with zipfile.ZipFile(temporary, "w") as target:
            for info in source.infolist():
                if info.filename == _METADATA_MEMBER:
                    metadata = json.loads(source.read(info) or b"{}")
                    metadata[_METADATA_KEY] = {**metadata.get(_METADATA_KEY, {}), "class_names": names}
                    target.writestr(info, json.dumps(metadata))
                else:
                    with source.open(info) as reader, target.open(info, "w", force_zip64=True) as writer:
                        shutil.copyfileobj(reader, writer, 1 << 20)


def read_class_names(path: str | os.PathLike) -> tuple[str, ...] | None:
    """The class names of a model file: from inside it (:func:`save_model`), else from ``classes.json`` next to it.

    ``classes.json`` holds a list of names, or ``{"class_names": [...]}`` (write one next to a
    model saved without names). ``None`` when neither is there.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            metadata = json.loads(archive.read(_METADATA_MEMBER))
        names = metadata.get(_METADATA_KEY, {}).get("class_names")
    except (OSError, KeyError, ValueError, AttributeError, zipfile.BadZipFile):
        names = None
    if names is None:
        names = read_class_names_file(path.parent / CLASS_NAMES_FILE, missing_ok=True)
    return tuple(str(name) for name in names) if names is not None else None


def read_class_names_file(path: str | os.PathLike, *, missing_ok: bool = False) -> tuple[str, ...] | None:
    """Class names from a file: JSON (a list, or ``{"class_names": [...]}``) or text (one name per line)."""
    path = Path(path)
    if not path.is_file():
        if missing_ok:
            return None
        raise MissingFileError(f"class names file {str(path)!r} does not exist.")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as err:
            raise ModelError(f"{str(path)!r} is not valid JSON ({err}): expected a list of class names.") from None
        names = data.get("class_names") if isinstance(data, dict) else data
        if not isinstance(names, list) or not all(isinstance(n, (str, int)) for n in names):
            raise ModelError(f"{str(path)!r} must hold a list of class names, or {{\"class_names\": [...]}}.")
    else:
        names = [line.rstrip("\r") for line in text.split("\n")]
        while names and not names[-1]:
            names.pop()
    return tuple(str(name) for name in names)
