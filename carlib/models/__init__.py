"""Models: the backbone registry (names, preprocessing, default sizes), carlib's compact backbones, TF-Hub
SavedModel backbones, the loss, and building and loading a full model.

``registry``, ``spec`` and ``hub`` import no TensorFlow (the config checks names cheaply); ``build``,
``compact``, ``hub_layer`` and ``losses`` do.
"""

from carlib.models.registry import (
                                    BACKBONES,
                                    available_backbones,
                                    check_knobs,
                                    get_backbone,
                                    knob_backbones,
                                    register_backbone,
)
from carlib.models.spec import BackboneSpec

__all__ = ["BACKBONES", "BackboneSpec", "available_backbones", "check_knobs", "get_backbone", "knob_backbones",
           "register_backbone"]
