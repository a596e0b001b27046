"""One registry helper behind every name carlib looks up: the unknown-name message, registration, overwriting."""

from __future__ import annotations

import pytest

import carlib
from carlib.base.registry import Registry, closest_hint
from carlib.errors import CarlibError, ConfigError, UnknownNameError


def test_unknown_name_lists_the_known_names_the_closest_one_and_how_to_add_one():
    colours = Registry("colour", "add your own with register_colour(name, rgb)")
    colours.register("teal", (0, 128, 128))
    colours.register("red", (255, 0, 0))
    with pytest.raises(UnknownNameError) as err:
        colours.get("tael")
    assert str(err.value) == ("unknown colour 'tael'. Did you mean 'teal'? Known: red, teal; add your own with "
                              "register_colour(name, rgb).")
    # one error, three ways to catch it: carlib's, the parameter error's, and a lookup's
    assert isinstance(err.value, CarlibError) and isinstance(err.value, ConfigError) and isinstance(err.value, KeyError)


def test_no_hint_when_nothing_is_close():
    assert closest_hint("zzz", ["red", "teal"]) == ""
    assert Registry("colour").unknown_message("zzz") == "unknown colour 'zzz'. Known: ."


def test_register_refuses_a_taken_name_unless_asked_and_unregister_removes_it():
    registry = Registry("thing")
    registry.register("a", 1)
    with pytest.raises(ConfigError, match="thing 'a' is already registered; pass overwrite=True"):
        registry.register("a", 2)
    registry.register("a", 3, overwrite=True)
    assert registry.get("a") == 3 and "a" in registry and list(registry) == ["a"] and len(registry) == 1
    assert registry.unregister("a") == 3
    assert "a" not in registry
    with pytest.raises(UnknownNameError):
        registry.unregister("a")
    with pytest.raises(ConfigError, match="non-empty name"):
        registry.register("", 1)


@pytest.mark.parametrize("lookup, kind", [
    (lambda: carlib.models.registry.get_backbone("resnet"), "backbone"),
    (lambda: carlib.data.augment.check_augmentation("meduim"), "augmentation"),
    (lambda: carlib.data.tta_presets.check_tta_preset("fliip"), "TTA preset"),
    (lambda: carlib.studies.specs.get_study("lr_studdy"), "study"),
])
def test_every_registry_of_carlib_uses_the_helper(lookup, kind):
    import carlib.data.augment  # noqa: F401  the modules whose registries are tested
    import carlib.data.tta_presets  # noqa: F401
    import carlib.models.registry  # noqa: F401
    import carlib.studies.specs  # noqa: F401

    with pytest.raises(UnknownNameError, match=rf"^unknown {kind} '\w+'\. Did you mean '\w+'\? Known: "):
        lookup()
