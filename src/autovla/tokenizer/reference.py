"""Import the reference code's pickled codebook without trusting it.

Pickle runs whatever callables a file names, so the unpickler here resolves only the few
numpy globals an array needs (array reconstruction and dtypes) and refuses everything else
before it can be called. Object dtypes are refused too (they would unpickle arbitrary
objects inside the array).
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autovla.tokenizer.codebook import Codebook, CodebookError
from autovla.tokenizer.contours import DEFAULT_LENGTH, DEFAULT_WIDTH

MAX_BYTES = 512 * 2**20  # the reference file is ~1.2 MB; refuse absurd inputs early


class UnsafePickleError(CodebookError):
    """The pickle names something other than numpy arrays, dtypes and plain containers."""


def _reconstruct(subtype, shape, dtype):
    if subtype is not np.ndarray:
        raise UnsafePickleError(f"refusing array subtype {subtype!r}")
    return np.ndarray.__new__(np.ndarray, shape, _dtype(dtype))


def _dtype(spec, align=False, copy=False):
    dt = np.dtype(spec, align=align, copy=copy) if not isinstance(spec, np.dtype) else spec
    if dt.hasobject:
        raise UnsafePickleError(f"refusing object dtype {dt!r}")
    return dt


def _scalar(dtype, data=None):
    dt = _dtype(dtype)
    if not isinstance(data, bytes):
        raise UnsafePickleError("refusing a numpy scalar without raw bytes")
    return np.frombuffer(data, dtype=dt, count=1)[0]


def _codecs_encode(text, encoding="utf-8"):
    # protocol-2 pickles store bytes as _codecs.encode(str, "latin1"): harmless, text only
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8"):
        raise UnsafePickleError(f"refusing _codecs.encode with {encoding!r}")
    return text.encode(encoding)


_ALLOWED = {
    ("_codecs", "encode"): _codecs_encode,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load {module}.{name}: only numpy arrays, dtypes and plain "
                "containers are allowed"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing persistent ids")


def safe_unpickle(data: bytes) -> Any:
    """Unpickle bytes allowing only numpy arrays/dtypes/scalars and builtin containers."""
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError:
        raise
    except Exception as e:  # malformed streams raise many types; report them uniformly
        raise CodebookError(f"not a valid pickle of arrays: {type(e).__name__}: {e}") from e
    _check_plain(obj)
    return obj


def _check_plain(obj: Any, depth: int = 0) -> None:
    if depth > 20:
        raise UnsafePickleError("containers nested too deeply")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_plain(k, depth + 1)
            _check_plain(v, depth + 1)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for v in obj:
            _check_plain(v, depth + 1)
    elif isinstance(obj, np.ndarray):
        if type(obj) is not np.ndarray or obj.dtype.hasobject:
            raise UnsafePickleError(f"refusing array of type {type(obj)} / dtype {obj.dtype}")
    elif not isinstance(obj, (str, bytes, int, float, bool, complex, type(None), np.generic)):
        raise UnsafePickleError(f"refusing object of type {type(obj).__name__}")


def load_reference_contours(path: str | os.PathLike, agent: str = "veh") -> np.ndarray:
    """The float32 [K, 6, 4, 2] contours of `agent` from a reference `agent_vocab.pkl`."""
    path = Path(path)
    if not path.is_file():
        raise CodebookError(f"{path}: no such file")
    if path.stat().st_size > MAX_BYTES:
        raise CodebookError(f"{path}: {path.stat().st_size} bytes is too large for a codebook")
    try:
        obj = safe_unpickle(path.read_bytes())
    except CodebookError as e:
        raise type(e)(f"{path}: {e}") from e
    if not isinstance(obj, dict) or not isinstance(obj.get("token_all"), dict):
        raise CodebookError(f"{path}: expected {{'token_all': {{'veh': array, ...}}}}")
    tokens = obj["token_all"]
    if agent not in tokens:
        raise CodebookError(f"{path}: no '{agent}' tokens (found {sorted(map(str, tokens))})")
    arr = tokens[agent]
    if not isinstance(arr, np.ndarray) or arr.ndim != 4 or arr.shape[1:] != (6, 4, 2):
        shape = getattr(arr, "shape", type(arr).__name__)
        raise CodebookError(f"{path}: token_all[{agent!r}] must be [K, 6, 4, 2], got {shape}")
    return np.asarray(arr, dtype=np.float32)


def import_reference(path: str | os.PathLike, agent: str = "veh") -> Codebook:
    """A Codebook from the reference pickle (contour corner order FL, FR, RR, RL, as ours)."""
    contours = load_reference_contours(path, agent)
    meta = {
        "length": DEFAULT_LENGTH,
        "width": DEFAULT_WIDTH,
        "source": "reference",
        "imported_from": Path(path).name,
        "agent": agent,
    }
    return Codebook(torch.from_numpy(contours.copy()), meta)
