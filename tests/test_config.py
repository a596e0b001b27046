"""ExperimentConfig: coercion of string-typed inputs, validation messages, immutability, resolution."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from carlib.base.project_files import default_results_dir
from carlib.config import PARAMETER_NAMES, ExperimentConfig
from carlib.errors import ConfigError


# ------------------------------------------------------------------------ defaults
def test_defaults_are_valid():
    config = ExperimentConfig()
    assert config.backbone == "simple_cnn"
    assert config.lr == 0.001
    assert config.image_size is None
    assert config.lr_boundaries == ()
    assert ExperimentConfig.from_dict({}) == config
    assert ExperimentConfig.from_dict(None) == config


def test_parameter_names_match_fields():
    assert PARAMETER_NAMES == tuple(f.name for f in dataclasses.fields(ExperimentConfig))
    assert {"lr", "image_size", "backbone", "val_split", "results_dir"} <= set(PARAMETER_NAMES)


# ------------------------------------------------------------------------ coercion
@pytest.mark.parametrize("value", ["1e-3", "0.001", " 1e-3 ", 1e-3, "1E-3"])
def test_lr_strings_become_floats(value):
    config = ExperimentConfig.from_dict({"lr": value})
    assert type(config.lr) is float
    assert config.lr == 0.001


@pytest.mark.parametrize("value", ["64", 64, 64.0, "64.0"])
def test_int_fields_accept_integral_values(value):
    config = ExperimentConfig.from_dict({"batch_size": value, "image_size": value})
    assert config.batch_size == 64 and type(config.batch_size) is int
    assert config.image_size == 64 and type(config.image_size) is int


@pytest.mark.parametrize("value", [64.5, "64.5", "sixty-four", True, [64]])
def test_int_fields_reject_non_integral_values(value):
    with pytest.raises(ConfigError, match="batch_size") as err:
        ExperimentConfig.from_dict({"batch_size": value})
    assert "wrong type" in str(err.value)
    assert "integer" in str(err.value)


@pytest.mark.parametrize("value", ["None", "none", "null", "", "~", None])
def test_none_strings_for_optional_fields(value):
    config = ExperimentConfig.from_dict({"image_size": value, "weights": value, "data_dir": value, "results_dir": value})
    assert config.image_size is None
    assert config.weights is None
    assert config.data_dir is None
    assert config.results_dir is None


def test_none_is_not_accepted_for_required_fields():
    with pytest.raises(ConfigError, match="backbone"):
        ExperimentConfig.from_dict({"backbone": None})
    with pytest.raises(ConfigError, match="epochs"):
        ExperimentConfig.from_dict({"epochs": "None"})


@pytest.mark.parametrize("value", ["3,6", "3, 6", [3, 6], (3, 6), ["3", "6"], "[3, 6]", [3.0, 6.0]])
def test_lr_boundaries_forms(value):
    config = ExperimentConfig.from_dict({"schedule": "step", "lr_boundaries": value})
    assert config.lr_boundaries == (3, 6)
    assert all(type(b) is int for b in config.lr_boundaries)


def test_lr_boundaries_single_value_and_empty():
    assert ExperimentConfig(lr_boundaries=5).lr_boundaries == (5,)
    assert ExperimentConfig(lr_boundaries="5").lr_boundaries == (5,)
    assert ExperimentConfig(lr_boundaries="").lr_boundaries == ()
    assert ExperimentConfig(lr_boundaries=[]).lr_boundaries == ()


def test_lr_boundaries_rejects_bad_items():
    with pytest.raises(ConfigError, match="lr_boundaries"):
        ExperimentConfig(lr_boundaries="3,x")
    with pytest.raises(ConfigError, match="lr_boundaries"):
        ExperimentConfig(lr_boundaries=[0, 3])


def test_path_values_become_strings(tmp_path):
    config = ExperimentConfig(data_dir=tmp_path, results_dir=tmp_path / "r")
    assert config.data_dir == str(tmp_path)
    assert config.results_dir == str(tmp_path / "r")


def test_yaml_scientific_notation_is_a_string_but_config_gets_a_float():
    loaded = yaml.safe_load("lr: 1e-3\nbatch_size: 64\nlr_boundaries: [3, 6]\nimage_size: null\n")
    assert isinstance(loaded["lr"], str)  # YAML 1.1: "1e-3" without a dot is not a float
    config = ExperimentConfig.from_dict(loaded)
    assert config.lr == 0.001 and type(config.lr) is float
    assert config.batch_size == 64
    assert config.lr_boundaries == (3, 6)
    assert config.image_size is None


def test_overrides_win_over_mapping():
    config = ExperimentConfig.from_dict({"lr": "0.1", "epochs": 3}, lr="0.01")
    assert config.lr == 0.01
    assert config.epochs == 3


# ------------------------------------------------------------------- unknown keys
@pytest.mark.parametrize(
    ("key", "suggestion"),
    [("learning_rate", "'lr'"), ("image_sise", "'image_size'"), ("batchsize", "'batch_size'"),
     ("img_size", "'image_size'"), ("model", "'backbone'")],
)
def test_unknown_key_names_it_and_suggests(key, suggestion):
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_dict({key: 1})
    message = str(err.value)
    assert repr(key) in message
    assert "Did you mean" in message and suggestion in message
    assert "Known parameters:" in message
    for name in PARAMETER_NAMES:
        assert name in message


def test_unknown_key_via_overrides_and_replace():
    with pytest.raises(ConfigError, match="'learning_rate'"):
        ExperimentConfig.from_dict(learning_rate=0.1)
    with pytest.raises(ConfigError, match="'learning_rate'"):
        ExperimentConfig().replace(learning_rate=0.1)


def test_every_unknown_key_is_reported():
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_dict({"learning_rate": 1, "zzzzzz": 2})
    assert "'learning_rate'" in str(err.value)
    assert "'zzzzzz'" in str(err.value)


# -------------------------------------------------------------------- bad values
@pytest.mark.parametrize(
    ("params", "name", "shown"),
    [
        ({"lr": -1}, "lr", "-1"),
        ({"lr": 0}, "lr", "0"),
        ({"lr": "nan"}, "lr", "nan"),
        ({"val_split": 1}, "val_split", "1"),
        ({"val_split": -0.1}, "val_split", "-0.1"),
        ({"image_size": 0}, "image_size", "0"),
        ({"image_size": 8}, "image_size", "8"),
        ({"batch_size": 0}, "batch_size", "0"),
        ({"epochs": 0}, "epochs", "0"),
        ({"dropout": 1}, "dropout", "1"),
        ({"lr_factor": 0}, "lr_factor", "0"),
        ({"lr_patience": 0}, "lr_patience", "0"),
        ({"warmup_epochs": -1}, "warmup_epochs", "-1"),
        ({"seed": -1}, "seed", "-1"),
    ],
)
def test_out_of_range_values(params, name, shown):
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_dict(params)
    message = str(err.value)
    assert message.startswith(f"{name}=")
    assert shown in message
    assert "out of range" in message
    assert "expected" in message  # what is allowed


def test_val_split_zero_is_allowed():
    assert ExperimentConfig(val_split=0).val_split == 0.0


def test_unknown_backbone_lists_known_ones():
    with pytest.raises(ConfigError) as err:
        ExperimentConfig(backbone="nope")
    message = str(err.value)
    assert "backbone" in message and "'nope'" in message
    assert "xception" in message and "simple_cnn" in message


def test_misspelt_backbone_gets_a_suggestion():
    with pytest.raises(ConfigError, match="Did you mean 'xception'"):
        ExperimentConfig(backbone="xceptoin")


@pytest.mark.parametrize("name, value, known", [
    ("schedule", "exponential", ("constant", "step", "plateau", "cosine")),
    ("augmentation", "extreme", ("none", "light", "medium", "heavy")),
])
def test_an_unknown_choice_names_itself_and_every_known_value(name, value, known):
    with pytest.raises(ConfigError) as err:
        ExperimentConfig(**{name: value})
    message = str(err.value)
    assert name in message and repr(value) in message
    assert all(k in message for k in known)


def test_unknown_optimizer_and_bn_mode():
    with pytest.raises(ConfigError, match="optimizer.*'adagrad'.*adam"):
        ExperimentConfig(optimizer="adagrad")
    with pytest.raises(ConfigError, match="bn_mode.*'sometimes'"):
        ExperimentConfig(bn_mode="sometimes")


def test_missing_weights_file(tmp_path):
    missing = tmp_path / "nope.weights.h5"
    with pytest.raises(ConfigError) as err:
        ExperimentConfig(weights=str(missing))
    message = str(err.value)
    assert "weights" in message and str(missing) in message
    assert "'imagenet'" in message and "None" in message and "path" in message


def test_existing_weights_file_and_imagenet_are_accepted(tmp_path):
    weights = tmp_path / "backbone.weights.h5"
    weights.write_bytes(b"")
    assert ExperimentConfig(weights=str(weights)).weights == str(weights)
    assert ExperimentConfig(backbone="efficientnet_b0", weights="imagenet").weights == "imagenet"


@pytest.mark.parametrize(("name", "value"), [("lr", "abc"), ("lr", [0.1]), ("val_split", "a fifth"), ("backbone", 3)])
def test_wrong_types(name, value):
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_dict({name: value})
    message = str(err.value)
    assert message.startswith(f"{name}={value!r}")
    assert "wrong type" in message


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


# ------------------------------------------------------ frozen, replace, to_dict
def test_frozen():
    config = ExperimentConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 0.1
    assert config.lr == 0.001


def test_replace_returns_validated_copy():
    config = ExperimentConfig()
    changed = config.replace(lr="0.01", epochs="3")
    assert changed.lr == 0.01 and changed.epochs == 3
    assert config.lr == 0.001 and config.epochs == 10
    with pytest.raises(ConfigError, match="lr"):
        config.replace(lr=-1)
    with pytest.raises(ConfigError, match="backbone"):
        config.replace(backbone="nope")


def test_to_dict_is_json_serialisable_and_round_trips():
    config = ExperimentConfig(lr="3e-4", lr_boundaries="3,6", schedule="step", image_size=64)
    data = config.to_dict()
    assert set(data) == set(PARAMETER_NAMES)
    assert data["lr_boundaries"] == [3, 6]
    text = json.dumps(data)
    assert ExperimentConfig.from_dict(json.loads(text)) == config


def test_hashable_and_equal():
    assert ExperimentConfig(lr="1e-3") == ExperimentConfig(lr=0.001)
    assert hash(ExperimentConfig(lr="1e-3")) == hash(ExperimentConfig(lr=0.001))


# ---------------------------------------------------------------------- resolved
@pytest.mark.parametrize(("backbone", "size"), [("simple_cnn", 64), ("xception", 299)])
def test_resolved_image_size_from_backbone(backbone, size):
    resolved = ExperimentConfig(backbone=backbone).resolved()
    assert resolved.image_size == size


def test_resolved_keeps_explicit_image_size():
    assert ExperimentConfig(backbone="xception", image_size=128).resolved().image_size == 128


def test_resolved_results_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CARLIB_RESULTS_DIR", str(tmp_path / "store"))
    assert default_results_dir() == str(tmp_path / "store")
    resolved = ExperimentConfig().resolved()
    assert resolved.results_dir == str((tmp_path / "store").resolve())


def test_default_results_dir_without_environment(monkeypatch):
    monkeypatch.delenv("CARLIB_RESULTS_DIR", raising=False)
    assert default_results_dir() == "results"


def test_resolved_keeps_explicit_dirs_and_makes_them_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    resolved = ExperimentConfig(results_dir="out", data_dir="data").resolved()
    assert resolved.results_dir == str(tmp_path.resolve() / "out")
    assert resolved.data_dir == str(tmp_path.resolve() / "data")


def test_resolved_data_dir_defaults_to_embedded_dataset(monkeypatch, tmp_path):
    monkeypatch.setenv("CARLIB_CACHE", str(tmp_path / "cache"))
    resolved = ExperimentConfig().resolved()
    assert Path(resolved.data_dir).is_relative_to(tmp_path / "cache")
    assert resolved.resolved() == resolved  # idempotent
