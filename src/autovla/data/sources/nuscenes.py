"""nuScenes v1.0 (JSON tables, no devkit) -> DrivingSample manifests.

Keyframes (2 Hz) of each scene; a sample needs 3 earlier and 10 later keyframes in its scene.
* history: ego poses of keyframes k-3..k in the current ego frame (the last is (0, 0, 0));
  future: keyframes k+1..k+10 (0.5 ... 5 s). Ego poses are those of the LIDAR_TOP keyframe;
* ego velocity/acceleration from the CAN-bus expansion (`can_bus/<scene>_pose.json`, the
  message nearest in time) when present, else from differences of the keyframe poses;
* instruction (the UniAD / ST-P3 rule): lateral offset y of the future pose at 3 s (the 6th
  pose): y >= 2 m -> "turn left", y <= -2 m -> "turn right", else "go straight";
* annotations of the current keyframe -> scene objects (ego frame), velocity from the
  neighbouring annotations, future poses following the instance's `next` annotations over
  the future keyframes (cut at the first gap), so the BEV collision metric can be computed;
* DriveLM question-answers (optional) -> reasoning text.

The tables are loaded whole (as the devkit does); samples are written scene by scene.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from autovla.data.meta_actions import meta_action
from autovla.data.schema import DrivingSample, EgoState, SceneFacts, SceneObject, round_poses
from autovla.data.sources.runner import (
    ConvertError,
    Filtered,
    ImageOptions,
    Unit,
    place_image,
)
from autovla.geometry import rotation, to_local, wrap_angle, yaw_from_quaternion

HISTORY, FUTURE = 4, 10
CAMERAS = {"front": "CAM_FRONT", "front_left": "CAM_FRONT_LEFT", "front_right": "CAM_FRONT_RIGHT"}
POSE_CHANNEL = "LIDAR_TOP"
COMMAND_STEP = 5  # the 6th future pose, 3 s
COMMAND_OFFSET = 2.0  # m
TABLES = (
    "scene",
    "sample",
    "sample_data",
    "ego_pose",
    "calibrated_sensor",
    "sensor",
    "log",
    "sample_annotation",
    "instance",
    "category",
)


def object_class(category: str) -> str:
    """nuScenes category name -> one of OBJECT_CLASSES."""
    if category in ("vehicle.bicycle", "vehicle.motorcycle"):
        return "bicycle"
    if category.startswith("vehicle."):
        return "vehicle"
    if category.startswith("human.pedestrian"):
        return "pedestrian"
    if category == "movable_object.trafficcone":
        return "traffic_cone"
    if category == "movable_object.barrier":
        return "barrier"
    if category.startswith("static_object"):
        return "static"
    return "generic_object"


def command_from_future(future: np.ndarray) -> str:
    y = float(future[COMMAND_STEP, 1])
    if y >= COMMAND_OFFSET:
        return "turn left"
    if y <= -COMMAND_OFFSET:
        return "turn right"
    return "go straight"


def drivelm_reasoning(entry: dict) -> str | None:
    """DriveLM key-frame QA -> reasoning text, one 'Q -> A' line per pair, grouped by stage."""
    qa = entry.get("QA") or {}
    parts = []
    for stage in ("perception", "prediction", "planning", "behavior"):
        lines = [f"Q: {p['Q']} A: {p['A']}" for p in qa.get(stage, []) if "Q" in p and "A" in p]
        if lines:
            parts.append(f"{stage.capitalize()}:\n" + "\n".join(lines))
    return "\n".join(parts) or None


class NuScenesConverter:
    """Callable over units (one scene each); see module docstring."""

    def __init__(
        self,
        dataroot: str | Path,
        version: str,
        out: str | Path,
        split: str | None = None,
        can_bus: str | Path | None = None,
        drivelm: str | Path | None = None,
        images: ImageOptions | None = None,
    ):
        self.root = Path(dataroot)
        self.version = version
        self.out = Path(out)
        self.split = split or version.removeprefix("v1.0-")
        self.images = images or ImageOptions()
        cb = [Path(can_bus)] if can_bus else [self.root / "can_bus", self.root.parent / "can_bus"]
        self.can_bus = next((p for p in cb if p.is_dir()), None)
        self.drivelm = json.loads(Path(drivelm).read_text()) if drivelm else {}
        self.t = {name: self._table(name) for name in TABLES}
        self._index()

    # --- tables ----------------------------------------------------------------------
    def _table(self, name: str) -> dict[str, dict]:
        path = self.root / self.version / f"{name}.json"
        if not path.is_file():
            raise FileNotFoundError(f"nuScenes table not found: {path}")
        try:
            rows = json.loads(path.read_text())
        except ValueError as e:
            raise ConvertError(path, None, "", f"malformed JSON: {e}") from None
        return {r["token"]: r for r in rows}

    def get(self, table: str, token: str, ref_table: str, ref_token: str, field: str) -> dict:
        """A record by token; a dangling reference names the referring file, record and field."""
        try:
            return self.t[table][token]
        except KeyError:
            raise ConvertError(
                self.root / self.version / f"{ref_table}.json",
                ref_token,
                field,
                f"references missing token {token!r} in {table}.json",
            ) from None

    def _index(self) -> None:
        self.keyframes: dict[tuple[str, str], dict] = {}
        for sd in self.t["sample_data"].values():
            if not sd.get("is_key_frame"):
                continue
            cs = self.get(
                "calibrated_sensor",
                sd["calibrated_sensor_token"],
                "sample_data",
                sd["token"],
                "calibrated_sensor_token",
            )
            sensor = self.get(
                "sensor", cs["sensor_token"], "calibrated_sensor", cs["token"], "sensor_token"
            )
            self.keyframes[(sd["sample_token"], sensor["channel"])] = sd
        self.anns: dict[str, list[dict]] = defaultdict(list)
        for a in self.t["sample_annotation"].values():
            self.anns[a["sample_token"]].append(a)

    def units(self) -> list[Unit]:
        scenes = sorted(self.t["scene"].values(), key=lambda s: s["name"])
        return [Unit(i, s["name"], s["token"]) for i, s in enumerate(scenes)]

    # --- conversion ------------------------------------------------------------------
    def __call__(self, unit: Unit) -> Iterator[DrivingSample | ConvertError | Filtered]:
        scene = self.t["scene"][unit.payload]
        samples, tok = [], scene["first_sample_token"]
        ref = ("scene", scene["token"], "first_sample_token")
        while tok:
            s = self.get("sample", tok, *ref)
            samples.append(s)
            ref, tok = ("sample", s["token"], "next"), s["next"]
        poses = np.stack([self._ego_pose(s) for s in samples])
        can = self._can_bus(scene["name"])
        edge = min(len(samples), HISTORY - 1 + FUTURE)
        if edge:
            yield Filtered(f"keyframe without {HISTORY - 1} earlier / {FUTURE} later ones", edge)
        for k in range(HISTORY - 1, len(samples) - FUTURE):
            try:
                yield self._sample(scene, samples, poses, k, can)
            except ConvertError as e:
                yield e

    def _ego_pose(self, sample: dict) -> np.ndarray:
        sd = self.keyframes.get((sample["token"], POSE_CHANNEL))
        if sd is None:
            raise ConvertError(
                self.root / self.version / "sample.json",
                sample["token"],
                "",
                f"no {POSE_CHANNEL} keyframe in sample_data.json",
            )
        ep = self.get(
            "ego_pose", sd["ego_pose_token"], "sample_data", sd["token"], "ego_pose_token"
        )
        return np.array(
            [ep["translation"][0], ep["translation"][1], float(yaw_from_quaternion(ep["rotation"]))]
        )

    def _can_bus(self, scene_name: str) -> list[dict] | None:
        if self.can_bus is None:
            return None
        path = self.can_bus / f"{scene_name}_pose.json"
        if not path.is_file():
            return None
        try:
            msgs = json.loads(path.read_text())
        except ValueError as e:
            raise ConvertError(path, None, "", f"malformed JSON: {e}") from None
        return sorted(msgs, key=lambda m: m["utime"]) or None

    def _ego_state(self, samples, local: np.ndarray, k: int, can) -> EgoState:
        ts = samples[k]["timestamp"]
        if can:
            m = min(can, key=lambda m: abs(m["utime"] - ts))
            if abs(m["utime"] - ts) < 100_000:  # within 0.1 s
                v, a = m["vel"], m["accel"]
                return EgoState(vx=v[0], vy=v[1], ax=a[0], ay=a[1])
        # differences of the keyframe poses, in the current ego frame
        t = np.array([samples[k - j]["timestamp"] for j in (2, 1, 0)], np.float64) * 1e-6
        p = local[HISTORY - 3 : HISTORY, :2]
        v_now = (p[2] - p[1]) / (t[2] - t[1])
        v_prev = (p[1] - p[0]) / (t[1] - t[0])
        acc = (v_now - v_prev) / (0.5 * (t[2] - t[0]))
        return EgoState(vx=v_now[0], vy=v_now[1], ax=acc[0], ay=acc[1])

    def _sample(self, scene, samples, poses, k, can) -> DrivingSample:
        cur = samples[k]
        local = to_local(poses[k - HISTORY + 1 : k + FUTURE + 1], poses[k])
        history, future = local[:HISTORY], local[HISTORY:]
        ego = self._ego_state(samples, local, k, can)
        cameras = {
            name: [self._image(samples[j], ch) for j in range(k - HISTORY + 1, k + 1)]
            for name, ch in CAMERAS.items()
        }
        log = self.t["log"].get(scene.get("log_token", ""), {})
        qa = self.drivelm.get(scene["token"], {}).get("key_frames", {}).get(cur["token"])
        return DrivingSample(
            id=f"nuscenes-{cur['token']}",
            source="nuscenes",
            split=self.split,
            cameras=cameras,
            ego=ego,
            instruction=command_from_future(future),
            history=round_poses(history),
            future=round_poses(future),
            reasoning=drivelm_reasoning(qa) if qa else None,
            meta_action=meta_action(future, ego.speed),
            scene=SceneFacts(objects=self._objects(samples, poses, k)),
            meta={
                "sample_token": cur["token"],
                "scene_token": scene["token"],
                "scene_name": scene["name"],
                "location": log.get("location"),
                "timestamp_us": int(cur["timestamp"]),
            },
        )

    def _image(self, sample: dict, channel: str) -> str:
        sd = self.keyframes.get((sample["token"], channel))
        if sd is None:
            raise ConvertError(
                self.root / self.version / "sample.json",
                sample["token"],
                "",
                f"no {channel} keyframe in sample_data.json",
            )
        src = self.root / sd["filename"]
        if not src.is_file():
            raise ConvertError(
                self.root / self.version / "sample_data.json",
                sd["token"],
                "filename",
                f"image not found: {sd['filename']}",
            )
        return place_image(src, self.out, f"images/nuscenes/{sd['filename']}", self.images)

    def _objects(self, samples, poses, k) -> list[SceneObject]:
        origin = poses[k]
        objs = []
        for a in self.anns.get(samples[k]["token"], []):
            inst = self.get(
                "instance", a["instance_token"], "sample_annotation", a["token"], "instance_token"
            )
            cat = self.get(
                "category", inst["category_token"], "instance", inst["token"], "category_token"
            )
            box = self._box(a, origin)
            w, length = float(a["size"][0]), float(a["size"][1])
            if w <= 0 or length <= 0:
                continue
            fut, nxt = [], a.get("next", "")
            for j in range(1, FUTURE + 1):
                b = self.t["sample_annotation"].get(nxt) if nxt else None
                if b is None or b["sample_token"] != samples[k + j]["token"]:
                    break
                fut.append(self._box(b, origin))
                nxt = b.get("next", "")
            objs.append(
                SceneObject(
                    id=a["instance_token"],
                    kind=object_class(cat["name"]),
                    box=(
                        *(round(float(x), 3) for x in box[:2]),
                        round(float(box[2]), 4),
                        round(length, 3),
                        round(w, 3),
                    ),
                    velocity=tuple(round(float(x), 3) for x in self._velocity(a, origin)),
                    future=round_poses(np.array(fut)) if fut else None,
                )
            )
        return objs

    def _box(self, a: dict, origin: np.ndarray) -> np.ndarray:
        g = np.array(
            [a["translation"][0], a["translation"][1], float(yaw_from_quaternion(a["rotation"]))]
        )
        out = to_local(g, origin)
        out[2] = wrap_angle(out[2])
        return out

    def _velocity(self, a: dict, origin: np.ndarray) -> np.ndarray:
        """Global velocity from the neighbouring annotations, rotated into the ego frame."""
        prev = self.t["sample_annotation"].get(a.get("prev") or "")
        nxt = self.t["sample_annotation"].get(a.get("next") or "")
        first, last = prev or a, nxt or a
        if first is last:
            return np.zeros(2)
        t0 = self.t["sample"].get(first["sample_token"], {}).get("timestamp")
        t1 = self.t["sample"].get(last["sample_token"], {}).get("timestamp")
        if t0 is None or t1 is None or t1 <= t0:
            return np.zeros(2)
        v = (np.asarray(last["translation"][:2]) - np.asarray(first["translation"][:2])) / (
            (t1 - t0) * 1e-6
        )
        return rotation(-origin[2]) @ v
