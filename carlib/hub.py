"""TF-Hub-style SavedModel backbones (R14): ``backbone="hub:<handle or local path>"``.

``keras.applications`` is no longer the state of the art; TF-Hub (now Kaggle Models) has
EfficientNetV2 and friends as SavedModel feature extractors. Under Keras 3 ``hub.KerasLayer``
cannot live in a model, and ``keras.layers.TFSMLayer`` fine-tunes only with plain SGD: the
variables it wraps keep TensorFlow's ``":0"`` suffix, and Adam's slot names built from them
are invalid scope names. :class:`HubBackbone` is a ``TFSMLayer`` that re-tracks the same
variables under clean names, picks the SavedModel's call endpoint itself, and passes
``training`` through when the endpoint accepts it (TF-Hub's reusable SavedModels do, so their
BatchNorm can follow ``bn_mode``).

Handles: a local SavedModel folder is used as it is; anything else (a tfhub.dev or Kaggle
Models URL) goes through ``tensorflow_hub.resolve``, which downloads once and caches under
``$TFHUB_CACHE_DIR``. The pixel range the model expects is the ``hub_input_range`` parameter
(TF-Hub's image convention, ``unit`` = [0, 1], by default).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import keras

TFSMLayer = keras.layers.TFSMLayer

__all__ = ["HUB_PREFIX", "HUB_DEFAULT_SIZE", "HUB_DEFAULT_INPUT_RANGE", "HubBackbone", "is_hub_backbone",
           "hub_handle", "check_hub_backbone", "absolute_hub_backbone", "resolve_handle", "hub_backbone_spec"]

HUB_PREFIX = "hub:"
HUB_DEFAULT_SIZE = 224  # TF-Hub's image feature vectors are trained at 224 px unless their page says otherwise
HUB_DEFAULT_INPUT_RANGE = "unit"  # TF-Hub's common image signature: float RGB in [0, 1]

# Endpoints tried in order when none is given: Keras' model.export(), TF-Hub's reusable
# SavedModel API (`obj(images, training=...)`), then the TF1-style serving signature.
_ENDPOINTS = ("serve", "__call__", "serving_default")


def is_hub_backbone(name: str) -> bool:
    """Whether a backbone name means a SavedModel (``hub:<handle or path>``)."""
    return isinstance(name, str) and name.startswith(HUB_PREFIX)


def hub_handle(name: str) -> str:
    """The handle or path after ``hub:``."""
    return name[len(HUB_PREFIX):].strip()


def _is_remote(handle: str) -> bool:
    return "://" in handle


def check_hub_backbone(name: str) -> None:
    """Fail early (no download, no loading) on a ``hub:`` name that cannot work."""
    handle = hub_handle(name)
    if not handle:
        raise ValueError(f"backbone={name!r} names no model: write hub:<URL> (e.g. a tfhub.dev or Kaggle "
                         "Models feature-vector handle) or hub:<folder holding saved_model.pb>.")
    if _is_remote(handle):
        return
    path = Path(handle).expanduser()
    if not (path / "saved_model.pb").is_file():
        what = "does not exist" if not path.exists() else "holds no saved_model.pb"
        raise ValueError(f"backbone={name!r}: the folder {str(path)!r} {what}. A hub: backbone needs a SavedModel "
                         "folder (from model.export(path), tf.saved_model.save or an unpacked TF-Hub download) "
                         "or a URL handle.")


def absolute_hub_backbone(name: str) -> str:
    """``hub:<path>`` with the path made absolute (so a record says which model ran); URLs unchanged."""
    handle = hub_handle(name)
    if _is_remote(handle):
        return HUB_PREFIX + handle
    return HUB_PREFIX + str(Path(handle).expanduser().resolve())


def resolve_handle(handle: str) -> str:
    """A local SavedModel folder for ``handle``: local paths as they are, URLs via ``tensorflow_hub.resolve``."""
    if not _is_remote(handle):
        return str(Path(handle).expanduser().resolve())
    import tensorflow_hub  # imported only here: it pulls tf-keras, which local models never need

    return tensorflow_hub.resolve(handle)


@keras.saving.register_keras_serializable(package="carlib")
class HubBackbone(TFSMLayer):
    """A SavedModel feature extractor as a Keras 3 layer that fine-tunes with any optimizer.

    ``handle``: a SavedModel folder or a TF-Hub/Kaggle URL. ``call_endpoint``: ``None`` picks
    ``serve`` (``model.export``), ``__call__`` (TF-Hub reusable SavedModels) or
    ``serving_default``, whichever exists first. ``output_key`` selects one output when the
    endpoint returns a dict of several. It computes in float32 whatever the global policy, as
    SavedModel signatures are typed.

    Saved in a ``.keras`` file as its handle plus the (fine-tuned) variable values; loading
    re-opens the SavedModel, which Keras allows only with ``safe_mode=False`` (a SavedModel
    holds graph code): :func:`carlib.backbones.load_model` does that for carlib models.
    """

    def __init__(self, handle: str, call_endpoint: str | None = None, output_key: str | None = None,
                 trainable: bool = True, name: str | None = None, dtype="float32", **kwargs):
        path = resolve_handle(handle)
        endpoint = call_endpoint or _pick_endpoint(path)
        self.handle = handle
        self.output_key = output_key
        super().__init__(path, call_endpoint=endpoint, trainable=trainable, name=name, dtype=dtype, **kwargs)
        self.accepts_training = _accepts_training(self.call_endpoint_fn)

    def _add_existing_weight(self, weight):
        # The same tf.Variable, tracked under a name without "/" and ":0": optimizers derive
        # their slot-variable scopes from it ("conv_kernel:0_momentum" is not a valid scope).
        variable = keras.Variable(initializer=weight, trainable=weight.trainable, dtype=weight.dtype,
                                  shape=weight.shape, name=weight.name.split(":")[0].replace("/", "_"))
        self._track_variable(variable)

    def call(self, inputs, training=False):
        if self.accepts_training:
            outputs = self.call_endpoint_fn(inputs, training=bool(training))
        else:
            outputs = self.call_endpoint_fn(inputs)
        if isinstance(outputs, dict):
            if self.output_key is not None:
                return outputs[self.output_key]
            if len(outputs) != 1:
                raise ValueError(f"the SavedModel {self.handle!r} returns several outputs {sorted(outputs)}: "
                                 "pass output_key to HubBackbone to choose the feature output.")
            return next(iter(outputs.values()))
        return outputs

    def get_config(self):
        config = keras.layers.Layer.get_config(self)
        config.update(handle=self.handle, call_endpoint=self.call_endpoint, output_key=self.output_key)
        return config


def _pick_endpoint(path: str) -> str:
    """The first of :data:`_ENDPOINTS` the SavedModel offers, read from saved_model.pb without loading it."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((Path(path) / "saved_model.pb").read_bytes())
    graph = proto.meta_graphs[0]
    attributes = {child.local_name for child in graph.object_graph_def.nodes[0].children}
    signatures = set(graph.signature_def)
    for endpoint in _ENDPOINTS:
        if endpoint in attributes or endpoint in signatures:
            return endpoint
    raise ValueError(f"the SavedModel at {path!r} has none of the call endpoints {list(_ENDPOINTS)} "
                     f"(its signatures: {sorted(signatures)}); pass call_endpoint to HubBackbone.")


def _accepts_training(fn) -> bool:
    try:
        return "training" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # concrete functions of signatures have no Python signature to inspect
        return False


def hub_backbone_spec(name: str, input_range: str = HUB_DEFAULT_INPUT_RANGE):
    """The :class:`~carlib.backbones.BackboneSpec` of a ``hub:`` backbone (built on demand, not registered)."""
    from carlib.backbones import BackboneSpec

    check_hub_backbone(name)
    handle = hub_handle(name)

    def build(input_shape, weights):
        if weights is not None:
            raise ValueError(f"backbone {name!r} carries its own weights in the SavedModel: use weights=None.")
        inputs = keras.Input(shape=input_shape, name="hub_input")
        try:
            features = HubBackbone(handle, name="hub_layer")(inputs)
        except (ValueError, TypeError) as err:
            raise ValueError(f"the SavedModel of {name!r} does not accept images of shape {tuple(input_shape)}: "
                             f"{err}\nSet image_size to a size it was exported for.") from err
        return keras.Model(inputs, features, name="hub_backbone")

    return BackboneSpec(name, build, input_range, HUB_DEFAULT_SIZE, f"SavedModel feature extractor {handle}")
