"""What a run leaves to look at and what it prints: history.csv, the PNG, opt-in TensorBoard logs, one line per
epoch, and no TensorFlow start-up lines below TF_CPP_MIN_LOG_LEVEL."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from carlib.base.startup_log import filter_startup_lines
from carlib.config import ExperimentConfig
from carlib.errors import ConfigError

# The lines TensorFlow 2.21 printed on this project's machine while being imported (docs/NOTES.md).
BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
INFO = ("I0000 00:00:1795912965.219784   19068 port.cc:153] oneDNN custom operations are on. You may see slightly "
        "different numerical results due to floating-point round-off errors from different computation orders.\n")
INFO_CUDA = ("I0000 00:00:1795912965.224051   19068 cudart_stub.cc:31] Could not find cuda drivers on your machine, "
             "GPU will not be used.\n")
ERROR = ("E0000 00:00:1795912977.001938   19196 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
         "Failed call to cuInit: UNKNOWN ERROR (303)\n")
PYTHON_WARNING = "/x/y.py:3: UserWarning: something the user must see\n"


@pytest.mark.parametrize("level,kept", [
    (0, BANNER + INFO + INFO_CUDA + ERROR + PYTHON_WARNING),
    (1, BANNER + ERROR + PYTHON_WARNING),  # the banner still introduces a kept line
    (2, BANNER + ERROR + PYTHON_WARNING),
    (3, PYTHON_WARNING),
])
def test_start_up_lines_are_kept_as_tf_cpp_min_log_level_says(level, kept):
    assert filter_startup_lines(BANNER + INFO + INFO_CUDA + ERROR + PYTHON_WARNING, level) == kept


def test_an_import_keeps_everything_but_the_filtered_lines(tmp_path):
    """A module that writes TensorFlow-style lines to file descriptor 2 (as C++ does), a Python warning and text."""
    (tmp_path / "chatty.py").write_text(textwrap.dedent(f"""
        import os, warnings
        os.write(2, {(BANNER + INFO + INFO_CUDA).encode()!r})
        warnings.warn("something the user must see")
        os.write(2, b"plain text on stderr\\n")
    """))
    probe = ("from carlib.base.startup_log import filter_import_output; filter_import_output('chatty'); import chatty; "
             "import sys; print('imported', 'chatty' in sys.modules)")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "1", "PYTHONPATH": str(tmp_path)}
    run = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "imported True\n"
    assert "absl" not in run.stderr and "oneDNN" not in run.stderr and "cuda" not in run.stderr
    assert "UserWarning: something the user must see" in run.stderr and "plain text on stderr" in run.stderr


def test_importing_tensorflow_after_carlib_prints_no_start_up_lines():
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # carlib's default (3) applies
    run = subprocess.run([sys.executable, "-c", "import carlib, tensorflow; print(tensorflow.__version__)"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "absl::InitializeLog" not in run.stderr and "cudart_stub" not in run.stderr, run.stderr


def test_tensorboard_is_opt_in_and_a_run_writes_event_files_beside_history_and_plot(fast_config, capsys):
    from carlib.train.experiment import run_experiment

    assert ExperimentConfig().tensorboard is False
    record = run_experiment(**fast_config, tensorboard="true")  # a string, as papermill -r or the CLI give it
    run_dir = Path(record["run_dir"])
    assert record["config"]["tensorboard"] is True
    assert (run_dir / "history.csv").is_file() and (run_dir / "learning_curves.png").is_file()
    events = sorted(run_dir.glob("tensorboard/*/events.out.tfevents.*"))
    assert {p.parent.name for p in events} == {"train", "validation"}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir / "tensorboard" / "validation"))
    accumulator.Reload()
    assert "epoch_accuracy" in accumulator.Tags()["tensors"]
    assert len(accumulator.Tensors("epoch_accuracy")) == fast_config["epochs"]
    # one line per epoch, and no Keras progress output
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert all(" loss " in line and "val_accuracy " in line and line.endswith(" s)") for line in lines), lines
    assert "Epoch 1/2" not in out and "step" not in out


def test_tensorboard_without_its_package_fails_before_anything_runs(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "tensorboard" else real_find_spec(name, *args))
    with pytest.raises(ConfigError, match=r"pip install tensorboard"):
        ExperimentConfig(tensorboard=True)
    assert ExperimentConfig(tensorboard=False).tensorboard is False
