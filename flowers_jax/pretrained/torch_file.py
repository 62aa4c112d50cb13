"""Reads PyTorch's legacy (pre-zip) `.pth` serialisation into NumPy, without torch.

Written by hand because no maintained library reads this format without
importing torch, and torch (GBs) should not be a dependency to load 19 MB of
weights. The reader is a restricted unpickler: it rebuilds only ordered dicts
and tensors, and refuses any other global, so a `.pth` cannot run code here.

Legacy layout: five pickles back to back -- magic number, protocol version,
system info, the object (tensors refer to storages by key), the list of storage
keys -- then, for each key in that order, an int64 element count and the raw
little-endian bytes of the storage.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pickle
import zipfile
from typing import IO, Any

import numpy as np

_MAGIC = 0x1950A86A20F9469CFC6C
_PROTOCOL = 1001

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


class TorchFileError(ValueError):
    """A `.pth` file this reader cannot or will not read."""


@dataclasses.dataclass
class _Storage:
    dtype: Any
    numel: int
    data: np.ndarray | None = None


@dataclasses.dataclass
class _LazyTensor:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def materialise(self) -> np.ndarray:
        flat = self.storage.data
        item = flat.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :], shape=self.size, strides=tuple(s * item for s in self.stride)
        )
        return np.array(view)  # copy: detach from the storage buffer


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, *_):
    del requires_grad, backward_hooks
    return _LazyTensor(storage, storage_offset, tuple(size), tuple(stride))


class _StorageType:
    def __init__(self, name: str):
        self.name = name


class _Unpickler(pickle.Unpickler):
    def __init__(self, f: IO[bytes], path: str, storages: dict[str, _Storage]):
        super().__init__(f)
        self._path = path
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise TorchFileError(
            f"{self._path}: refusing to unpickle {module}.{name}; only tensors and "
            "dicts of tensors (a state_dict) can be read without torch"
        )

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise TorchFileError(f"{self._path}: unsupported persistent id {pid!r:.80}")
        storage_type, key, _location, numel = pid[1:5]
        if key not in self._storages:
            self._storages[key] = _Storage(_STORAGE_DTYPES[storage_type.name], int(numel))
        return self._storages[key]


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a legacy-format PyTorch state dict.

    Args:
      path: a `.pth` file written by `torch.save` with
        `_use_new_zipfile_serialization=False` (or by torch < 1.6).
    Returns:
      {name: array} in file order, e.g. "_conv_stem.weight" -> float32 [32, 3, 3, 3].
    Raises:
      TorchFileError: zip-format file, truncated file, or a pickle holding
        anything but tensors.
    """
    path = os.fspath(path)
    if zipfile.is_zipfile(path):
        raise TorchFileError(
            f"{path}: zip-format torch checkpoint; this reader takes the legacy format only. "
            "Re-save it with torch.save(sd, f, _use_new_zipfile_serialization=False)."
        )
    storages: dict[str, _Storage] = {}
    with open(path, "rb") as f:
        try:
            if pickle.load(f) != _MAGIC or pickle.load(f) != _PROTOCOL:
                raise TorchFileError(f"{path}: not a legacy PyTorch file (bad magic number/protocol)")
            pickle.load(f)  # system info (endianness, type sizes)
            obj = _Unpickler(f, path, storages).load()
            keys = pickle.load(f)
            for key in keys:
                storage = storages[key]
                numel = int(np.frombuffer(f.read(8), "<i8")[0])
                nbytes = numel * np.dtype(storage.dtype).itemsize
                raw = f.read(nbytes)
                if numel != storage.numel or len(raw) != nbytes:
                    raise TorchFileError(f"{path}: storage {key} is truncated or corrupt")
                storage.data = np.frombuffer(raw, storage.dtype)
        except (EOFError, pickle.UnpicklingError, IndexError) as e:
            raise TorchFileError(f"{path}: truncated or corrupt torch file ({e})") from e
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, _LazyTensor) for v in obj.values()):
        raise TorchFileError(f"{path}: expected a state_dict (a dict of tensors)")
    return {k: v.materialise() for k, v in obj.items()}
