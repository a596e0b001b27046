"""Shared fixtures: tiny datasets in the competition layout, isolated caches and results stores."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# Ray instances of the tests (and of the sweeps they start) listen on the loopback address only: Ray's switch for
# single-machine use (its default on macOS and Windows), read when ray is imported and inherited by subprocesses.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import pytest  # noqa: E402

from carlib.data.synthetic import generate_car_dataset  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Tests never read or write the user's ~/.cache/carlib or ./results."""
    monkeypatch.setenv("CARLIB_CACHE", str(tmp_path_factory.getbasetemp() / "carlib-cache"))
    monkeypatch.setenv("CARLIB_RESULTS_DIR", str(tmp_path_factory.getbasetemp() / "default-results"))


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    """A 10-class dataset of 80 train + 20 test images in the competition's layout (archives and CSVs)."""
    return generate_car_dataset(tmp_path_factory.mktemp("tiny") / "data", n_train=80, n_test=20, seed=1)


@pytest.fixture
def results_dir(tmp_path):
    """An empty results store."""
    return tmp_path / "results"


@pytest.fixture
def fast_config(tiny_data_dir, results_dir):
    """Parameters of a run that takes a few seconds on a CPU."""
    return dict(data_dir=str(tiny_data_dir), backbone="simple_cnn", image_size=32, batch_size=16, epochs=2,
                augmentation="light", val_split=0.25, results_dir=str(results_dir))


@pytest.fixture(scope="session")
def ray_instance():
    """One local Ray instance for the whole test run: 2 CPUs and 2 declared GPUs (Ray schedules by them and sets
    CUDA_VISIBLE_DEVICES, no hardware needed), on the loopback address (see above); shut down when the run ends."""
    ray = pytest.importorskip("ray", reason="the Ray tests need the ray extra: pip install -e '.[dev,ray]'")
    import logging

    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR, _system_config={"worker_niceness": 0})  # as a sweep's own instance
    yield ray
    ray.shutdown()
