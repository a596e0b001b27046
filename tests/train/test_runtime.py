"""Scale and speed knobs: mixed precision, XLA, distribution strategies, determinism."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import keras
import pytest

import carlib
from carlib.config import ExperimentConfig
from carlib.errors import ConfigError
from carlib.train.runtime import dtype_policy, resolve_runtime


def test_auto_on_a_cpu_is_the_default_strategy_float32_and_keras_jit_auto():
    runtime = resolve_runtime(ExperimentConfig())
    assert (runtime.strategy_name, runtime.replicas, runtime.precision_policy) == ("default", 1, "float32")
    assert runtime.jit_compile == "auto"  # Keras resolves it to off on a CPU (XLA is ~6x slower here)
    assert runtime.describe(32)["global_batch_size"] == 32
    forced = resolve_runtime(ExperimentConfig(mixed_precision="on", jit_compile="off"))
    assert forced.precision_policy == "mixed_float16" and forced.jit_compile is False


@pytest.mark.parametrize("value,expected", [(True, "on"), (False, "off"), ("On", "on"), ("false", "off"),
                                            ("auto", "auto")])
def test_switches_accept_yaml_booleans(value, expected):
    # YAML 1.1 reads a bare `on` / `off` as true / false.
    assert ExperimentConfig(mixed_precision=value).mixed_precision == expected
    assert ExperimentConfig(jit_compile=value).jit_compile == expected


def test_bad_runtime_values_name_the_choices():
    with pytest.raises(ConfigError, match="mirrored"):
        ExperimentConfig(strategy="multi_gpu")
    with pytest.raises(ConfigError, match="auto, off, on"):
        ExperimentConfig(mixed_precision="fp16")


def test_dtype_policy_is_restored_even_after_an_error():
    assert keras.config.dtype_policy().name == "float32"
    with pytest.raises(RuntimeError):
        with dtype_policy("mixed_float16"):
            assert keras.config.dtype_policy().name == "mixed_float16"
            raise RuntimeError("build failed")
    assert keras.config.dtype_policy().name == "float32"


def test_mixed_precision_run_keeps_the_classifier_float32_and_leaks_nothing(fast_config):
    record = carlib.run_experiment(fast_config, mixed_precision="on", epochs=1)
    assert record["status"] == "ok"
    assert record["training"]["precision_policy"] == "mixed_float16"
    assert keras.config.dtype_policy().name == "float32"  # the global policy is back
    model = carlib.load_model(record["checkpoint"]["last"], compile=False)
    assert model.get_layer("classifier").dtype_policy.name == "float32"
    assert model.get_layer("preprocess_unit").dtype_policy.name == "mixed_float16"
    assert model.output.dtype == "float32"
    assert record["training"]["jit_compile"] is False


def _run_python(code: str, timeout: int = 300) -> dict:
    """Run ``code`` in a fresh interpreter (TensorFlow device setup and op determinism are per process)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "NO_ALBUMENTATIONS_UPDATE": "1"}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_mirrored_strategy_over_two_logical_cpu_devices(tiny_data_dir, tmp_path):
    result = _run_python(f"""
        import json, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        # must happen before TensorFlow initialises its devices
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import carlib
        record = carlib.run_experiment(data_dir={str(tiny_data_dir)!r}, results_dir={str(tmp_path)!r},
                                       image_size=32, batch_size=8, epochs=1, strategy="mirrored")
        print(json.dumps({{"status": record["status"], "training": record["training"],
                          "val": record["metrics"]["val_accuracy_best"]}}))
    """)
    assert result["status"] == "ok" and result["val"] is not None
    training = result["training"]
    assert training["strategy"] == "mirrored" and training["replicas"] == 2 and len(training["devices"]) == 2
    assert training["global_batch_size"] == 16  # batch_size per replica × replicas
    table = carlib.load_results(tmp_path)
    assert table["global_batch_size"].tolist() == [16] and table["replicas"].tolist() == [2]


def test_deterministic_mode_repeats_a_run_bit_for_bit(tiny_data_dir, tmp_path):
    # On this CPU same-seed runs already repeat bit for bit without the flag (docs/NOTES.md); the
    # test checks that the mode is really on, that every op of a run has a deterministic kernel
    # (TensorFlow raises otherwise), and that the runs repeat exactly.
    result = _run_python(f"""
        import json, carlib
        from tensorflow.python.framework import config
        from carlib.train import schedules

        seen = []  # whether op determinism is on while the run trains
        original = schedules.LearningRateController.on_epoch_begin
        def spy(self, epoch, logs=None):
            seen.append(config.is_op_determinism_enabled())
            return original(self, epoch, logs)
        schedules.LearningRateController.on_epoch_begin = spy
        params = dict(data_dir={str(tiny_data_dir)!r}, results_dir={str(tmp_path)!r}, image_size=32,
                      batch_size=16, epochs=2, augmentation="medium", deterministic=True, val_split=0.5)
        runs = [carlib.run_experiment(**params) for _ in range(2)]
        print(json.dumps({{"during": seen, "after": config.is_op_determinism_enabled(),
                          "histories": [[[row["loss"], row["val_loss"]] for row in r["history"]] for r in runs]}}))
    """)
    assert result["during"] == [True] * 4 and result["after"] is False  # on for the runs, off afterwards
    first, second = result["histories"]
    assert first == second  # exactly equal, not approximately
