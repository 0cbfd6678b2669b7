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


# Written by numpy 1.26.4 (`pickle.dumps(obj, protocol)`) for
# {"t": datetime64[ns] [1, 2], "rec": aligned struct zeros(1), "f": [0., 1.], "be": >f8 [1.5]}:
# module names `numpy.core`, datetime metadata `{}` where numpy 2 writes None.
NUMPY1_P2 = bytes.fromhex(
    "80027d7100285801000000747101636e756d70792e636f72652e6d756c746961727261790a5f7265636f6e73"
    "74727563740a7102636e756d70790a6e6461727261790a71034b00857104635f636f646563730a656e636f64"
    "650a7105580100000062710658060000006c6174696e31710786710852710987710a52710b284b014b028571"
    "0c636e756d70790a64747970650a710d58020000004d38710e898887710f527110284b0458010000003c7111"
    "4e4e4e4affffffff4affffffff4b007d711228680558020000006e73711368078671145271154b014b014b01"
    "747116867117747118628968055810000000010000000000000002000000000000007119680786711a52711b"
    "74711c625803000000726563711d680268034b0085711e680987711f527120284b014b01857121680d580200"
    "0000563871228988877123527124284b0358010000007c71254e580100000061712658010000006271278671"
    "287d7129286826680d58020000006634712a898887712b52712c284b0368114e4e4e4affffffff4affffffff"
    "4b0074712d624b0086712e6827680d58020000006932712f8988877130527131284b0368114e4e4e4affffff"
    "ff4affffffff4b00747132624b04867133754b084b044a90ffffff7471346289680558080000000000000000"
    "00000071356807867136527137747138625801000000667139680268034b0085713a680987713b52713c284b"
    "014b0285713d680d58020000006638713e898887713f527140284b0368114e4e4e4affffffff4affffffff4b"
    "007471416289680558110000000000000000000000000000000000c3b03f7142680786714352714474714562"
    "580200000062657146680268034b008571476809877148527149284b014b0185714a680d5802000000663871"
    "4b898887714c52714d284b0358010000003e714e4e4e4e4affffffff4affffffff4b0074714f628968055809"
    "0000003fc3b80000000000007150680786715152715274715362752e"
)
NUMPY1_P5 = bytes.fromhex(
    "80059518020000000000007d94288c0174948c156e756d70792e636f72652e6d756c74696172726179948c0c"
    "5f7265636f6e7374727563749493948c056e756d7079948c076e6461727261799493944b0085944301629487"
    "945294284b014b02859468058c0564747970659493948c024d3894898887945294284b048c013c944e4e4e4a"
    "ffffffff4affffffff4b007d942843026e73944b014b014b0174948694749462894310010000000000000002"
    "00000000000000947494628c03726563948c126e756d70792e636f72652e6e756d65726963948c0b5f66726f"
    "6d62756666657294939428960800000000000000000000000000000094680e8c02563894898887945294284b"
    "038c017c944e8c0161948c01629486947d94286823680e8c02663494898887945294284b0368124e4e4e4aff"
    "ffffff4affffffff4b007494624b0086946824680e8c02693294898887945294284b0368124e4e4e4affffff"
    "ff4affffffff4b007494624b048694754b084b044a90ffffff7494624b0185948c014394749452948c016694"
    "681d289610000000000000000000000000000000000000000000f03f94680e8c02663894898887945294284b"
    "0368124e4e4e4affffffff4affffffff4b007494624b0285946833749452948c02626594681d289608000000"
    "000000003ff800000000000094680e8c02663894898887945294284b038c013e944e4e4e4affffffff4affff"
    "ffff4b007494624b018594683374945294752e"
)


@pytest.mark.parametrize("data", [NUMPY1_P2, NUMPY1_P5], ids=["protocol2", "protocol5"])
def test_reads_numpy_one_pickles(data: bytes) -> None:
    back = safe_pickle.load(data)
    assert back["t"].dtype == np.dtype("M8[ns]") and back["t"].astype(np.int64).tolist() == [1, 2]
    rec = np.dtype([("a", "f4"), ("b", "i2")], align=True)
    assert back["rec"].dtype == rec and back["rec"].dtype.isalignedstruct
    assert back["f"].tolist() == [0.0, 1.0]
    assert back["be"].dtype == np.dtype(">f8") and back["be"].tolist() == [1.5]


def test_more_dtypes_round_trip() -> None:
    padded = {"names": ["a", "b"], "formats": ["i4", "f8"], "offsets": [0, 8], "itemsize": 24}
    dts = [">i2", "c16", ">U3", "S5", "V6", "M8[us]", "m8[10ms]", ("f8", (3,)), padded,
           [("x", [("y", "f8"), ("z", "U2")]), ("w", "i4", (2, 3))],
           {"names": ["a"], "formats": ["i4"], "titles": ["T"]}]  # fmt: skip
    for protocol in (2, 5):
        for spec in dts:
            a = np.ones((2, 2), dtype=np.dtype(spec))
            objs = {"a": a, "dt": a.dtype, "s": a[0, 0], "b": bytearray(b"xy"), "e": b""}
            back = safe_pickle.load(pickle.dumps(objs, protocol=protocol))
            assert back["a"].dtype == a.dtype and back["a"].tobytes() == a.tobytes(), spec
            assert back["dt"] == a.dtype and back["s"].dtype == a[0, 0].dtype
            assert back["b"] == bytearray(b"xy") and back["e"] == b""


# --- hostile pickles, assembled opcode by opcode (what a numpy pickle would be, then bent) ---
P = pickle


def _s(x: str) -> bytes:
    b = x.encode()
    return P.BINUNICODE + len(b).to_bytes(4, "little") + b


def _i(n: int) -> bytes:
    return P.BININT + n.to_bytes(4, "little", signed=True)


def _b(x: bytes) -> bytes:
    return P.BINBYTES + len(x).to_bytes(4, "little") + x


def _dtype(spec: str, state: bytes) -> bytes:
    """dtype(spec, False, True) + BUILD(state), as numpy pickles one; leaves it on the stack."""
    new = P.GLOBAL + b"numpy\ndtype\n" + P.MARK + _s(spec) + P.NEWFALSE + P.NEWTRUE + P.TUPLE
    return new + P.REDUCE + P.MARK + state + P.TUPLE + P.BUILD


F8_STATE = _i(3) + _s("<") + P.NONE * 3 + _i(-1) + _i(-1) + _i(0)
V8_STATE = _i(3) + _s("|") + P.NONE * 3 + _i(8) + _i(1) + _i(0)
RECON = P.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n"
NDARRAY = P.GLOBAL + b"numpy\nndarray\n"


def _array(n: int, dtype_memo: int, raw: bytes) -> bytes:
    """_reconstruct(ndarray, (0,), b'b') + BUILD((1, (n,), memo[dtype_memo], False, raw))."""
    new = RECON + P.MARK + NDARRAY + P.MARK + _i(0) + P.TUPLE + _b(b"b") + P.TUPLE + P.REDUCE
    state = _i(1) + P.MARK + _i(n) + P.TUPLE + P.BINGET + bytes([dtype_memo]) + P.NEWFALSE
    return new + P.MARK + state + _b(raw) + P.TUPLE + P.BUILD


def _pickle(body: bytes) -> bytes:
    return P.PROTO + b"\x03" + body + P.STOP


def test_assembled_pickle_is_a_real_one() -> None:
    # the helpers above build what numpy builds: this one loads
    data = _pickle(_dtype("f8", F8_STATE) + P.BINPUT + b"\x00" + P.POP + _array(2, 0, bytes(16)))
    assert safe_pickle.load(data).tolist() == [0.0, 0.0]
    # flags are numpy's own, whatever the state says (63 would claim "holds objects")
    flags = _dtype("V8", V8_STATE.replace(_i(0), _i(63)))
    back = safe_pickle.load(_pickle(flags + P.BINPUT + b"\x00" + P.POP + _array(1, 0, b"A" * 8)))
    assert back.dtype == np.dtype("V8") and not back.dtype.hasobject and back.tobytes() == b"A" * 8


@pytest.mark.parametrize(
    "body, match",
    [
        # the review's attack: re-BUILD a dtype in use with item size 1e8 (out-of-bounds reads)
        (_dtype("V8", V8_STATE) + P.BINPUT + b"\x00" + P.POP + _array(1, 0, b"A" * 8)
         + P.BINPUT + b"\x01" + P.POP + P.BINGET + b"\x00" + P.MARK
         + V8_STATE.replace(_i(8), _i(100_000_000)) + P.TUPLE + P.BUILD + P.POP
         + P.BINGET + b"\x01", "set the state of"),
        # a first BUILD whose state numpy's own dtype would not have (item size, flags)
        (_dtype("V8", V8_STATE.replace(_i(8), _i(100_000_000))), "refusing dtype state"),
        # a dtype used before its BUILD (numpy's setstate would run on it later)
        (P.GLOBAL + b"numpy\ndtype\n" + _s("f8") + P.TUPLE1 + P.REDUCE + P.BINPUT + b"\x00"
         + _array(1, 0, bytes(8)), "expected a numpy dtype"),
        # re-BUILD an array in use with a smaller buffer (use-after-free through a view)
        (_dtype("f8", F8_STATE) + P.BINPUT + b"\x00" + P.POP + _array(2, 0, bytes(16))
         + P.MARK + _i(1) + P.MARK + _i(1) + P.TUPLE + P.BINGET + b"\x00" + P.NEWFALSE
         + _b(bytes(8)) + P.TUPLE + P.BUILD, "set the state of"),
        # BUILD on a finished array from protocol 5's _frombuffer
        (_dtype("f8", F8_STATE) + P.BINPUT + b"\x00" + P.POP
         + P.GLOBAL + b"numpy.core.numeric\n_frombuffer\n" + P.MARK + _b(bytes(8))
         + P.BINGET + b"\x00" + P.MARK + _i(1) + P.TUPLE + _s("C") + P.TUPLE + P.REDUCE
         + P.EMPTY_DICT + P.BUILD, "set the state of ndarray"),
        # numpy.ndarray(shape, dtype, buffer=other array): a view of another array's memory
        (NDARRAY + P.MARK + P.MARK + _i(1 << 29) + P.TUPLE + _s("f8") + P.TUPLE + P.REDUCE,
         "numpy.ndarray"),
        # raw bytes that do not fill the array exactly
        (_dtype("f8", F8_STATE) + P.BINPUT + b"\x00" + P.POP + _array(4, 0, bytes(8)),
         "needs 32 bytes, got 8"),
        # a bytearray declaring 2^60 bytes (pickle's own unpickler allocates it first)
        (P.BYTEARRAY8 + (1 << 60).to_bytes(8, "little"), "bytearray"),
        # an object dtype spelled as a spec
        (P.GLOBAL + b"numpy\ndtype\n" + _s("O8") + P.TUPLE1 + P.REDUCE, "object dtype"),
        # a list that contains itself
        (P.EMPTY_LIST + P.BINPUT + b"\x00" + P.BINGET + b"\x00" + P.APPEND, "contains itself"),
    ],
    ids=["dtype-rebuild", "dtype-elsize", "dtype-unbuilt", "array-rebuild",
         "frombuffer-build", "ndarray-view", "short-bytes", "bytearray8", "object-spec", "cycle"],
)  # fmt: skip
def test_hostile_state_is_refused(body: bytes, match: str) -> None:
    with pytest.raises(UnsafePickleError, match=match):
        safe_pickle.load(_pickle(body))


def test_array_bytes_are_budgeted() -> None:
    a = np.zeros(1000)
    data = pickle.dumps([a, a, a], protocol=5)  # one array, three references: counted once
    assert len(safe_pickle.load(data, max_bytes=8000)) == 3
    many = pickle.dumps([np.zeros(1000) for _ in range(3)], protocol=5)
    with pytest.raises(UnsafePickleError, match="larger than the limit"):
        safe_pickle.load(many, max_bytes=16_000)
    # items of size 0: no bytes, but 2^40 elements still cost
    v0 = _dtype("V0", V8_STATE.replace(_i(8), _i(0))) + P.BINPUT + b"\x00" + P.POP
    assert safe_pickle.load(_pickle(v0 + _array(3, 0, b""))).shape == (3,)
    with pytest.raises(UnsafePickleError, match="larger than the limit"):
        safe_pickle.load(_pickle(v0 + _array(2**31 - 1, 0, b"")), max_bytes=2**30)
