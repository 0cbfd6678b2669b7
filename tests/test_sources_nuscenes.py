"""nuScenes converter on a v1.0-mini tree with all 13 tables, real JPEGs and a known arc."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from autovla.data.manifest import load_samples
from autovla.data.sources.nuscenes import NuScenesConverter, command_from_future, object_class
from autovla.data.sources.runner import ConvertError, run_conversion

sys.path.insert(0, str(Path(__file__).parent))
from _sources_fixtures import V, arc_pose, expected_local, jpeg_bytes, quat

VERSION = "v1.0-mini"
N = 16  # keyframes in the scene
CHANNELS = [
    "CAM_FRONT",
    "CAM_FRONT_LEFT",
    "CAM_FRONT_RIGHT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_BACK_RIGHT",
    "LIDAR_TOP",
]
CAR = np.array([1040.0, -1985.0, 2.0])  # a parked car, global
T0 = 1_532_402_927_647_951


def build_tree(root: Path) -> dict[str, list[dict]]:
    """Write a nuScenes mini tree: one scene of N keyframes, ego on the arc, one parked car."""
    log = "n015-2018-07-24-11-22-45+0800"
    t: dict[str, list[dict]] = {
        name: []
        for name in (
            "category",
            "attribute",
            "visibility",
            "instance",
            "sensor",
            "calibrated_sensor",
            "ego_pose",
            "log",
            "scene",
            "sample",
            "sample_data",
            "sample_annotation",
            "map",
        )
    }
    t["category"].append({"token": "cat_car", "name": "vehicle.car", "description": "", "index": 1})
    t["attribute"].append({"token": "attr_parked", "name": "vehicle.parked", "description": ""})
    t["visibility"].append({"token": "4", "level": "v80-100", "description": ""})
    t["log"].append(
        {
            "token": "log1",
            "logfile": log,
            "vehicle": "n015",
            "date_captured": "2018-07-24",
            "location": "singapore-onenorth",
        }
    )
    (root / "maps").mkdir(parents=True)
    (root / "maps" / "map1.png").write_bytes(b"\x89PNG")
    t["map"].append(
        {
            "token": "map1",
            "log_tokens": ["log1"],
            "category": "semantic_prior",
            "filename": "maps/map1.png",
        }
    )
    for ch in CHANNELS:
        t["sensor"].append(
            {
                "token": f"sen_{ch}",
                "channel": ch,
                "modality": "lidar" if ch.startswith("LIDAR") else "camera",
            }
        )
        t["calibrated_sensor"].append(
            {
                "token": f"cs_{ch}",
                "sensor_token": f"sen_{ch}",
                "translation": [1.0, 0.0, 1.5],
                "rotation": [1.0, 0.0, 0.0, 0.0],
                "camera_intrinsic": []
                if ch.startswith("LIDAR")
                else [[1000, 0, 8], [0, 1000, 4], [0, 0, 1]],
            }
        )
    jpg = jpeg_bytes()
    for i in range(N):
        ts = T0 + 500_000 * i
        p = arc_pose(0.5 * i)
        t["sample"].append(
            {
                "token": f"s{i:02d}",
                "timestamp": ts,
                "scene_token": "scene1",
                "prev": f"s{i - 1:02d}" if i else "",
                "next": f"s{i + 1:02d}" if i < N - 1 else "",
            }
        )
        for ch in CHANNELS:
            tok = f"sd_{ch}_{i:02d}"
            cam = not ch.startswith("LIDAR")
            fname = (
                f"samples/{ch}/{log}__{ch}__{ts}.jpg"
                if cam
                else f"samples/{ch}/{log}__{ch}__{ts}.pcd.bin"
            )
            f = root / fname
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(jpg if cam else b"\0" * 20)
            t["ego_pose"].append(
                {
                    "token": tok,
                    "translation": [p[0], p[1], 0.0],
                    "rotation": quat(p[2]),
                    "timestamp": ts,
                }
            )
            t["sample_data"].append(
                {
                    "token": tok,
                    "sample_token": f"s{i:02d}",
                    "ego_pose_token": tok,
                    "calibrated_sensor_token": f"cs_{ch}",
                    "filename": fname,
                    "fileformat": "jpg" if cam else "pcd",
                    "width": 16 if cam else 0,
                    "height": 8 if cam else 0,
                    "timestamp": ts,
                    "is_key_frame": True,
                    "prev": f"sd_{ch}_{i - 1:02d}" if i else "",
                    "next": f"sd_{ch}_{i + 1:02d}" if i < N - 1 else "",
                }
            )
        t["sample_annotation"].append(
            {
                "token": f"ann{i:02d}",
                "sample_token": f"s{i:02d}",
                "instance_token": "inst1",
                "attribute_tokens": ["attr_parked"],
                "visibility_token": "4",
                "translation": [CAR[0], CAR[1], 0.8],
                "size": [1.9, 4.5, 1.6],
                "rotation": quat(CAR[2]),
                "num_lidar_pts": 10,
                "num_radar_pts": 1,
                "prev": f"ann{i - 1:02d}" if i else "",
                "next": f"ann{i + 1:02d}" if i < N - 1 else "",
            }
        )
    t["instance"].append(
        {
            "token": "inst1",
            "category_token": "cat_car",
            "nbr_annotations": N,
            "first_annotation_token": "ann00",
            "last_annotation_token": f"ann{N - 1:02d}",
        }
    )
    t["scene"].append(
        {
            "token": "scene1",
            "name": "scene-0061",
            "description": "arc",
            "log_token": "log1",
            "nbr_samples": N,
            "first_sample_token": "s00",
            "last_sample_token": f"s{N - 1:02d}",
        }
    )
    write_tables(root, t)
    return t


def write_tables(root: Path, t: dict[str, list[dict]]) -> None:
    (root / VERSION).mkdir(parents=True, exist_ok=True)
    for name, rows in t.items():
        (root / VERSION / f"{name}.json").write_text(json.dumps(rows))


def convert(root: Path, out: Path, skip_bad: bool = False, **kw):
    conv = NuScenesConverter(root, VERSION, out, **kw)
    return run_conversion(conv.units(), conv, out, skip_bad=skip_bad, progress=False)


def test_arc_scene(tmp_path: Path) -> None:
    root = tmp_path / "nuscenes"
    build_tree(root)
    drivelm = tmp_path / "drivelm.json"
    drivelm.write_text(
        json.dumps(
            {
                "scene1": {
                    "scene_description": "",
                    "key_frames": {
                        "s03": {
                            "key_object_infos": {},
                            "image_paths": {},
                            "QA": {
                                "perception": [{"Q": "What is ahead?", "A": "A parked car."}],
                                "prediction": [],
                                "planning": [{"Q": "What to do?", "A": "Keep turning left."}],
                                "behavior": [],
                            },
                        }
                    },
                }
            }
        )
    )
    out = tmp_path / "out"
    summary = convert(root, out, drivelm=drivelm)
    assert summary.written == N - 3 - 10  # keyframes with 3 before and 10 after
    assert summary.skipped == {"filtered: keyframe without 3 earlier / 10 later ones": 13}
    samples = load_samples(out)
    s = samples[0]
    assert s.id == "nuscenes-s03" and s.source == "nuscenes" and s.split == "mini"
    assert s.meta["scene_token"] == "scene1" and s.meta["sample_token"] == "s03"
    np.testing.assert_allclose(
        s.history_array(), expected_local([-1.5, -1.0, -0.5, 0.0]), atol=2e-4
    )
    assert s.history[-1] == (0.0, 0.0, 0.0)
    np.testing.assert_allclose(s.future_array(), expected_local(0.5 * np.arange(1, 11)), atol=2e-4)
    # 3 s ahead on the arc: y = R (1 - cos 0.3) = 2.23 m >= 2 m
    assert s.instruction == "turn left"
    # no CAN bus: velocity from pose differences (chord speed on the arc)
    assert s.ego.vx == pytest.approx(V, abs=0.05) and abs(s.ego.vy) < 0.3
    assert "What is ahead? A: A parked car." in s.reasoning and samples[1].reasoning is None
    assert s.cameras["front"][0].endswith("CAM_FRONT__1532402927647951.jpg")
    (car,) = s.scene.objects
    assert car.kind == "vehicle" and car.box[3:] == (4.5, 1.9)
    assert len(car.future) == 10
    np.testing.assert_allclose(np.array(car.future)[:, :2], [car.box[:2]] * 10, atol=2e-3)
    assert np.allclose(car.velocity, 0.0)


def test_can_bus(tmp_path: Path) -> None:
    root = tmp_path / "nuscenes"
    build_tree(root)
    cb = tmp_path / "can_bus"
    cb.mkdir()
    msgs = [
        {
            "utime": T0 + 20_000 * j,
            "vel": [4.2, 0.1, 0.0],
            "accel": [0.3, 0.5, 9.8],
            "pos": [0, 0, 0],
            "orientation": [1, 0, 0, 0],
            "rotation_rate": [0, 0, 0],
        }
        for j in range(500)
    ]
    (cb / "scene-0061_pose.json").write_text(json.dumps(msgs))
    out = tmp_path / "out"
    convert(root, out)
    s = load_samples(out)[0]
    assert (s.ego.vx, s.ego.vy, s.ego.ax, s.ego.ay) == (4.2, 0.1, 0.3, 0.5)


def test_missing_token(tmp_path: Path) -> None:
    root = tmp_path / "nuscenes"
    t = build_tree(root)
    t["ego_pose"] = [e for e in t["ego_pose"] if e["token"] != "sd_LIDAR_TOP_05"]
    write_tables(root, t)
    with pytest.raises(ConvertError) as e:
        convert(root, tmp_path / "out")
    msg = str(e.value)
    assert "sample_data.json" in msg and "sd_LIDAR_TOP_05" in msg and "ego_pose_token" in msg
    # with --skip-bad the broken scene is counted and the run goes on
    summary = convert(root, tmp_path / "out2", skip_bad=True)
    assert summary.written == 0 and sum(summary.skipped.values()) == 1


def test_missing_image_skips_samples(tmp_path: Path) -> None:
    root = tmp_path / "nuscenes"
    t = build_tree(root)
    sd = next(x for x in t["sample_data"] if x["token"] == "sd_CAM_FRONT_LEFT_04")
    (root / sd["filename"]).unlink()
    with pytest.raises(ConvertError, match="image not found"):
        convert(root, tmp_path / "out")
    summary = convert(root, tmp_path / "out2", skip_bad=True)
    # keyframe 4 is in the camera window of samples 4..7; of the samples 3..5: 4 and 5
    assert summary.written == 1 and summary.skipped["image not found"] == 2


def test_rules() -> None:
    fut = np.zeros((10, 3))
    fut[5, 1] = 2.0
    assert command_from_future(fut) == "turn left"
    fut[5, 1] = -1.99
    assert command_from_future(fut) == "go straight"
    fut[5, 1] = -2.0
    assert command_from_future(fut) == "turn right"
    assert object_class("vehicle.bicycle") == "bicycle"
    assert object_class("human.pedestrian.adult") == "pedestrian"
    assert object_class("movable_object.trafficcone") == "traffic_cone"
    assert object_class("animal") == "generic_object"


DEVKIT_CHECK = """
import json, sys
from nuscenes.nuscenes import NuScenes
nusc = NuScenes(version="v1.0-mini", dataroot=sys.argv[1], verbose=False)
out = {}
for s in nusc.sample:
    sd = nusc.get("sample_data", s["data"]["LIDAR_TOP"])
    ep = nusc.get("ego_pose", sd["ego_pose_token"])
    out[s["token"]] = {"xy": ep["translation"][:2], "anns": len(s["anns"]),
                       "front": nusc.get("sample_data", s["data"]["CAM_FRONT"])["filename"]}
print(json.dumps(out))
"""


@pytest.mark.skipif(
    not os.environ.get("AUTOVLA_NUSCENES_DEVKIT_PYTHON"),
    reason="set AUTOVLA_NUSCENES_DEVKIT_PYTHON to a Python with nuscenes-devkit (numpy < 2)",
)
def test_official_devkit_loads_fixture(tmp_path: Path) -> None:
    """The fixture is a real nuScenes layout: the official devkit loads it and agrees."""
    root = tmp_path / "nuscenes"
    t = build_tree(root)
    py = os.environ["AUTOVLA_NUSCENES_DEVKIT_PYTHON"]
    res = subprocess.run([py, "-c", DEVKIT_CHECK, str(root)], capture_output=True, text=True,
                         timeout=120, check=True)  # fmt: skip
    seen = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(seen) == {s["token"] for s in t["sample"]}
    out = tmp_path / "out"
    convert(root, out)
    for s in load_samples(out):
        dev = seen[s.meta["sample_token"]]
        assert dev["anns"] == len(s.scene.objects)
        assert s.cameras["front"][-1].endswith(dev["front"])


def _pose(t: dict, token: str) -> dict:
    return next(e for e in t["ego_pose"] if e["token"] == token)


@pytest.mark.parametrize(
    "break_it, file, field, message",
    [
        (lambda t: t["sample"][7].update(next="s04"), "sample.json", "next", "loops back"),
        (lambda t: t["sample"][5].pop("token"), "sample.json", "token", "missing"),
        (lambda t: t.update(sample={"s00": 1}), "sample.json", "", "must be a JSON list"),
        (lambda t: t["sample"].append(3), "sample.json", "", "must be an object"),
        (
            lambda t: _pose(t, "sd_LIDAR_TOP_05").update(translation=[float("nan"), 0, 0]),
            "ego_pose.json",
            "translation",
            "finite",
        ),
        (
            lambda t: _pose(t, "sd_LIDAR_TOP_05").update(rotation="north"),
            "ego_pose.json",
            "rotation",
            "not numbers",
        ),
        (lambda t: t["sample"][4].pop("timestamp"), "sample.json", "timestamp", "missing"),
        (
            lambda t: t["sample_annotation"][4].update(size=[1.0, "big", 1.0]),
            "sample_annotation.json",
            "size",
            "not numbers",
        ),
        (
            lambda t: t["sample_data"][0].pop("calibrated_sensor_token"),
            "sample_data.json",
            "calibrated_sensor_token",
            "missing",
        ),
    ],
)
def test_bad_tables_are_named_errors(tmp_path: Path, break_it, file, field, message) -> None:
    """A loop in `next`, rows without tokens, tables that are not lists, NaN or text where a
    number belongs: a ConvertError naming file, record and field, never a hang or a
    traceback; --skip-bad counts what it can step over."""
    root = tmp_path / "nuscenes"
    t = build_tree(root)
    break_it(t)
    write_tables(root, t)
    with pytest.raises(ConvertError) as e:
        convert(root, tmp_path / "out")
    assert e.value.file.endswith(file) and e.value.field == field
    assert message in e.value.reason
    try:
        summary = convert(root, tmp_path / "out2", skip_bad=True)
    except ConvertError:
        return  # a broken table is fatal: it cannot be stepped over
    assert sum(v for k, v in summary.skipped.items() if not k.startswith("filtered")) >= 1


def test_instruction_rules(tmp_path: Path) -> None:
    """UniAD: the offset at 3 s; reference: the pose 8 s ahead (the last keyframe of the scene
    when it ends sooner). The scene drives straight for 6 s, then turns right."""
    root = tmp_path / "nuscenes"
    t = build_tree(root)
    t["sample_annotation"] = []  # the parked car lies near the arc, far from this drive
    by_token = {e["token"]: e for e in t["ego_pose"]}
    for i in range(N):
        tt = 0.5 * i
        x, y = 5.0 * tt, -0.0 if tt <= 6.0 else -1.5 * (tt - 6.0) ** 2
        for ch in CHANNELS:
            e = by_token[f"sd_{ch}_{i:02d}"]
            e["translation"], e["rotation"] = [x, y, 0.0], quat(0.0)
    write_tables(root, t)
    uni = {s.meta["sample_token"]: s.instruction for s in _convert(root, tmp_path / "u", "uniad")}
    ref = {
        s.meta["sample_token"]: s.instruction for s in _convert(root, tmp_path / "r", "reference")
    }
    # s03 (t = 1.5 s): at 3 s ahead (4.5 s) still straight; 8 s ahead is 9.5 s, but the scene
    # ends at 7.5 s (keyframe 15): y = -1.5 * 1.5^2 = -3.4 m -> right
    assert uni["s03"] == "go straight" and ref["s03"] == "turn right"
    # s05 (2.5 s): 3 s ahead is 5.5 s, straight; reference: right
    assert uni["s05"] == "go straight" and ref["s05"] == "turn right"
    with pytest.raises(ValueError, match="instruction rule"):
        NuScenesConverter(root, VERSION, tmp_path / "x", instruction_rule="bogus")


REF = "reference"


def _convert(root: Path, out: Path, rule: str):
    convert(root, out, instruction_rule=rule)
    samples = load_samples(out)
    assert all(s.meta["instruction_rule"] == rule for s in samples)
    return samples


def test_objects_present_at_each_future_time(tmp_path: Path) -> None:
    """An annotation gap keeps the later poses (null in the gap); an instance that appears
    only later is a future object: every object present at a future time is recorded."""
    root = tmp_path / "nuscenes"
    t = build_tree(root)
    t["sample_annotation"] = [a for a in t["sample_annotation"] if a["token"] != "ann05"]
    t["instance"].append(
        {"token": "inst2", "category_token": "cat_car", "nbr_annotations": 2,
         "first_annotation_token": "bnn06", "last_annotation_token": "bnn07"}
    )  # fmt: skip
    for i in (6, 7):
        t["sample_annotation"].append(
            {"token": f"bnn{i:02d}", "sample_token": f"s{i:02d}", "instance_token": "inst2",
             "attribute_tokens": [], "visibility_token": "4", "translation": [*CAR[:2], 0.8],
             "size": [2.0, 5.0, 1.6], "rotation": quat(CAR[2]), "num_lidar_pts": 3,
             "num_radar_pts": 0, "prev": "bnn06" if i == 7 else "",
             "next": "bnn07" if i == 6 else ""}
        )  # fmt: skip
    write_tables(root, t)
    out = tmp_path / "out"
    convert(root, out)
    s = load_samples(out)[0]  # s03: steps 1..10 are keyframes 4..13
    assert s.scene.objects_tracked
    (car,) = s.scene.objects
    assert len(car.future) == 10 and car.future[1] is None  # keyframe 5 not annotated
    assert all(p is not None for k, p in enumerate(car.future) if k != 1)
    (new,) = s.scene.future_objects
    assert new.id == "inst2" and new.size == (5.0, 2.0)
    assert new.future[:2] == [None, None] and new.future[2] is not None and len(new.future) == 4


def test_copy_images_and_can_bus_paths_stay_inside(tmp_path: Path) -> None:
    """A `filename` with ../ is referenced in place but never copied outside --out; a scene
    name with ../ never picks a CAN-bus file outside the CAN-bus folder."""
    from autovla.data.sources.runner import ImageOptions

    root = tmp_path / "d1" / "d2" / "nuscenes"
    t = build_tree(root)
    sd = next(x for x in t["sample_data"] if x["token"] == "sd_CAM_FRONT_03")
    (tmp_path / "x.jpg").write_bytes(jpeg_bytes())
    sd["filename"] = "../../../x.jpg"  # images/nuscenes/../../../x.jpg: one level above --out
    t["scene"][0]["name"] = "../../escape"
    write_tables(root, t)
    (tmp_path / "d1" / "can_bus").mkdir()
    out = tmp_path / "o" / "out"
    with pytest.raises(ConvertError, match="CAN-bus file") as e:
        convert(root, out, can_bus=tmp_path / "d1" / "can_bus")
    assert e.value.field == "name"
    t["scene"][0]["name"] = "scene-0061"
    write_tables(root, t)
    with pytest.raises(ConvertError, match="outside --out") as e:
        convert(root, out, images=ImageOptions(copy=True))
    assert e.value.field == "filename" and e.value.record == "sd_CAM_FRONT_03"
    assert not (tmp_path / "o" / "x.jpg").exists()
    assert convert(root, tmp_path / "o" / "in-place").written == 3  # reading in place is fine
