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

STEP_US = 250_000  # records every 0.25 s in the fixture segment
N_FRAMES = 12  # 0 ... 2.75 s: frames from 1.5 s on have a full history (6 of them)
FIRST_WITH_HISTORY = 6
T0 = 1_000_000


def frame_value(i: int, cam: int) -> int:
    """The JPEG colour of camera `cam` in frame `i`: tells frames apart after conversion."""
    return 8 * cam + 3 * i


def make_frame(i: int, context: str = "seg_abc", step_us: int = STEP_US) -> bytes:
    """Frame i of a segment on the known arc: past, future and rated trajectories are in the
    frame's own ego frame, so every frame carries the same relative motion."""
    m = messages()
    f = m["E2EDFrame"]()
    f.frame.context.name = context
    f.frame.timestamp_micros = T0 + step_us * i
    cal = f.frame.context.camera_calibrations.add(name=1, width=16, height=8)
    cal.intrinsic.extend([1000, 1000, 8, 4, 0, 0, 0, 0, 0])
    cal.extrinsic.transform.extend(np.eye(4).ravel().tolist())
    for cam in range(1, 9):
        f.frame.images.add(name=cam, image=jpeg_bytes(value=frame_value(i, cam)))
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


def segment(n: int = N_FRAMES, context: str = "seg_abc", step_us: int = STEP_US) -> list[bytes]:
    return [make_frame(i, context, step_us) for i in range(n)]


@pytest.fixture(scope="module")
def records() -> list[bytes]:
    return segment()


def convert(files, out, skip_bad=False, **kw):
    conv = WaymoConverter(files, out, **kw)
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
    n = N_FRAMES - FIRST_WITH_HISTORY
    assert summary.written == n
    assert summary.skipped == {
        "filtered: no frame -1.5 s earlier in its segment": FIRST_WITH_HISTORY
    }
    samples = sorted(load_samples(out), key=lambda s: s.meta["timestamp_micros"])
    s = samples[0]
    assert s.source == "waymo" and s.split == "val" and s.instruction == "turn left"
    hist = s.history_array()
    np.testing.assert_allclose(hist[:, :2], expected_local([-1.5, -1, -0.5, 0])[:, :2], atol=2e-4)
    assert s.history[-1] == (0.0, 0.0, 0.0)
    # central differences on the arc: the chord of two symmetric points is parallel to the
    # tangent, so headings are exact (a backward difference lags by W * 0.125 s = 0.0125 rad)
    np.testing.assert_allclose(hist[:-1, 2], expected_local([-1.5, -1, -0.5])[:, 2], atol=2e-4)
    fut = s.future_array()
    exp = expected_local(0.5 * np.arange(1, 11))
    np.testing.assert_allclose(fut[:, :2], exp[:, :2], atol=2e-4)
    np.testing.assert_allclose(fut[:-1, 2], exp[:-1, 2], atol=2e-4)  # 5 s: backward difference
    assert abs(fut[-1, 2] - exp[-1, 2]) == pytest.approx(W * 0.125, abs=2e-4)
    assert s.ego.vx == pytest.approx(V) and s.ego.ax == pytest.approx(0.1)
    assert s.preference is not None and s.preference.scores == [8.0, 5.0]  # -1 is unrated
    assert s.preference.hz == 4 and len(s.preference.trajectories[0]) == 20
    assert set(s.cameras) == {"front", "front_left", "front_right"}
    assert len({x.id for x in samples}) == n


def test_history_frames_from_a_shuffled_segment_across_files(tmp_path: Path, records) -> None:
    """Records out of time order, one segment in two files (plus another segment between):
    each sample's 4 camera frames are the segment's frames at -1.5, -1, -0.5 and 0 s."""
    rng = np.random.default_rng(3)
    order = rng.permutation(N_FRAMES)
    other = segment(8, context="seg_other", step_us=500_000)
    a = tmp_path / "training.tfrecord-00000-of-00002"
    b = tmp_path / "training.tfrecord-00001-of-00002"
    write_tfrecord(a, [records[i] for i in order[:5]] + other[:4])
    write_tfrecord(b, other[4:] + [records[i] for i in order[5:]])
    out = tmp_path / "out"
    summary = convert([a, b], out)
    assert summary.written == (N_FRAMES - FIRST_WITH_HISTORY) + (8 - 3)
    by_ts = {(x.meta["context_name"], x.meta["timestamp_micros"]): x for x in load_samples(out)}
    for i in range(FIRST_WITH_HISTORY, N_FRAMES):
        s = by_ts[("seg_abc", T0 + STEP_US * i)]
        assert s.num_frames == 4
        for num, cam in ((1, "front"), (2, "front_left"), (3, "front_right")):
            frames = [i - 6, i - 4, i - 2, i]  # 0.25 s apart: -1.5, -1, -0.5, 0 s
            got = [(out / rel).read_bytes() for rel in s.cameras[cam]]
            assert got == [jpeg_bytes(value=frame_value(j, num)) for j in frames], (i, cam)
    s = by_ts[("seg_other", T0 + 500_000 * 3)]  # a 2 Hz segment: frames 0, 1, 2, 3
    assert s.cameras["front"][0].endswith(f"{T0}_front.jpg")
    # images of a frame shared by several samples are written once
    assert len(list((out / "images/waymo/seg_abc").iterdir())) == 3 * N_FRAMES


def test_context_name_cannot_leave_out(tmp_path: Path) -> None:
    """A hostile context name becomes a plain folder name; nothing is written outside --out."""
    path = tmp_path / "training.tfrecord"
    write_tfrecord(path, segment(8, context="../../escape", step_us=500_000))
    out = tmp_path / "deep" / "out"
    summary = convert([path], out)
    assert summary.written == 5
    assert not (tmp_path / "escape").exists() and not (tmp_path / "deep" / "escape").exists()
    s = load_samples(out)[0]
    assert s.meta["context_name"] == "../../escape" and "/" not in s.id
    for rel in s.cameras["front"]:
        assert (out / rel).resolve().is_relative_to(out.resolve())


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
    # record #1 is lost: frame 7 (whose -1.5 s frame it is) is skipped for the same reason
    assert summary.written == N_FRAMES - FIRST_WITH_HISTORY - 1
    assert summary.skipped["bad data CRC at byte N"] == 2


def test_truncated(tmp_path: Path, records) -> None:
    path = tmp_path / "training.tfrecord"
    write_tfrecord(path, records)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 100])  # the last record is cut short
    with pytest.raises(ConvertError, match=rf"record '#{N_FRAMES - 1}'.*truncated"):
        list(read_tfrecord(path))
    summary = convert([path], tmp_path / "out", skip_bad=True)
    assert summary.written == N_FRAMES - FIRST_WITH_HISTORY - 1
    assert summary.skipped["truncated record at byte N"] == 1


def test_bad_length_crc(tmp_path: Path, records) -> None:
    path = tmp_path / "training.tfrecord"
    header = struct.pack("<Q", len(records[0]))
    path.write_bytes(header + b"\0\0\0\0" + records[0] + b"\0\0\0\0")
    with pytest.raises(ConvertError, match="bad length CRC"):
        list(read_tfrecord(path))


def test_clusters_and_test_split(tmp_path: Path) -> None:
    recs = []
    for r in segment(4, step_us=500_000):
        msg = messages()["E2EDFrame"].FromString(r)
        msg.ClearField("future_states")  # the test split has no future
        recs.append(msg.SerializeToString())
    path = tmp_path / "test.tfrecord"
    write_tfrecord(path, recs)
    out = tmp_path / "out"
    conv = WaymoConverter([path], out, clusters={"seg_abc": "construction"})
    run_conversion(conv.units(), conv, out, progress=False)
    (s,) = load_samples(out)
    assert s.split == "test" and s.future is None and s.meta_action is None
    assert s.preference is not None and s.preference.cluster == "construction"
