"""NAVSIM/OpenScene converter on a fixture log: 16 frames at 2 Hz, 8 cameras, a known arc."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

from autovla.data.manifest import load_samples
from autovla.data.sources.navsim import NavsimConverter
from autovla.data.sources.runner import ConvertError, ImageOptions, run_conversion
from autovla.geometry import to_local

sys.path.insert(0, str(Path(__file__).parent))
from _sources_fixtures import arc_pose, expected_local, jpeg_bytes, quat

CAMS = ["CAM_F0", "CAM_L0", "CAM_L1", "CAM_L2", "CAM_R0", "CAM_R1", "CAM_R2", "CAM_B0"]
LOG = "2021.05.12.22.00.38_veh-35_01008_01518"
CAR = np.array([1040.0, -1985.0, 2.0])  # a parked car, global


def make_frames(root: Path, n: int = 16, split: str = "trainval") -> list[dict]:
    """A log as OpenScene writes it: every frame key of the format (docs/real-datasets.md),
    numpy arrays, numpy scalars and plain values mixed as in the real pickles."""
    jpg = jpeg_bytes()
    frames = []
    lidar2ego_t, lidar2ego_q = np.array([1.5, 0.0, 1.8]), np.array(quat(0.0))
    lidar2ego = np.eye(4)
    lidar2ego[:3, 3] = lidar2ego_t
    for i in range(n):
        t = 0.5 * i
        p = arc_pose(t)
        cams = {}
        for cam in CAMS:
            rel = f"{LOG}/{cam}/{i:016x}.jpg"
            f = root / "sensor_blobs" / split / rel
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(jpg)
            cams[cam] = {
                "data_path": rel,
                "sensor2lidar_rotation": np.eye(3),
                "sensor2lidar_translation": np.zeros(3),
                "cam_intrinsic": np.eye(3),
                "distortion": np.zeros(5),
            }
        car = to_local(CAR, p)
        ego2global = np.eye(4)
        ego2global[:2, :2] = [[np.cos(p[2]), -np.sin(p[2])], [np.sin(p[2]), np.cos(p[2])]]
        ego2global[:2, 3] = p[:2]
        can_bus = np.zeros(18)
        can_bus[:2], can_bus[3:7], can_bus[10] = p[:2], quat(p[2]), 5.0
        frames.append(
            {
                "token": f"tok{i:02d}",
                "frame_idx": i,
                "timestamp": 1_620_000_000_000_000 + 500_000 * i,
                "log_name": LOG,
                "log_token": "logtok",
                "scene_name": "scene",
                "scene_token": "scenetok",
                "map_location": "us-nv-las-vegas-strip",
                "vehicle_name": "veh-35",
                "roadblock_ids": ["rb1", "rb2"],
                "can_bus": can_bus,
                "lidar_path": f"{LOG}/MergedPointCloud/{i:016x}.pcd",
                "lidar2ego_translation": lidar2ego_t,
                "lidar2ego_rotation": lidar2ego_q,
                "ego2global_translation": np.array([p[0], p[1], 0.0]),
                "ego2global_rotation": np.array(quat(p[2])),
                "ego_dynamic_state": [5.0, 0.0, 0.0, 0.5],
                "traffic_lights": [(np.int64(1234), np.bool_(i % 2 == 0)), (5678, False)],
                "driving_command": np.array([1, 0, 0, 0]),
                "sample_prev": f"tok{i - 1:02d}" if i else None,
                "sample_next": f"tok{i + 1:02d}" if i < n - 1 else None,
                "ego2global": ego2global,
                "lidar2ego": lidar2ego,
                "lidar2global": ego2global @ lidar2ego,
                "cams": cams,
                "anns": {
                    "gt_boxes": np.array([[car[0], car[1], 0.5, 4.5, 1.9, 1.6, car[2]]]),
                    "gt_names": np.array(["vehicle"]),
                    "gt_velocity_3d": np.zeros((1, 3)),
                    "instance_tokens": np.array(["inst1"]),
                    "track_tokens": np.array(["track1"]),
                },
            }
        )
    return frames


def write_log(root: Path, frames: list[dict], name: str = LOG, split: str = "trainval") -> Path:
    p = root / "navsim_logs" / split / f"{name}.pkl"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(pickle.dumps(frames, protocol=pickle.HIGHEST_PROTOCOL))  # as OpenScene
    return p


def convert(root: Path, out: Path, skip_bad: bool = False, **kw):
    conv = NavsimConverter(root / "navsim_logs", root / "sensor_blobs", out, **kw)
    return run_conversion(conv.units(), conv, out, skip_bad=skip_bad, progress=False)


def test_arc_scene(tmp_path: Path) -> None:
    write_log(tmp_path, make_frames(tmp_path))
    out = tmp_path / "out"
    summary = convert(tmp_path, out)
    assert summary.written == 1  # 16 frames, windows of 14 every 14
    (s,) = load_samples(out)
    assert s.source == "navsim" and s.id == "navsim-tok03"
    assert s.meta["scene_token"] == "tok03" and s.meta["log_name"] == LOG
    np.testing.assert_allclose(
        s.history_array(), expected_local([-1.5, -1.0, -0.5, 0.0]), atol=2e-4
    )
    assert s.history[-1] == (0.0, 0.0, 0.0)
    np.testing.assert_allclose(s.future_array(), expected_local(0.5 * np.arange(1, 11)), atol=2e-4)
    assert s.instruction == "turn left"
    assert s.ego.vx == 5.0 and s.ego.ay == 0.5
    assert set(s.cameras) == {"front", "front_left", "front_right"}
    assert s.cameras["front"][0].endswith("CAM_F0/0000000000000000.jpg")
    assert (out / s.cameras["front_left"][3]).resolve().is_file()  # referenced in place
    assert s.meta_action is not None
    (car,) = s.scene.objects
    assert car.kind == "vehicle" and car.box[3] == 4.5
    # a parked car: its future in the current ego frame stays where it is now
    np.testing.assert_allclose(np.array(car.future)[:, :2], [car.box[:2]] * 10, atol=2e-3)


def test_copy_resize_and_resume(tmp_path: Path) -> None:
    write_log(tmp_path, make_frames(tmp_path))
    out = tmp_path / "out"
    conv = NavsimConverter(
        tmp_path / "navsim_logs",
        tmp_path / "sensor_blobs",
        out,
        images=ImageOptions(copy=True, size=(8, 4)),
    )
    run_conversion(conv.units(), conv, out, progress=False)
    (s,) = load_samples(out)
    from PIL import Image

    with Image.open(out / s.cameras["front"][0]) as im:
        assert im.size == (8, 4)
    again = run_conversion(conv.units(), conv, out, progress=False)
    assert again.units_resumed == 1 and again.written == 0


def test_missing_frame_and_camera(tmp_path: Path) -> None:
    frames = make_frames(tmp_path)
    del frames[5]  # a hole in the log
    write_log(tmp_path, frames)
    out = tmp_path / "out"
    with pytest.raises(ConvertError, match="missing frames") as e:
        convert(tmp_path, out)
    assert LOG in str(e.value)
    summary = convert(tmp_path, out, skip_bad=True)
    assert summary.written == 0 and sum(summary.skipped.values()) == 1

    frames = make_frames(tmp_path)
    (tmp_path / "sensor_blobs/trainval" / frames[2]["cams"]["CAM_L0"]["data_path"]).unlink()
    write_log(tmp_path, frames)
    out2 = tmp_path / "out2"
    with pytest.raises(ConvertError, match="image not found") as e:
        convert(tmp_path, out2)
    assert "tok02" in str(e.value) and "cams.CAM_L0.data_path" in str(e.value)


def test_refuses_code_in_pickle(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    p = tmp_path / "navsim_logs" / "x.pkl"
    p.parent.mkdir(parents=True)
    p.write_bytes(pickle.dumps([{"a": Evil()}]))
    with pytest.raises(ConvertError, match=r"refusing to load builtins\.print"):
        convert(tmp_path, tmp_path / "out")


def test_roadblock_filter_is_not_an_error(tmp_path: Path) -> None:
    frames = make_frames(tmp_path)
    frames[3]["roadblock_ids"] = []
    write_log(tmp_path, frames)
    summary = convert(tmp_path, tmp_path / "out")  # no --skip-bad needed: a filter, not bad data
    assert summary.written == 0 and summary.skipped == {"filtered: no roadblock ids": 1}
    summary = convert(tmp_path, tmp_path / "out2", require_roadblocks=False)
    assert summary.written == 1


def test_protocol5_log_with_every_frame_key(tmp_path: Path) -> None:
    """The log is what OpenScene writes (protocol 5, arrays through numeric._frombuffer) and
    converts with the restricted unpickler, the split taken from its folder."""
    path = write_log(tmp_path, make_frames(tmp_path, split="navtest"), split="navtest")
    raw = path.read_bytes()
    assert raw[:2] == b"\x80\x05" and b"_frombuffer" in raw
    out = tmp_path / "out"
    summary = convert(tmp_path, out)  # --logs navsim_logs/: the split is the log's folder
    assert summary.written == 1
    (s,) = load_samples(out)
    assert s.split == "navtest"
    out2 = tmp_path / "out2"  # --logs navsim_logs/navtest: the folder itself
    conv = NavsimConverter(tmp_path / "navsim_logs" / "navtest", tmp_path / "sensor_blobs", out2)
    run_conversion(conv.units(), conv, out2, progress=False)
    assert load_samples(out2)[0].split == "navtest"
    out3 = tmp_path / "out3"
    convert(tmp_path, out3, split="custom")  # given: used as is
    assert load_samples(out3)[0].split == "custom"


def test_copy_images_never_writes_outside_out(tmp_path: Path) -> None:
    """A data path with ../ may be read in place, but --copy-images refuses to write it
    outside --out (before: sensor_blobs/trainval/../../../../x.jpg was copied to
    out/images/navsim/trainval/../../../../x.jpg, a file outside out): a named error,
    counted by --skip-bad."""
    root = tmp_path / "r1" / "r2" / "r3"  # deep data, shallow output: the copy would escape
    frames = make_frames(root)
    secret = tmp_path / "r1" / "x.jpg"
    secret.write_bytes(jpeg_bytes(value=7))
    for f in frames[:4]:  # the first scene's history frames
        f["cams"]["CAM_F0"]["data_path"] = "../../../../x.jpg"
    write_log(root, frames)
    out = tmp_path / "o"
    before = {q for q in tmp_path.rglob("*")}
    conv = NavsimConverter(
        root / "navsim_logs", root / "sensor_blobs", out, images=ImageOptions(copy=True)
    )
    with pytest.raises(ConvertError, match="outside --out") as e:
        run_conversion(conv.units(), conv, out, progress=False)
    assert "cams.CAM_F0.data_path" in str(e.value) and "tok00" in str(e.value)
    summary = run_conversion(conv.units(), conv, out, skip_bad=True, progress=False)
    assert summary.written == 0 and sum(summary.skipped.values()) == 1
    assert not (tmp_path / "x.jpg").exists()
    assert all(q.is_relative_to(out) for q in set(tmp_path.rglob("*")) - before)
    # referenced in place (no copy) the same path is only read: allowed (documented)
    out2 = tmp_path / "o2"
    assert convert(root, out2).written == 1
    assert (out2 / load_samples(out2)[0].cameras["front"][0]).resolve() == secret.resolve()
