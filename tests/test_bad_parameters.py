"""Bad parameters fail before any data is touched, with the same message through every entry point (issue 7).

Python API, YAML parameter files (loaded safely), the CLI and papermill's ``-p``/``-f``/``-y``
all end in :class:`carlib.ExperimentConfig`; the messages are asserted word for word.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import carlib
from carlib.cli import main
from carlib.config import ExperimentConfig
from carlib.errors import ConfigError
from carlib.studies.parameters import load_params_file
from carlib.studies.sweep import KERNEL_START_TIMEOUT_S

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "lr_study.ipynb"

# (parameters, the exact message); each names the parameter, the value and what is allowed.
MESSAGES = [
    ({"lr": -1}, "lr=-1.0 is out of range: expected a positive number, e.g. 1e-3."),
    ({"val_split": 1}, "val_split=1.0 is out of range: expected a fraction in [0, 1); 0 trains on everything "
                       "without validation."),
    ({"image_size": 0}, "image_size=0 is out of range: expected an integer >= 16 (pixels), or None for the "
                        "backbone's default."),
    ({"lr": "abc"}, "lr='abc' has the wrong type: expected a number."),
    ({"epochs": "2.5"}, "epochs='2.5' has the wrong type: expected an integer."),
    ({"schedule": "exponential"}, "unknown schedule 'exponential'. Known: constant, cosine, plateau, step."),
    ({"backbone": "xceptoin"}, "unknown backbone 'xceptoin'. Did you mean 'xception'? Known: cnn_small, "
                               "convnext_tiny, efficientnet_b0, efficientnet_b3, efficientnet_lite0, efficientnet_lite1, "
                               "efficientnet_lite2, efficientnet_v2_b0, "
                               "efficientnet_v2_s, mobilenet_v3_small, resnet_small, resnet_tiny, simple_cnn, "
                               "xception; a SavedModel as hub:<URL or folder>; or register your own with "
                               "carlib.register_backbone(carlib.BackboneSpec(...))."),
    ({"augmentation": "extreme"}, "unknown augmentation 'extreme'. Known: heavy, light, medium, none; or the path of "
                                  "a .json/.yaml pipeline saved with albumentations.save, or such a pipeline inline "
                                  "(albumentations.to_dict(...) as a mapping or JSON text); add your own with "
                                  "carlib.register_preset(name, builder)."),
]
UNKNOWN_LR = "unknown parameter 'learning_rate'. Did you mean 'lr'? Known parameters: "


@pytest.mark.parametrize(("params", "message"), MESSAGES, ids=lambda v: str(v)[:30])
def test_python_api_message(params, message, tmp_path):
    with pytest.raises(ConfigError) as err:
        carlib.run_experiment(params, data_dir=str(tmp_path / "not-read"), results_dir=str(tmp_path / "results"))
    assert str(err.value) == message
    assert not (tmp_path / "results").exists()


def test_unknown_name_lists_the_closest_and_every_valid_name():
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_dict({"learning_rate": 3e-3})
    assert str(err.value) == UNKNOWN_LR + ", ".join(sorted(carlib.PARAMETER_NAMES)) + "."


@pytest.mark.parametrize(("params", "message"), MESSAGES[:3], ids=["lr", "val_split", "image_size"])
def test_yaml_file_and_cli_give_the_same_message(params, message, tmp_path, capsys, monkeypatch):
    import carlib.train.experiment

    monkeypatch.setattr(carlib.train.experiment, "run_experiment", lambda config: pytest.fail("training started"))
    (name, value), = params.items()
    preset = tmp_path / "params.yaml"
    preset.write_text(f"{name}: {value}\nepochs: 1\n")
    assert main(["run", "--params", str(preset)]) == 2
    assert capsys.readouterr().err == f"carlib: error: {message}\n"
    assert main(["run", f"--{name.replace('_', '-')}", str(value)]) == 2
    assert capsys.readouterr().err == f"carlib: error: {message}\n"


def test_yaml_is_loaded_safely(tmp_path, capsys):
    marker = tmp_path / "pwned"
    preset = tmp_path / "evil.yaml"
    preset.write_text(f"lr: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match=f"parameter file {str(preset)!r} is not valid YAML"):
        load_params_file(preset)
    assert main(["run", "--params", str(preset)]) == 2
    assert not marker.exists()


def _papermill(out: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "papermill", str(NOTEBOOK), str(out), "-k", "python3",
                             "--start-timeout", str(KERNEL_START_TIMEOUT_S),
                             "--log-level", "ERROR", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_papermill_file_and_yaml_parameters_fail_with_the_message(tmp_path):
    # (-p with a misspelt name: tests/test_notebooks.py::test_a_misspelt_papermill_parameter_fails_loudly)
    results = tmp_path / "results"
    preset = tmp_path / "bad.yaml"
    preset.write_text(f"lr: -1\nresults_dir: {results}\ndata_dir: {tmp_path / 'never-read'}\n")
    runs = {
        MESSAGES[0][1]: _papermill(tmp_path / "f.ipynb", "-f", str(preset)),
        MESSAGES[1][1]: _papermill(tmp_path / "y.ipynb", "-y", f"{{val_split: 1, results_dir: '{results}'}}"),
    }
    for message, run in runs.items():
        output, _ = run.communicate(timeout=300)
        assert run.returncode != 0
        assert message in output.replace("\n", " "), output[-3000:]
    assert not results.exists()  # nothing ran, nothing was recorded
