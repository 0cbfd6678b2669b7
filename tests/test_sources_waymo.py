"""Waymo E2E converter: tfrecord framing, CRC checks, runtime protobuf messages, a known arc."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from autovla.data.manifest import load_samples
from autovla.data.sources.runner import ConvertError, run_conversion
from autovla.data.sources.tfrecord import (
    _crc32c_np,
    _crc32c_py,
    crc32c,
    masked_crc,
    read_tfrecord,
    write_tfrecord,
)
from autovla.data.sources.waymo import WaymoConverter
from autovla.data.sources.waymo_proto import messages

sys.path.insert(0, str(Path(__file__).parent))
from _sources_fixtures import V, W, expected_local, jpeg_bytes

N_FRAMES = 3


def make_frame(i: int) -> bytes:
    m = messages()
    f = m["E2EDFrame"]()
    f.frame.context.name = "seg_abc"
    f.frame.timestamp_micros = 1_000_000 + 100_000 * i
    cal = f.frame.context.camera_calibrations.add(name=1, width=16, height=8)
    cal.intrinsic.extend([1000, 1000, 8, 4, 0, 0, 0, 0, 0])
    cal.extrinsic.transform.extend(np.eye(4).ravel().tolist())
    for cam in range(1, 9):
        f.frame.images.add(name=cam, image=jpeg_bytes(value=10 * cam))
    past = expected_local(np.arange(-15, 1) * 0.25)  # (-4 s, 0], last = now
    f.past_states.pos_x.extend(past[:, 0])
    f.past_states.pos_y.extend(past[:, 1])
    f.past_states.vel_x.extend([V] * 16)
    f.past_states.vel_y.extend([0.0] * 16)
    f.past_states.accel_x.extend([0.1] * 16)
    f.past_states.accel_y.extend([V * W] * 16)
    fut = expected_local(np.arange(1, 21) * 0.25)
    f.future_states.pos_x.extend(fut[:, 0])
    f.future_states.pos_y.extend(fut[:, 1])
    f.intent = 2
    for score, dy in ((8.0, 0.0), (5.0, 1.0), (-1.0, 3.0)):
        t = f.preference_trajectories.add(preference_score=score)
        t.pos_x.extend(fut[:, 0])
        t.pos_y.extend(fut[:, 1] + dy)
    return f.SerializeToString()


@pytest.fixture(scope="module")
def records() -> list[bytes]:
    return [make_frame(i) for i in range(N_FRAMES)]


def convert(files, out, skip_bad=False):
    conv = WaymoConverter(files, out)
    return run_conversion(conv.units(), conv, out, skip_bad=skip_bad, progress=False)


def test_crc32c_known_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the standard check value
    assert masked_crc(b"") == 0xA282EAD8  # crc("") = 0, mask adds the constant


def test_crc32c_fallbacks_agree() -> None:
    rng = np.random.default_rng(0)
    for n in (0, 1, 100, 4095, 4096, 70_001):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert _crc32c_np(data) == _crc32c_py(data) == crc32c(data), n


def test_arc_frames(tmp_path: Path, records) -> None:
    path = tmp_path / "validation.tfrecord-00000-of-00001"
    write_tfrecord(path, records)
    out = tmp_path / "out"
    summary = convert([path], out)
    assert summary.written == N_FRAMES
    samples = load_samples(out)
    s = samples[0]
    assert s.source == "waymo" and s.split == "val" and s.instruction == "turn left"
    hist = s.history_array()
    np.testing.assert_allclose(hist[:, :2], expected_local([-1.5, -1, -0.5, 0])[:, :2], atol=2e-4)
    assert s.history[-1] == (0.0, 0.0, 0.0)
    # headings from the 4 Hz path: chord direction lags the tangent by W * 0.125 s
    np.testing.assert_allclose(hist[:-1, 2], expected_local([-1.5, -1, -0.5])[:, 2], atol=0.02)
    fut = s.future_array()
    exp = expected_local(0.5 * np.arange(1, 11))
    np.testing.assert_allclose(fut[:, :2], exp[:, :2], atol=2e-4)
    np.testing.assert_allclose(fut[:, 2], exp[:, 2], atol=0.02)
    assert s.ego.vx == pytest.approx(V) and s.ego.ax == pytest.approx(0.1)
    assert s.preference is not None and s.preference.scores == [8.0, 5.0]  # -1 is unrated
    assert s.preference.hz == 4 and len(s.preference.trajectories[0]) == 20
    assert set(s.cameras) == {"front", "front_left", "front_right"}
    assert (out / s.cameras["front"][0]).read_bytes() == jpeg_bytes(value=10)
    assert len({x.id for x in samples}) == N_FRAMES


def test_bad_crc(tmp_path: Path, records) -> None:
    path = tmp_path / "training.tfrecord"
    write_tfrecord(path, records)
    raw = bytearray(path.read_bytes())
    first = 12 + len(records[0]) + 4
    raw[first + 12 + 50] ^= 0xFF  # a byte inside record #1's data
    path.write_bytes(bytes(raw))
    with pytest.raises(ConvertError, match=r"record '#1'.*bad data CRC") as e:
        convert([path], tmp_path / "out")
    assert "training.tfrecord" in str(e.value)
    summary = convert([path], tmp_path / "out2", skip_bad=True)
    assert summary.written == N_FRAMES - 1 and sum(summary.skipped.values()) == 1


def test_truncated(tmp_path: Path, records) -> None:
    path = tmp_path / "training.tfrecord"
    write_tfrecord(path, records)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 100])  # the last record is cut short
    with pytest.raises(ConvertError, match=r"record '#2'.*truncated"):
        list(read_tfrecord(path))
    summary = convert([path], tmp_path / "out", skip_bad=True)
    assert summary.written == N_FRAMES - 1 and sum(summary.skipped.values()) == 1


def test_bad_length_crc(tmp_path: Path, records) -> None:
    path = tmp_path / "training.tfrecord"
    header = struct.pack("<Q", len(records[0]))
    path.write_bytes(header + b"\0\0\0\0" + records[0] + b"\0\0\0\0")
    with pytest.raises(ConvertError, match="bad length CRC"):
        list(read_tfrecord(path))


def test_clusters_and_test_split(tmp_path: Path) -> None:
    msg = messages()["E2EDFrame"].FromString(make_frame(0))
    msg.ClearField("future_states")  # the test split has no future
    path = tmp_path / "test.tfrecord"
    write_tfrecord(path, [msg.SerializeToString()])
    out = tmp_path / "out"
    conv = WaymoConverter([path], out, clusters={"seg_abc": "construction"})
    run_conversion(conv.units(), conv, out, progress=False)
    (s,) = load_samples(out)
    assert s.split == "test" and s.future is None and s.meta_action is None
    assert s.preference is not None and s.preference.cluster == "construction"
