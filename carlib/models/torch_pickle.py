"""Read a legacy (pre-1.6, not zip) PyTorch state dict without torch, refusing anything but tensors.

A ``.pth`` file is a pickle, and unpickling runs whatever callables the file names: a crafted file
that names ``os.system`` runs a shell command on load. :func:`read_torch_state_dict` unpickles with
an allow-list: the tensor storages, ``torch._utils._rebuild_tensor_v2`` and ``collections.OrderedDict``.
Any other global raises :class:`~carlib.errors.UnsafeWeightsFileError` when the unpickler meets its
name, before it could be called. The callables it returns are carlib's own, which only record their
arguments; tensors are built afterwards from the raw storages with numpy, honouring their offsets and
strides (torch saves some weights non-contiguously: reading them flat scrambles them).

The legacy layout: five pickles in a row (magic number, protocol version, system info, the object
with storages as persistent ids, the list of storage keys), then each storage's raw bytes, each
preceded by its element count as a little-endian int64.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np

from carlib.errors import UnsafeWeightsFileError, WeightsError

__all__ = ["read_torch_state_dict", "ALLOWED_GLOBALS"]

_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_PROTOCOL_VERSION = 1001

# torch storage class → numpy dtype of its elements.
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


@dataclasses.dataclass(frozen=True)
class _StorageType:
    """Stands for a ``torch.<X>Storage`` class named in the pickle."""

    name: str

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(_STORAGE_DTYPES[self.name])


@dataclasses.dataclass
class _Storage:
    """A storage the pickle refers to by key; its bytes follow the pickles and are read afterwards."""

    key: str
    dtype: np.dtype
    size: int
    data: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class _TensorRecipe:
    """What ``_rebuild_tensor_v2(storage, offset, size, stride, ...)`` was called with."""

    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, *rest):
    if not isinstance(storage, _Storage):
        raise WeightsError("a tensor in the weights file does not refer to a storage; the file is not a state dict.")
    return _TensorRecipe(storage, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


# (module, name) → what the unpickler returns for it; nothing else may be named in the file.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _AllowListUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS` and collects the storages it sees."""

    def __init__(self, handle, source: str, storages: dict[str, _Storage]):
        super().__init__(handle)
        self._source = source
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeWeightsFileError(
                f"weights file {self._source!r} names {module}.{name}, which a state dict of tensors never needs: "
                "refused before anything in it ran (a .pth file is a pickle, and pickles can run code). Use a "
                "file from a source you trust."
            ) from None

    def persistent_load(self, saved_id: Any) -> Any:
        if not (isinstance(saved_id, tuple) and saved_id and saved_id[0] == "storage" and len(saved_id) == 6):
            raise WeightsError(f"weights file {self._source!r} holds a persistent object {saved_id!r:.80} that is "
                               "not a tensor storage; carlib reads only legacy PyTorch state dicts.")
        _, storage_type, key, _location, size, view_metadata = saved_id
        if not isinstance(storage_type, _StorageType):
            raise WeightsError(f"weights file {self._source!r}: storage {key!r} has no storage type.")
        if view_metadata is not None:
            raise WeightsError(f"weights file {self._source!r}: storage views are not supported (storage {key!r}).")
        if key not in self._storages:
            self._storages[key] = _Storage(str(key), storage_type.dtype, int(size))
        return self._storages[key]


def read_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a legacy PyTorch state dict as numpy arrays (C-contiguous copies), by name, in file order.

    Raises :class:`~carlib.errors.UnsafeWeightsFileError` for a file naming any global outside
    :data:`ALLOWED_GLOBALS` (checked before anything named is called), and
    :class:`~carlib.errors.WeightsError` for a missing, truncated or otherwise unreadable file.
    """
    path = Path(path)
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise WeightsError(f"weights file {source!r} cannot be read: {err.strerror or err}.") from None
    handle = io.BytesIO(raw)
    storages: dict[str, _Storage] = {}

    def load() -> Any:
        return _AllowListUnpickler(handle, source, storages).load()

    try:
        if load() != _MAGIC_NUMBER:
            raise WeightsError(f"weights file {source!r} is not a legacy PyTorch file (wrong magic number); "
                               "zip-format .pth files (PyTorch >= 1.6) are not supported.")
        if load() != _PROTOCOL_VERSION:
            raise WeightsError(f"weights file {source!r} has an unknown PyTorch protocol version.")
        system_info = load()
        if not isinstance(system_info, dict) or not system_info.get("little_endian", False):
            raise WeightsError(f"weights file {source!r} was written on a big-endian machine; not supported.")
        state = load()
        keys = load()
        for key in keys:
            storage = storages[key]
            (count,) = struct.unpack("<q", handle.read(8))
            nbytes = count * storage.dtype.itemsize
            data = handle.read(nbytes)
            if count != storage.size or len(data) != nbytes:
                raise WeightsError(f"weights file {source!r} is truncated or corrupt (storage {key!r}).")
            storage.data = np.frombuffer(data, dtype=storage.dtype)
    except (UnsafeWeightsFileError, WeightsError):
        raise
    except (pickle.UnpicklingError, EOFError, struct.error, KeyError, ValueError, TypeError, IndexError,
            AttributeError, MemoryError) as err:
        raise WeightsError(f"weights file {source!r} is truncated or corrupt: {type(err).__name__}: {err}"[:400]
                           + ". Reinstall the package that ships it (or delete the file and add it again).") from None
    if not isinstance(state, dict):
        raise WeightsError(f"weights file {source!r} holds a {type(state).__name__}, not a state dict of tensors.")
    return {str(name): _materialise(name, recipe, source) for name, recipe in state.items()}


def _materialise(name: str, recipe: Any, source: str) -> np.ndarray:
    """A C-contiguous array for one tensor: its storage viewed with the tensor's offset, shape and strides."""
    if not isinstance(recipe, _TensorRecipe):
        raise WeightsError(f"weights file {source!r}: entry {name!r} is not a tensor.")
    storage = recipe.storage
    if storage.data is None:
        raise WeightsError(f"weights file {source!r}: the data of tensor {name!r} is missing.")
    if recipe.shape and any(s < 0 for s in recipe.stride):
        raise WeightsError(f"weights file {source!r}: tensor {name!r} has negative strides.")
    last = recipe.offset + sum((n - 1) * s for n, s in zip(recipe.shape, recipe.stride) if n > 0)
    if recipe.offset < 0 or (all(n > 0 for n in recipe.shape) and last >= storage.size):
        raise WeightsError(f"weights file {source!r}: tensor {name!r} reaches past the end of its storage.")
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(storage.data[recipe.offset:], shape=recipe.shape,
                                           strides=tuple(s * itemsize for s in recipe.stride), writeable=False)
    return np.ascontiguousarray(view)
