"""TF-Hub-style SavedModel backbones (R14): ``backbone="hub:<handle or local path>"``, named and checked.

``keras.applications`` is no longer the state of the art; TF-Hub (now Kaggle Models) has
EfficientNetV2 and friends as SavedModel feature extractors. This module handles the names
(no TensorFlow: the config checks them cheaply); the Keras layer that runs a SavedModel is
:class:`carlib.models.hub_layer.HubBackbone`, and :func:`carlib.models.registry.get_backbone` makes a
``hub:`` name's spec on demand.

Handles: a local SavedModel folder is used as it is; anything else (a tfhub.dev or Kaggle
Models URL) goes through ``tensorflow_hub.resolve``, which downloads once and caches under
``$TFHUB_CACHE_DIR``. The pixel range the model expects is the ``hub_input_range`` parameter
(TF-Hub's image convention, ``unit`` = [0, 1], by default).
"""

from __future__ import annotations

from pathlib import Path

from carlib.errors import ConfigError

__all__ = ["HUB_PREFIX", "HUB_DEFAULT_SIZE", "HUB_DEFAULT_INPUT_RANGE", "is_hub_backbone", "hub_handle",
           "is_remote_handle", "check_hub_backbone", "absolute_hub_backbone"]

HUB_PREFIX = "hub:"
HUB_DEFAULT_SIZE = 224  # TF-Hub's image feature vectors are trained at 224 px unless their page says otherwise
HUB_DEFAULT_INPUT_RANGE = "unit"  # TF-Hub's common image signature: float RGB in [0, 1]


def is_hub_backbone(name: str) -> bool:
    """Whether a backbone name means a SavedModel (``hub:<handle or path>``)."""
    return isinstance(name, str) and name.startswith(HUB_PREFIX)


def hub_handle(name: str) -> str:
    """The handle or path after ``hub:``."""
    return name[len(HUB_PREFIX):].strip()


def is_remote_handle(handle: str) -> bool:
    """Whether a handle is a URL (downloaded by ``tensorflow_hub``) rather than a local folder."""
    return "://" in handle


def check_hub_backbone(name: str) -> None:
    """Fail early (no download, no loading) on a ``hub:`` name that cannot work."""
    handle = hub_handle(name)
    if not handle:
        raise ConfigError(f"backbone={name!r} names no model: write hub:<URL> (e.g. a tfhub.dev or Kaggle "
                          "Models feature-vector handle) or hub:<folder holding saved_model.pb>.")
    if is_remote_handle(handle):
        return
    path = Path(handle).expanduser()
    if not (path / "saved_model.pb").is_file():
        what = "does not exist" if not path.exists() else "holds no saved_model.pb"
        raise ConfigError(f"backbone={name!r}: the folder {str(path)!r} {what}. A hub: backbone needs a SavedModel "
                          "folder (from model.export(path), tf.saved_model.save or an unpacked TF-Hub download) or a "
                          "URL handle.")


def absolute_hub_backbone(name: str) -> str:
    """``hub:<path>`` with the path made absolute (so a record says which model ran); URLs unchanged."""
    handle = hub_handle(name)
    if is_remote_handle(handle):
        return HUB_PREFIX + handle
    return HUB_PREFIX + str(Path(handle).expanduser().resolve())
