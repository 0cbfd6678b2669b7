"""Read pickles from elsewhere without running their code.

Pickle calls whatever a file names, so this unpickler resolves only the numpy functions that
rebuild arrays, dtypes and scalars, each wrapped to check its arguments, and refuses every
other global before it can be called. It reads what numpy writes at every protocol: protocol
2-4 arrays come back through `_reconstruct` + BUILD, protocol 5 arrays (what OpenScene's logs
and most current pickles use) through `numeric._frombuffer`, under the module names of numpy 1
(`numpy.core`) and numpy 2 (`numpy._core`). Object arrays are refused: rebuilding one
unpickles arbitrary objects inside it.

BUILD (pickle's "call `__setstate__`") is the dangerous opcode: numpy's `__setstate__` on a
dtype or array that is already in use rewrites its item size, flags or buffer under whoever
holds it (out-of-bounds reads, use-after-free). So no numpy `__setstate__` ever runs here. The
unpickler is pickle's pure-Python one, whose opcodes can be overridden: `dtype(...)` and
`_reconstruct(...)` give inert placeholders, and BUILD on a placeholder (once, and only on
one) makes a fresh dtype with numpy's constructor from a checked spec (its state must equal
the pickle's) or a fresh array from raw bytes of exactly the right length, then puts it where
the placeholder was (stack and memo). `numpy.ndarray` itself is a marker only `_reconstruct`
accepts, so no array can be built as a view of another. Array bytes are counted against a
budget per load (`max_bytes`). After loading, the result is walked once to check that it
holds only plain containers, numbers, strings and arrays, is not cyclic and not too deep.
"""

from __future__ import annotations

import io
import math
import pickle
import re
import reprlib
from struct import unpack
from typing import IO, Any, ClassVar

import numpy as np


class UnsafePickleError(ValueError):
    """The pickle names something other than numpy arrays, dtypes and plain containers."""


MAX_DEPTH = 64  # containers nested deeper than this are refused (a real log is ~5 deep)
MAX_BYTES = 2 * 2**30  # array bytes per load (an OpenScene log holds tens of MB)
MAX_DIMS = 64  # numpy 2's limit
_PLAIN = (str, bytes, bytearray, int, float, bool, complex, type(None), np.generic)
_SPEC = re.compile(r"[A-Za-z][0-9]{0,10}")  # what numpy writes as a dtype's spec: f8, U7, V6
_ALIGNED_STRUCT = 0x80  # dtype flag: a struct laid out with align=True


_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 80


def _short(x: Any) -> str:
    """A bounded repr for messages: a hostile state can be huge or deeply nested."""
    return _repr.repr(x)


class _NdarrayMarker:
    """What `numpy.ndarray` resolves to: a name `_reconstruct` checks for, never callable."""

    def __call__(self, *args: Any, **kw: Any) -> Any:
        raise UnsafePickleError(
            "refusing to call numpy.ndarray (arrays come only from their raw bytes)"
        )

    def __repr__(self) -> str:
        return "numpy.ndarray"


_NDARRAY = _NdarrayMarker()


class _Pending:
    """A dtype or array named by the pickle, not yet built: BUILD makes the real one."""

    __slots__ = ("built", "memo_keys", "spec")

    def __init__(self, spec: str | None = None):
        self.spec = spec  # a dtype's spec string; None for an array
        self.memo_keys: list[Any] = []
        self.built = False

    def __repr__(self) -> str:
        return "unbuilt numpy dtype" if self.spec is not None else "unbuilt numpy array"


class _Memo(dict):
    """Pickle's memo, remembering where placeholders were stored so BUILD can replace them."""

    def __setitem__(self, key: Any, value: Any) -> None:
        if type(value) is _Pending:
            value.memo_keys.append(key)
        super().__setitem__(key, value)


def _check_dtype(dt: Any) -> np.dtype:
    if not isinstance(dt, np.dtype):
        raise UnsafePickleError(f"expected a numpy dtype, got {_short(dt)}")
    if dt.hasobject:
        raise UnsafePickleError(f"refusing object dtype {_short(dt)}")
    return dt


def _shape(shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, tuple) or len(shape) > MAX_DIMS:
        raise UnsafePickleError(f"refusing array shape {_short(shape)}")
    if not all(type(n) is int and n >= 0 for n in shape):
        raise UnsafePickleError(f"refusing array shape {_short(shape)}")
    return shape


def _dtype_from_state(spec: str, state: Any) -> np.dtype:
    """A fresh dtype made by numpy's constructor from `spec` and a pickled state (numpy's
    version 3, or 4 for datetimes), refused unless its own state equals the pickled one."""
    if not isinstance(state, tuple) or len(state) not in (8, 9) or state[0] not in (3, 4):
        raise UnsafePickleError(f"refusing dtype state {_short(state)}")
    version, order, sub, names, fields, elsize, _alignment, flags = state[:8]
    if order not in ("<", ">", "|", "=") or type(flags) is not int:
        raise UnsafePickleError(f"refusing dtype state {_short(state)}")
    if names is not None:
        if not (isinstance(names, tuple) and isinstance(fields, dict) and type(elsize) is int):
            raise UnsafePickleError(f"refusing struct dtype state {_short(state)}")
        formats, offsets, titles = [], [], []
        for n in names:
            f = fields.get(n) if isinstance(n, str) else None
            if not (isinstance(f, tuple) and len(f) in (2, 3) and type(f[1]) is int):
                raise UnsafePickleError(f"refusing struct dtype field {_short(n)}: {_short(f)}")
            formats.append(_check_dtype(f[0]))
            offsets.append(f[1])
            titles.append(f[2] if len(f) == 3 else None)
        spec_: Any = {"names": list(names), "formats": formats, "offsets": offsets,
                      "titles": titles, "itemsize": elsize}  # fmt: skip
        dt = np.dtype(spec_, align=bool(flags & _ALIGNED_STRUCT))
    elif sub is not None:
        if not (isinstance(sub, tuple) and len(sub) == 2):
            raise UnsafePickleError(f"refusing subarray dtype state {_short(state)}")
        dt = np.dtype((_check_dtype(sub[0]), _shape(sub[1])))
    else:
        dt = np.dtype(spec)
        if version == 4:  # datetime64 / timedelta64: (metadata, (unit, num, den, events))
            meta = state[8] if len(state) == 9 else None
            # numpy 1 writes an empty metadata dict where numpy 2 writes None
            if not (isinstance(meta, tuple) and len(meta) == 2 and meta[0] in (None, {})):
                raise UnsafePickleError(f"refusing dtype metadata {_short(meta)}")
            unit, num = meta[1][:2] if isinstance(meta[1], tuple) else (None, None)
            if not (isinstance(unit, bytes) and unit.isalpha() and type(num) is int):
                raise UnsafePickleError(f"refusing datetime dtype metadata {_short(meta)}")
            dt = np.dtype(f"{spec}[{num}{unit.decode('ascii')}]")
        if order in "<>" and dt.byteorder != "|":
            dt = dt.newbyteorder(order)
    _check_dtype(dt)
    own = dt.__reduce__()[2]
    # the flags numpy derives itself (they may differ between numpy versions); the rest must
    # match so that the dtype is the one the pickle describes
    same_meta = len(own) == len(state) and (len(own) == 8 or own[8][1] == state[8][1])
    if own[:7] != state[:7] or not same_meta or (own[7] ^ flags) & _ALIGNED_STRUCT:
        raise UnsafePickleError(
            f"refusing dtype state {_short(state)}: numpy makes {own!r} for {_short(dt)}"
        )
    return dt


class _Unpickler(pickle._Unpickler):
    """Pickle's pure-Python unpickler with BUILD replaced and globals restricted."""

    dispatch: ClassVar[dict[int, Any]] = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: IO[bytes], size: int, max_bytes: int):
        super().__init__(file)
        self.memo = _Memo()
        self.size = size  # of the whole input: no single object can be larger
        self.budget = max_bytes
        self.allowed: dict[tuple[str, str], Any] = {
            ("_codecs", "encode"): _codecs_encode,
            ("numpy", "ndarray"): _NDARRAY,
            ("numpy", "dtype"): _new_dtype,
            ("collections", "OrderedDict"): dict,
            ("builtins", "set"): set,
            ("builtins", "frozenset"): frozenset,
            ("builtins", "complex"): complex,
            ("builtins", "bytes"): _empty_bytes,
            ("builtins", "bytearray"): _bytearray,
        }
        for (module, name), fn in list(self.allowed.items()):
            if module == "builtins":  # protocol 2 writes Python 2's name
                self.allowed[("__builtin__", name)] = fn
        for core in ("numpy.core", "numpy._core"):
            self.allowed[(f"{core}.multiarray", "_reconstruct")] = _reconstruct
            self.allowed[(f"{core}.multiarray", "scalar")] = self._scalar
            self.allowed[(f"{core}.numeric", "_frombuffer")] = self._frombuffer

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load {module}.{name}: only numpy arrays, dtypes and plain "
                "containers are allowed"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing persistent ids")

    # -- array bytes --
    def _spend(self, dt: np.dtype, shape: tuple[int, ...], have: int) -> int:
        """Check that `have` raw bytes fill an array of `shape` x `dt` exactly and count them
        (elements count too: items of size 0 still cost time) against the budget."""
        n = math.prod(shape)
        nbytes = n * dt.itemsize
        if have != nbytes:
            raise UnsafePickleError(
                f"array of shape {shape} and dtype {dt} needs {nbytes} bytes, got {have}"
            )
        self.budget -= max(nbytes, n)
        if self.budget < 0:
            raise UnsafePickleError(f"arrays larger than the limit of this load ({shape} x {dt})")
        return n

    def _frombuffer(self, buf: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
        if not isinstance(buf, (bytes, bytearray)):
            raise UnsafePickleError(f"refusing an array buffer of type {type(buf).__name__}")
        if order not in ("C", "F"):
            raise UnsafePickleError(f"refusing array order {_short(order)}")
        return self._array(_check_dtype(dtype), _shape(shape), buf, order)

    def _array(self, dt: np.dtype, shape: tuple[int, ...], raw: Any, order: str) -> np.ndarray:
        n = self._spend(dt, shape, len(raw))
        if n == 0 or dt.itemsize == 0:
            return np.zeros(shape, dtype=dt, order=order)  # (numpy widens size-0 items)
        # over a private copy of the bytes (shared with nothing, every byte set, padding too)
        return np.frombuffer(bytearray(raw), dtype=dt, count=n).reshape(shape, order=order)

    def _scalar(self, dtype: Any, data: Any = None) -> np.generic:
        dt = _check_dtype(dtype)
        if not isinstance(data, bytes):
            raise UnsafePickleError("refusing a numpy scalar without raw bytes")
        return self._array(dt, (), data, "C")[()]

    # -- opcodes --
    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if type(inst) is not _Pending:
            raise UnsafePickleError(
                f"refusing to set the state of {type(inst).__name__} (pickle BUILD)"
            )
        if inst.built:
            raise UnsafePickleError(f"refusing to set the state of an {_short(inst)} twice")
        inst.built = True
        if inst.spec is not None:
            new: Any = _dtype_from_state(inst.spec, state)
        else:
            if not isinstance(state, tuple) or len(state) not in (4, 5):
                raise UnsafePickleError(
                    "refusing array state: expected (version, shape, dtype, ...)"
                )
            if len(state) == 5 and state[0] != 1:
                raise UnsafePickleError(f"refusing array state version {state[0]!r}")
            shape, dt, fortran, raw = state[-4:]
            if not isinstance(fortran, bool) or not isinstance(raw, bytes):
                raise UnsafePickleError("refusing array state: expected raw bytes (object arrays?)")
            new = self._array(_check_dtype(dt), _shape(shape), raw, "F" if fortran else "C")
        self.stack[-1] = new
        for k in inst.memo_keys:
            if self.memo.get(k) is inst:
                dict.__setitem__(self.memo, k, new)

    dispatch[pickle.BUILD[0]] = load_build

    def load_bytearray8(self) -> None:
        # pickle's own allocates the declared length before reading it
        (n,) = unpack("<Q", self.read(8))
        if n > self.size:
            raise UnsafePickleError(f"a {n}-byte bytearray in a {self.size}-byte pickle")
        b = self.read(n)
        if len(b) != n:
            raise UnsafePickleError("pickle ends inside a bytearray")
        self.append(bytearray(b))

    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8


def _new_dtype(spec: Any, align: Any = False, copy: Any = False) -> _Pending:
    # numpy writes dtype(spec, False, True) followed by BUILD with the full state
    if not isinstance(spec, str) or not _SPEC.fullmatch(spec):
        raise UnsafePickleError(f"refusing dtype spec {_short(spec)}")
    try:
        if np.dtype(spec).hasobject:
            raise UnsafePickleError(f"refusing object dtype {_short(spec)}")
    except TypeError as e:
        raise UnsafePickleError(f"refusing dtype spec {_short(spec)}: {e}") from None
    return _Pending(spec)


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> _Pending:
    # numpy writes _reconstruct(ndarray, (0,), b'b') followed by BUILD with the real state
    if subtype is not _NDARRAY:
        raise UnsafePickleError(f"refusing array subtype {_short(subtype)}")
    return _Pending()


def _empty_bytes(*args: Any) -> bytes:
    # protocol 2 writes b"" as bytes(); other bytes go through _codecs.encode
    if args:
        raise UnsafePickleError("refusing bytes() with arguments")
    return b""


def _bytearray(*args: Any) -> bytearray:
    # protocols 2-4 write bytearray(str, "latin-1") (or bytearray(bytes)); never a length
    if not args:
        return bytearray()
    if len(args) == 1 and isinstance(args[0], bytes):
        return bytearray(args[0])
    if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1"):
        return bytearray(args[0], "latin-1")
    raise UnsafePickleError(f"refusing bytearray{_short(args)}")


def _codecs_encode(text: Any, encoding: str = "utf-8") -> bytes:
    # protocol-2 pickles store bytes as _codecs.encode(str, "latin1"): text only
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8"):
        raise UnsafePickleError(f"refusing _codecs.encode with {_short(encoding)}")
    return text.encode(encoding)


def load(source: bytes | IO[bytes], max_bytes: int = MAX_BYTES) -> Any:
    """Unpickle `source` (bytes or a binary file) allowing only arrays and plain containers,
    with at most `max_bytes` of array data.

    Raises UnsafePickleError for anything else and for streams that are not valid pickles.
    """
    data = bytes(source) if isinstance(source, (bytes, bytearray)) else source.read()
    try:
        obj = _Unpickler(io.BytesIO(data), len(data), max_bytes).load()
    except UnsafePickleError:
        raise
    except RecursionError:
        raise UnsafePickleError("containers nested too deeply") from None
    except Exception as e:  # malformed streams raise many types; report them as one
        raise UnsafePickleError(f"not a valid pickle of arrays: {type(e).__name__}: {e}") from e
    check_plain(obj)
    return obj


def _children(o: Any) -> Any:
    return (x for kv in o.items() for x in kv) if isinstance(o, dict) else o


def check_plain(obj: Any) -> None:
    """Raise UnsafePickleError unless `obj` is built from plain containers, numbers, strings
    and numpy arrays, without cycles and nested at most MAX_DEPTH deep. Iterative and linear
    in the number of references: shared containers are walked once (a pickle can reference
    one container many times, doubling the paths at every level)."""
    containers = (dict, list, tuple, set, frozenset)
    height: dict[int, int] = {}  # id -> containers below it (-1 while being walked)
    stack: list[tuple[Any, bool]] = [(obj, False)]
    while stack:
        o, finished = stack.pop()
        if not isinstance(o, containers):
            _check_leaf(o)
            continue
        k = id(o)
        if finished:
            h = 1 + max((height[id(c)] for c in _children(o) if isinstance(c, containers)),
                        default=0)  # fmt: skip
            if h > MAX_DEPTH:
                raise UnsafePickleError("containers nested too deeply")
            height[k] = h
            continue
        if k in height:
            if height[k] < 0:
                raise UnsafePickleError("refusing a container that contains itself")
            continue
        height[k] = -1
        stack.append((o, True))
        for c in _children(o):
            if isinstance(c, containers) and height.get(id(c)) == -1:
                raise UnsafePickleError("refusing a container that contains itself")
            stack.append((c, False))


def _check_leaf(o: Any) -> None:
    if isinstance(o, np.ndarray):
        if type(o) is not np.ndarray or o.dtype.hasobject:
            raise UnsafePickleError(f"refusing array of type {type(o)} / dtype {o.dtype}")
    elif isinstance(o, np.dtype):
        if o.hasobject:
            raise UnsafePickleError(f"refusing object dtype {_short(o)}")
    elif not isinstance(o, _PLAIN):
        raise UnsafePickleError(f"refusing object of type {type(o).__name__}")
