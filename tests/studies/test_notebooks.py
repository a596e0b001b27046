"""Notebooks under papermill: parameters arrive as numbers or strings; concurrent runs both land."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from carlib.records.store import load_results
from carlib.studies.sweep import KERNEL_START_TIMEOUT_S

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def _papermill(notebook: Path, out: Path, *params: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "papermill", str(notebook), str(out), "-k", "python3", "--log-level", "ERROR",
               "--start-timeout", str(KERNEL_START_TIMEOUT_S), *params]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_concurrent_papermill_runs_add_two_intact_rows_with_numeric_lr(tiny_data_dir, tmp_path):
    results = tmp_path / "results"
    common = ["-p", "data_dir", str(tiny_data_dir), "-p", "results_dir", str(results), "-p", "epochs", "1",
              "-p", "image_size", "32"]
    # -p parses 1e-3 as a float; -r passes the raw string "1e-3": both must record lr == 0.001.
    runs = [_papermill(NOTEBOOKS / "lr_study.ipynb", tmp_path / "a.ipynb", "-p", "lr", "1e-3", *common),
            _papermill(NOTEBOOKS / "lr_study.ipynb", tmp_path / "b.ipynb", "-r", "lr", "1e-3", *common)]
    for run in runs:
        output, _ = run.communicate(timeout=600)
        assert run.returncode == 0, output
    table = load_results(results)
    assert len(table) == 2
    assert list(table["status"]) == ["ok", "ok"]
    assert table["lr"].tolist() == [0.001, 0.001] and table["lr"].dtype.kind == "f"
    assert table["val_accuracy_best"].notna().all()


def test_a_misspelt_papermill_parameter_fails_loudly(tmp_path):
    run = _papermill(NOTEBOOKS / "lr_study.ipynb", tmp_path / "typo.ipynb", "-p", "learning_rate", "0.1",
                     "-p", "results_dir", str(tmp_path / "results"))
    output, _ = run.communicate(timeout=300)
    assert run.returncode != 0
    assert "unknown parameter 'learning_rate'" in output and "Did you mean 'lr'" in output
    assert not (tmp_path / "results" / "records").exists()


PARAMS = Path(__file__).resolve().parents[2] / "params"
PRESETS = sorted(p for p in PARAMS.glob("*/*.yaml") if not p.name.startswith("sweep-"))
SWEEPS = sorted(PARAMS.glob("*/sweep-*.yaml"))


@pytest.mark.parametrize("sweep", SWEEPS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_sweep_is_valid(sweep):
    from carlib.studies.specs import get_study
    from carlib.studies.sweep import expand_trials, load_sweep

    spec = load_sweep(sweep)
    get_study(spec.study)
    scientific = get_study(spec.study).scientific
    assert set(spec.grid) <= set(scientific), "a sweep's grid holds scientific parameters"
    labels = {tuple(str(arm.get(name, spec.base.get(name))) for name in scientific) for arm in spec.arms}
    assert len(labels) == len(spec.arms), "each arm differs from the others in a scientific parameter"
    if sweep.name == "sweep-quick.yaml":  # the demo's: two arms, 2 or 3 seeds, the embedded data
        (values,) = spec.grid.values()
        assert len(values) == 2 and spec.seeds in (2, 3) and "data_dir" not in spec.base
        assert len(expand_trials(spec)) == 2 * spec.seeds


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_preset_names_only_known_parameters(preset):
    from carlib.config import ExperimentConfig
    from carlib.studies.parameters import load_params_file

    params = load_params_file(preset)
    params.pop("seeds", None)
    data_dir = params.pop("data_dir", None)
    weights = params.pop("weights", "auto")
    assert weights in (None, "imagenet", "auto")
    assert data_dir is None or isinstance(data_dir, str)
    ExperimentConfig.from_dict(params, weights=weights)  # fine-tuning presets are valid only with weights


NOTEBOOK_PRESETS = [(p.parent.name, p) for p in PRESETS if (NOTEBOOKS / f"{p.parent.name}.ipynb").is_file()
                    and p.name == "quick.yaml"]


@pytest.mark.parametrize("study,preset", NOTEBOOK_PRESETS, ids=lambda v: getattr(v, "name", v))
def test_each_notebook_runs_with_its_quick_preset(study, preset, tiny_data_dir, tmp_path):
    """papermill -f params/<study>/quick.yaml, shrunk to seconds: the preset and the notebook fit together."""
    results = tmp_path / "results"
    run = _papermill(NOTEBOOKS / f"{study}.ipynb", tmp_path / "out.ipynb", "-f", str(preset),
                     "-p", "data_dir", str(tiny_data_dir), "-p", "results_dir", str(results),
                     "-p", "epochs", "1", "-p", "image_size", "32", "-p", "seeds", "1")
    output, _ = run.communicate(timeout=600)
    assert run.returncode == 0, output[-3000:]
    table = load_results(results)
    assert list(table["study"]) == [study] and list(table["status"]) == ["ok"]


def test_a_notebook_executes_top_to_bottom_with_nbconvert_quietly(tmp_path):
    """jupyter nbconvert --execute runs a notebook as committed (its default parameters, the embedded data) and its
    outputs stay readable: the setup cell does nothing, one line per epoch, no TensorFlow start-up lines."""
    pytest.importorskip("nbconvert")
    # Without TF_CPP_MIN_LOG_LEVEL in the environment: `import carlib` must provide the quiet default itself.
    # Without PYTEST_CURRENT_TEST: ipykernel would not copy C++ output (file descriptor 2) into the notebook then.
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTEST_CURRENT_TEST")}
    env["CARLIB_RESULTS_DIR"] = str(tmp_path / "results")
    run = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                          str(NOTEBOOKS / "augmentation_study.ipynb"), "--output-dir", str(tmp_path / "out"),
                          "--ExecutePreprocessor.timeout=600"], env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    cells = json.loads((tmp_path / "out" / "augmentation_study.ipynb").read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert code[0]["id"] == "colab-setup" and code[0]["outputs"] == []  # carlib is importable here: a no-op
    streams = [(o["name"], "".join(o["text"])) for c in code for o in c["outputs"] if o["output_type"] == "stream"]
    stderr = "".join(text for name, text in streams if name == "stderr")
    assert "absl::InitializeLog" not in stderr and not re.search(r"^[IWE]\d{4} ", stderr, re.M), stderr
    stdout = "".join(text for name, text in streams if name == "stdout")
    assert "\r" not in stdout and "\x08" not in stdout and "━" not in stdout  # no progress bars
    epochs = re.findall(r"^epoch (\d+)/4: .*val_accuracy [\d.]+.* \([\d.]+ s\)$", stdout, re.M)
    assert epochs == ["1", "2", "3", "4"], stdout
    assert "Epoch 1/4" not in stdout  # Keras' own per-epoch header is not printed as well
    assert any("image/png" in o.get("data", {}) for c in code for o in c["outputs"])  # the plots are there
    assert len(load_results(tmp_path / "results")) == 1
