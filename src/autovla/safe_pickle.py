"""Read pickles from elsewhere without running their code.

Pickle calls whatever a file names, so this unpickler resolves only the numpy functions that
rebuild arrays, dtypes and scalars, each wrapped to check its arguments, and refuses every
other global before it can be called. It reads what numpy writes at every protocol: protocol
2-4 arrays come back through `_reconstruct` + `__setstate__`, protocol 5 arrays (what
OpenScene's logs and most current pickles use) through `numeric._frombuffer`, under the module
names of numpy 1 (`numpy.core`) and numpy 2 (`numpy._core`). Object arrays are refused by
default: rebuilding one unpickles arbitrary objects inside it. After loading, the result is
walked once to check that it holds only plain containers, numbers, strings and arrays.
"""

from __future__ import annotations

import io
import pickle
from typing import IO, Any

import numpy as np


class UnsafePickleError(ValueError):
    """The pickle names something other than numpy arrays, dtypes and plain containers."""


MAX_DEPTH = 64  # containers nested deeper than this are refused (a real log is ~5 deep)
_PLAIN = (str, bytes, bytearray, int, float, bool, complex, type(None), np.generic)


def _dtype(spec: Any, align: bool = False, copy: bool = False) -> np.dtype:
    dt = spec if isinstance(spec, np.dtype) else np.dtype(spec, align=bool(align), copy=bool(copy))
    if dt.hasobject:
        raise UnsafePickleError(f"refusing object dtype {dt!r}")
    return dt


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise UnsafePickleError(f"refusing array subtype {subtype!r}")
    return np.ndarray.__new__(np.ndarray, shape, _dtype(dtype))


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    if not isinstance(buf, (bytes, bytearray, pickle.PickleBuffer)):
        raise UnsafePickleError(f"refusing an array buffer of type {type(buf).__name__}")
    if order not in ("C", "F"):
        raise UnsafePickleError(f"refusing array order {order!r}")
    dt = _dtype(dtype)
    shape = tuple(int(n) for n in shape)
    # a copy: the array must not keep a view of the pickle's read buffer
    return np.frombuffer(buf, dtype=dt).reshape(shape, order=order).copy(order="K")


def _scalar(dtype: Any, data: Any = None) -> np.generic:
    dt = _dtype(dtype)
    if not isinstance(data, bytes):
        raise UnsafePickleError("refusing a numpy scalar without raw bytes")
    return np.frombuffer(data, dtype=dt, count=1)[0]


def _codecs_encode(text: Any, encoding: str = "utf-8") -> bytes:
    # protocol-2 pickles store bytes as _codecs.encode(str, "latin1"): text only
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8"):
        raise UnsafePickleError(f"refusing _codecs.encode with {encoding!r}")
    return text.encode(encoding)


_ALLOWED: dict[tuple[str, str], Any] = {
    ("_codecs", "encode"): _codecs_encode,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("collections", "OrderedDict"): dict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
}
for _core in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_core}.multiarray", "_reconstruct")] = _reconstruct
    _ALLOWED[(f"{_core}.multiarray", "scalar")] = _scalar
    _ALLOWED[(f"{_core}.numeric", "_frombuffer")] = _frombuffer


class _Unpickler(pickle.Unpickler):
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


def load(source: bytes | IO[bytes]) -> Any:
    """Unpickle `source` (bytes or a binary file) allowing only arrays and plain containers.

    Raises UnsafePickleError for anything else and for streams that are not valid pickles.
    """
    f = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        obj = _Unpickler(f).load()
    except UnsafePickleError:
        raise
    except RecursionError:
        raise UnsafePickleError("containers nested too deeply") from None
    except Exception as e:  # malformed streams raise many types; report them as one
        raise UnsafePickleError(f"not a valid pickle of arrays: {type(e).__name__}: {e}") from e
    check_plain(obj)
    return obj


def check_plain(obj: Any) -> None:
    """Raise UnsafePickleError unless `obj` is built from plain containers, numbers, strings
    and numpy arrays (iteratively: a deep structure cannot exhaust the stack)."""
    stack: list[tuple[Any, int]] = [(obj, 0)]
    while stack:
        o, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise UnsafePickleError("containers nested too deeply")
        if isinstance(o, dict):
            stack.extend((x, depth + 1) for kv in o.items() for x in kv)
        elif isinstance(o, (list, tuple, set, frozenset)):
            stack.extend((x, depth + 1) for x in o)
        elif isinstance(o, np.ndarray):
            if type(o) is not np.ndarray or o.dtype.hasobject:
                raise UnsafePickleError(f"refusing array of type {type(o)} / dtype {o.dtype}")
        elif isinstance(o, np.dtype):
            if o.hasobject:
                raise UnsafePickleError(f"refusing object dtype {o!r}")
        elif not isinstance(o, _PLAIN):
            raise UnsafePickleError(f"refusing object of type {type(o).__name__}")
