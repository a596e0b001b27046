"""The Keras 3 layer that runs a TF-Hub-style SavedModel and fine-tunes with any optimizer.

Under Keras 3 ``hub.KerasLayer`` cannot live in a model, and ``keras.layers.TFSMLayer``
fine-tunes only with plain SGD: the variables it wraps keep TensorFlow's ``":0"`` suffix, and
Adam's slot names built from them are invalid scope names. :class:`HubBackbone` is a
``TFSMLayer`` that re-tracks the same variables under clean names, picks the SavedModel's call
endpoint itself, and passes ``training`` through when the endpoint accepts it (TF-Hub's
reusable SavedModels do, so their BatchNorm can follow ``bn_mode``).
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import keras
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from carlib.errors import ModelError
from carlib.models.hub import is_remote_handle

__all__ = ["HubBackbone", "resolve_handle", "hub_feature_extractor", "ENDPOINTS"]

# Endpoints tried in order when none is given: Keras' model.export(), TF-Hub's reusable
# SavedModel API (`obj(images, training=...)`), then the TF1-style serving signature.
ENDPOINTS = ("serve", "__call__", "serving_default")


def resolve_handle(handle: str) -> str:
    """A local SavedModel folder for ``handle``: local paths as they are, URLs via ``tensorflow_hub.resolve``."""
    if not is_remote_handle(handle):
        return str(Path(handle).expanduser().resolve())
    import tensorflow_hub  # deferred: it pulls tf-keras, which local models never need

    return tensorflow_hub.resolve(handle)


@keras.saving.register_keras_serializable(package="carlib")
class HubBackbone(keras.layers.TFSMLayer):
    """A SavedModel feature extractor as a Keras 3 layer that fine-tunes with any optimizer.

    ``handle``: a SavedModel folder or a TF-Hub/Kaggle URL. ``call_endpoint``: ``None`` picks
    ``serve`` (``model.export``), ``__call__`` (TF-Hub reusable SavedModels) or
    ``serving_default``, whichever exists first. ``output_key`` selects one output when the
    endpoint returns a dict of several. It computes in float32 whatever the global policy, as
    SavedModel signatures are typed.

    Saved in a ``.keras`` file as its handle plus the (fine-tuned) variable values; loading
    re-opens the SavedModel, which Keras allows only with ``safe_mode=False`` (a SavedModel
    holds graph code): :func:`carlib.evaluate.predict.load_model` does that for carlib models.
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
                raise ModelError(f"the SavedModel {self.handle!r} returns several outputs {sorted(outputs)}: "
                                 "pass output_key to HubBackbone to choose the feature output.")
            return next(iter(outputs.values()))
        return outputs

    def get_config(self):
        config = keras.layers.Layer.get_config(self)
        config.update(handle=self.handle, call_endpoint=self.call_endpoint, output_key=self.output_key)
        return config


def _pick_endpoint(path: str) -> str:
    """The first of :data:`ENDPOINTS` the SavedModel offers, read from saved_model.pb without loading it."""
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((Path(path) / "saved_model.pb").read_bytes())
    graph = proto.meta_graphs[0]
    attributes = {child.local_name for child in graph.object_graph_def.nodes[0].children}
    signatures = set(graph.signature_def)
    for endpoint in ENDPOINTS:
        if endpoint in attributes or endpoint in signatures:
            return endpoint
    raise ModelError(f"the SavedModel at {path!r} has none of the call endpoints {list(ENDPOINTS)} "
                     f"(its signatures: {sorted(signatures)}); pass call_endpoint to HubBackbone.")


def _accepts_training(fn) -> bool:
    try:
        return "training" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # concrete functions of signatures have no Python signature to inspect
        return False


def _signature_sizes(fn) -> set[tuple[int | None, int | None]]:
    """The (height, width) of the image inputs a SavedModel endpoint was traced for (None: any size)."""
    signatures = [cf.structured_input_signature for cf in getattr(fn, "concrete_functions", ())]
    if hasattr(fn, "structured_input_signature"):  # a signature (serving_default) is one concrete function
        signatures.append(fn.structured_input_signature)
    sizes = set()
    for spec in tf.nest.flatten(signatures):
        shape = getattr(spec, "shape", None)
        if shape is not None and shape.rank == 4 and shape[-1] == 3:
            sizes.add((shape[1], shape[2]))
    return sizes


def _size_words(height, width) -> str:
    return str(height) if height == width else f"{height}x{width}"


def _accepted_size(error: Exception, requested: int) -> str | None:
    """The image size TensorFlow's mismatch message names as the signature's (``shape=(None, 224, 224, 3)``),
    other than the ``requested`` one (the message names both)."""
    shapes = [s for s in re.findall(r"shape=\(None, (\d+), (\d+), 3\)", str(error)) if s != (str(requested),) * 2]
    return _size_words(*shapes[-1]) if shapes else None


def _size_error(name: str, requested: int, accepted: str | None) -> ModelError:
    if accepted:
        advice = f"it accepts {accepted} px images only: set image_size={accepted.split('x')[0]}"
    else:
        advice = "set image_size to the size it was exported for"
    return ModelError(f"the SavedModel of {name!r} does not accept {requested} px images; {advice}.")


def hub_feature_extractor(name: str, handle: str, input_shape) -> keras.Model:
    """A Keras model wrapping the SavedModel of backbone ``name`` for images of ``input_shape``.

    A SavedModel exported for one fixed size fails here with one line naming the size it accepts
    (read from its signature before anything is traced).
    """
    inputs = keras.Input(shape=input_shape, name="hub_input")
    layer = HubBackbone(handle, name="hub_layer")
    requested = (input_shape[0], input_shape[1])
    sizes = _signature_sizes(layer.call_endpoint_fn)
    fits = [s for s in sizes if all(a is None or a == b for a, b in zip(s, requested))]
    if sizes and not fits:
        accepted = sorted(sizes, key=lambda s: (s[0] is None, s))[0]
        raise _size_error(name, input_shape[0], _size_words(*accepted))
    try:
        features = layer(inputs)
    except (ValueError, TypeError) as err:
        raise _size_error(name, input_shape[0], _accepted_size(err, input_shape[0])) from None
    return keras.Model(inputs, features, name="hub_backbone")
