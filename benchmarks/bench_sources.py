"""Speed of the real-dataset readers: CRC32C implementations and Waymo E2E conversion.

Builds a synthetic tfrecord (no data needed) and prints a table. Usage:
    python benchmarks/bench_sources.py [--frames 40] [--image-kb 300]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from autovla.data.sources.runner import run_conversion
from autovla.data.sources.tfrecord import (
    CRC_BACKEND,
    _crc32c_np,
    _crc32c_py,
    crc32c,
    write_tfrecord,
)
from autovla.data.sources.waymo import WaymoConverter
from autovla.data.sources.waymo_proto import messages


def _rate(fn, data: bytes, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn(data)
        best = min(best, time.perf_counter() - t)
    return len(data) / best / 1e6


def _frame(i: int, image: bytes) -> bytes:
    f = messages()["E2EDFrame"]()
    f.frame.context.name = "bench"
    f.frame.timestamp_micros = i
    for cam in range(1, 9):
        f.frame.images.add(name=cam, image=image)
    t = np.arange(-15, 21) * 0.25
    f.past_states.pos_x.extend(5 * t[:16])
    f.past_states.pos_y.extend(np.zeros(16))
    f.future_states.pos_x.extend(5 * t[16:])
    f.future_states.pos_y.extend(np.zeros(20))
    return f.SerializeToString()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--image-kb", type=int, default=300)
    args = ap.parse_args()
    data = os.urandom(4 << 20)
    rows = [
        ("crc32c pure Python (MB/s)", _rate(_crc32c_py, data[: 1 << 20], 1)),
        ("crc32c numpy chunks (MB/s)", _rate(_crc32c_np, data)),
        (f"crc32c in use: {CRC_BACKEND} (MB/s)", _rate(crc32c, data)),
    ]
    image = os.urandom(args.image_kb << 10)  # stands in for JPEG bytes; never decoded
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "training.tfrecord"
        write_tfrecord(path, [_frame(i, image) for i in range(args.frames)])
        mb = path.stat().st_size / 1e6
        conv = WaymoConverter([path], Path(tmp) / "out")
        t = time.perf_counter()
        run_conversion(conv.units(), conv, Path(tmp) / "out", progress=False)
        dt = time.perf_counter() - t
    rows += [("waymo convert (frames/s)", args.frames / dt), ("waymo convert (MB/s)", mb / dt)]
    print(f"{'measure':45s} {'value':>10s}")
    for name, v in rows:
        print(f"{name:45s} {v:10.1f}")


if __name__ == "__main__":
    main()
