"""The restricted unpickler reads what numpy writes at every protocol and runs nothing else."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from autovla import safe_pickle
from autovla.safe_pickle import UnsafePickleError

ARRAYS = {
    "float": np.arange(6.0).reshape(2, 3),
    "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
    "bool": np.array([True, False]),
    "str": np.array(["vehicle", "pedestrian"]),
    "record": np.zeros(2, dtype=[("a", "f4"), ("b", "i2")]),
    "0-d": np.array(2.5),
}


@pytest.mark.parametrize("protocol", range(2, pickle.HIGHEST_PROTOCOL + 1))
def test_round_trip_every_protocol(protocol: int) -> None:
    obj = {"arrays": ARRAYS, "scalar": np.float64(1.5), "dtype": np.dtype("f4"), "t": (1, "a")}
    back = safe_pickle.load(pickle.dumps(obj, protocol=protocol))
    for k, a in ARRAYS.items():
        assert back["arrays"][k].dtype == a.dtype and np.array_equal(back["arrays"][k], a), k
    assert back["scalar"] == 1.5 and back["dtype"] == np.dtype("f4") and back["t"] == (1, "a")


class _NumpyOne:
    """Pickles as numpy 1 writes a protocol-5 array: numpy.core.numeric._frombuffer."""

    def __reduce__(self):
        return (np._core.numeric._frombuffer, (b"\0" * 8, np.dtype("f8"), (1,), "C"))


def test_numpy_one_module_names() -> None:
    data = pickle.dumps(_NumpyOne(), protocol=2)
    assert b"numpy._core.numeric" in data
    back = safe_pickle.load(data.replace(b"numpy._core.numeric", b"numpy.core.numeric"))
    assert back.shape == (1,) and back[0] == 0.0


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo owned",))


@pytest.mark.parametrize(
    "payload",
    [
        [_Evil()],
        np.array([1, None], dtype=object),  # object arrays unpickle arbitrary objects
    ],
)
def test_refuses_code_and_objects(payload) -> None:
    with pytest.raises(UnsafePickleError):
        safe_pickle.load(pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))


def test_garbage_and_deep_nesting_are_named_errors() -> None:
    with pytest.raises(UnsafePickleError, match="not a valid pickle"):
        safe_pickle.load(b"\x80\x05garbage")
    deep: list = []
    for _ in range(200):
        deep = [deep]
    with pytest.raises(UnsafePickleError, match="nested too deeply"):
        safe_pickle.load(pickle.dumps(deep, protocol=5))
