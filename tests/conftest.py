"""Shared fixtures: tiny datasets in the competition layout, isolated caches and results stores."""

from __future__ import annotations

import os

import numpy as np

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


# ----------------------------------------------------------------- a model whose answer is known
class Brightness:
    """A tiny Keras model (raw 0–255 RGB in, like every carlib model) whose class is the image's mean brightness.

    Class ``c`` of ``num_classes`` covers the brightness ``c * step`` ± ``step / 2`` (``step = 255 /
    (num_classes - 1)``): the logits ``sharpness * (c * m - step * c² / 2)`` of the mean ``m`` peak at the
    class nearest ``m / step``. Tests paint images of a chosen class (:meth:`paint`) and compute the expected
    class and probabilities without the model or carlib's pipeline (:meth:`oracle`, from PIL's decode), so
    predictions that are shifted by a row, or the same class everywhere, fail.
    """

    def __init__(self, num_classes: int = 10, size: int = 32, sharpness: float = 0.15):
        self.num_classes, self.size, self.sharpness = num_classes, size, sharpness
        self.step = 255.0 / (num_classes - 1)

    def model(self):
        """The Keras model (built fresh: GlobalAveragePooling2D → Dense softmax, weights set by hand)."""
        import keras

        classes = np.arange(self.num_classes, dtype=np.float64)
        kernel = np.repeat(self.sharpness * classes[None, :] / 3.0, 3, axis=0)  # the channel means' average
        bias = -self.sharpness * self.step * classes**2 / 2.0
        inputs = keras.Input((self.size, self.size, 3), name="image")
        mean = keras.layers.GlobalAveragePooling2D(name="mean_rgb")(inputs)
        outputs = keras.layers.Dense(self.num_classes, activation="softmax", name="classifier")(mean)
        model = keras.Model(inputs, outputs, name="brightness")
        model.get_layer("classifier").set_weights([kernel.astype("float32"), bias.astype("float32")])
        return model

    def probabilities(self, brightness) -> np.ndarray:
        """The model's function in numpy, of mean brightness values (N,) → (N, C)."""
        m = np.asarray(brightness, np.float64)[:, None]
        classes = np.arange(self.num_classes)[None, :]
        logits = self.sharpness * (classes * m - self.step * classes**2 / 2.0)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def level(self, cls: int) -> float:
        """The brightness at the centre of class ``cls``."""
        return cls * self.step

    def paint(self, path, cls: int, *, width: int = 96, height: int = 72, seed: int = 0, fmt: str | None = None):
        """Write an image of class ``cls``: its class level, with a little zero-mean texture, as JPEG/PNG/…"""
        from PIL import Image

        rng = np.random.default_rng(seed)
        texture = rng.integers(-12, 13, (height, width, 1)) + rng.integers(-6, 7, (1, 1, 3))
        pixels = np.clip(np.round(self.level(cls) + texture), 0, 255).astype(np.uint8)
        path = os.fspath(path)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        Image.fromarray(pixels).save(path, fmt, **({"quality": 95} if path.lower().endswith((".jpg", ".jpeg")) else {}))
        return path

    def oracle(self, paths) -> tuple[np.ndarray, np.ndarray]:
        """(expected class, expected probabilities) per file, from PIL's decode of the whole image."""
        from PIL import Image, ImageOps

        means = []
        for path in paths:
            with Image.open(path) as image:
                means.append(np.asarray(ImageOps.exif_transpose(image).convert("RGB"), np.float64).mean())
        probabilities = self.probabilities(means)
        return probabilities.argmax(axis=1), probabilities


@pytest.fixture(scope="session")
def brightness():
    """The 10-class brightness model's recipe (see :class:`Brightness`)."""
    return Brightness()
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
