"""TFRecord framing without TensorFlow: read and write records with masked CRC32C checks.

Each record: uint64 length (LE), uint32 masked CRC32C of those 8 bytes, the data, uint32
masked CRC32C of the data. CRC32C is the Castagnoli polynomial; the mask rotates right by 15
and adds 0xa282ead8. A fast `google_crc32c`/`crc32c` module is used when installed, else a
table-driven loop, vectorised with numpy over chunks of big records (about 30-100 MB/s).

A record's declared length is checked before anything is allocated: at most MAX_RECORD_BYTES
and no more than the bytes left in the file, else a ConvertError naming file and offset.
"""

from __future__ import annotations

import functools
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from autovla.data.sources.runner import ConvertError

_POLY = 0x82F63B78  # reflected Castagnoli polynomial
MAX_RECORD_BYTES = 256 * 2**20  # a WOD-E2E frame (8 JPEGs) is a few MB


def _table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _table()


def _crc32c_py(data: bytes) -> int:
    crc = 0xFFFFFFFF
    t = _TABLE
    for b in data:
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


@functools.lru_cache(maxsize=16)
def _shift_tables(nbytes: int) -> np.ndarray:
    """(4, 256) tables of the linear map "feed `nbytes` zero bytes" on a CRC state.

    The table-driven update is linear over GF(2) in the state, so the map is fixed by the
    images of the 32 basis states; a state is then shifted with 4 byte lookups.
    """
    t = np.asarray(_TABLE, dtype=np.uint32)
    basis = (np.uint32(1) << np.arange(32, dtype=np.uint32)).astype(np.uint32)
    for _ in range(nbytes):
        basis = t[basis & 0xFF] ^ (basis >> 8)
    tables = np.zeros((4, 256), dtype=np.uint32)
    for k in range(4):
        for bit in range(8):
            has = (np.arange(256) >> bit) & 1 == 1
            tables[k, has] ^= basis[8 * k + bit]
    return tables


def _crc32c_np(data: bytes) -> int:
    """CRC32C of big buffers: CRCs of many equal chunks at once (numpy), then combined.

    With a zero initial state, crc(A + B) = shift_len(B)(crc(A)) ^ crc(B), and leading zero
    bytes do not change it, so the buffer is zero-padded in front to K chunks of L bytes.
    """
    n = len(data)
    chunk = 1 << max(6, int(np.ceil(np.log2(np.sqrt(n) / 4 + 1))))
    k = -(-n // chunk)
    buf = np.zeros(k * chunk, dtype=np.uint8)
    buf[k * chunk - n :] = np.frombuffer(data, dtype=np.uint8)
    cols = buf.reshape(k, chunk).T.astype(np.uint32)
    t = np.asarray(_TABLE, dtype=np.uint32)
    state = np.zeros(k, dtype=np.uint32)
    for col in cols:
        state = t[(state ^ col) & 0xFF] ^ (state >> 8)
    sh = _shift_tables(chunk).tolist()
    t0, t1, t2, t3 = sh
    acc = 0
    for s in state.tolist():
        acc = t0[acc & 0xFF] ^ t1[(acc >> 8) & 0xFF] ^ t2[(acc >> 16) & 0xFF] ^ t3[acc >> 24] ^ s
    # the standard CRC starts from 0xFFFFFFFF and inverts at the end
    init = _crc32c_py(bytes(n)) ^ 0xFFFFFFFF if n < 4096 else _shift_state(0xFFFFFFFF, n)
    return (acc ^ init ^ 0xFFFFFFFF) & 0xFFFFFFFF


def _shift_state(state: int, nbytes: int) -> int:
    """Feed `nbytes` zero bytes to a CRC state, by squaring: powers of two of the shift map."""
    bit = 0
    while nbytes:
        if nbytes & 1:
            t0, t1, t2, t3 = _shift_tables(1 << bit).tolist()
            state = (
                t0[state & 0xFF]
                ^ t1[(state >> 8) & 0xFF]
                ^ t2[(state >> 16) & 0xFF]
                ^ t3[state >> 24]
            )
        nbytes >>= 1
        bit += 1
    return state


def _crc32c_fallback(data: bytes) -> int:
    return _crc32c_py(data) if len(data) < 4096 else _crc32c_np(data)


try:  # optional accelerators
    import google_crc32c as _g

    CRC_BACKEND = "google_crc32c"

    def crc32c(data: bytes) -> int:
        return _g.value(bytes(data))
except ImportError:
    try:
        import crc32c as _c

        CRC_BACKEND = "crc32c"

        def crc32c(data: bytes) -> int:
            return _c.crc32c(bytes(data))
    except ImportError:
        CRC_BACKEND = "numpy"
        crc32c = _crc32c_fallback


def masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def encode_record(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return (
        header + struct.pack("<I", masked_crc(header)) + data + struct.pack("<I", masked_crc(data))
    )


def write_tfrecord(path: str | os.PathLike, records: list[bytes]) -> None:
    with open(path, "wb") as f:
        for r in records:
            f.write(encode_record(r))


def _read_record(f, path: Path, i: int, size: int, verify: bool) -> bytes | ConvertError | None:
    """The record at the file's position (None at the end of the file)."""
    offset = f.tell()
    header = f.read(12)
    if not header:
        return None
    if len(header) < 12:
        raise ConvertError(path, f"#{i}", "length", f"truncated record at byte {offset}")
    (length,) = struct.unpack("<Q", header[:8])
    (len_crc,) = struct.unpack("<I", header[8:])
    if verify and masked_crc(header[:8]) != len_crc:
        raise ConvertError(path, f"#{i}", "length", f"bad length CRC at byte {offset}")
    if length > MAX_RECORD_BYTES:
        raise ConvertError(
            path,
            f"#{i}",
            "length",
            f"record at byte {offset} declares {length} bytes (at most {MAX_RECORD_BYTES})",
        )
    if offset + 12 + length + 4 > size:
        raise ConvertError(path, f"#{i}", "data", f"truncated record at byte {offset}")
    data = f.read(length)
    footer = f.read(4)
    if len(data) < length or len(footer) < 4:
        raise ConvertError(path, f"#{i}", "data", f"truncated record at byte {offset}")
    if verify and masked_crc(data) != struct.unpack("<I", footer)[0]:
        return ConvertError(path, f"#{i}", "data", f"bad data CRC at byte {offset}")
    return data


def iter_records(
    path: str | os.PathLike, verify: bool = True
) -> Iterator[tuple[int, int, bytes | ConvertError]]:
    """Yield (record index, byte offset, data) in file order; see `read_tfrecord`."""
    path = Path(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        i = 0
        while True:
            offset = f.tell()
            data = _read_record(f, path, i, size, verify)
            if data is None:
                return
            yield i, offset, data
            i += 1


def read_record_at(
    path: str | os.PathLike, offset: int, index: int = 0, verify: bool = True
) -> bytes:
    """The one record that starts at byte `offset` (from `iter_records`); ConvertError if it
    cannot be read."""
    path = Path(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        f.seek(offset)
        data = _read_record(f, path, index, size, verify)
    if data is None:
        raise ConvertError(path, f"#{index}", "", f"no record at byte {offset}")
    if isinstance(data, ConvertError):
        raise data
    return data


def read_tfrecord(
    path: str | os.PathLike, verify: bool = True
) -> Iterator[tuple[int, bytes | ConvertError]]:
    """Yield (record index, data) in order; a record whose data CRC fails is yielded as a
    ConvertError (the framing is still intact, so reading goes on). A broken length header,
    a length beyond MAX_RECORD_BYTES or the file's end, or a truncated file raises
    ConvertError: nothing after it can be trusted."""
    for i, _, data in iter_records(path, verify):
        yield i, data
