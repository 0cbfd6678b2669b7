"""nuScenes v1.0 (JSON tables, no devkit) -> DrivingSample manifests.

Keyframes (2 Hz) of each scene; a sample needs 3 earlier and 10 later keyframes in its scene.
* history: ego poses of keyframes k-3..k in the current ego frame (the last is (0, 0, 0));
  future: keyframes k+1..k+10 (0.5 ... 5 s). Ego poses are those of the LIDAR_TOP keyframe;
* ego velocity/acceleration from the CAN-bus expansion (`can_bus/<scene>_pose.json`, the
  message nearest in time) when present, else from differences of the keyframe poses;
* instruction, one of two rules (`instruction_rule`, docs/real-datasets.md):
  "reference" (default, the AutoVLA reference preprocessing): the lateral offset y of the
  ego pose 8 s ahead (16 keyframes; the scene's last keyframe when it ends sooner);
  "uniad" (UniAD / ST-P3): y of the pose at 3 s (the 6th future pose). Both: y >= 2 m ->
  "turn left", y <= -2 m -> "turn right", else "go straight";
* annotations of the current keyframe -> scene objects (ego frame), velocity from the
  neighbouring annotations, future poses from the same instance's annotations at each future
  keyframe (null where it is not annotated); instances annotated only at later keyframes ->
  `scene.future_objects`. So the BEV collision metric can count every object present at each
  future time (docs/method.md section 9);
* DriveLM question-answers (optional) -> reasoning text.

The tables are loaded whole (as the devkit does); samples are written scene by scene. Every
table must be a JSON list of objects with a string `token`; a missing field, a value that is
not a finite number, a dangling reference or a `next` chain that loops is a ConvertError
naming the table file, the record's token and the field.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from autovla.data.meta_actions import meta_action
from autovla.data.schema import (
    DrivingSample,
    EgoState,
    FutureObject,
    SceneFacts,
    SceneObject,
    round_poses,
)
from autovla.data.sources.runner import (
    ConvertError,
    Filtered,
    ImageOptions,
    Unit,
    numbers,
    place_image,
    record_errors,
)
from autovla.geometry import rotation, to_local, wrap_angle, yaw_from_quaternion
from autovla.paths import UnsafePathError, inside

HISTORY, FUTURE = 4, 10
CAMERAS = {"front": "CAM_FRONT", "front_left": "CAM_FRONT_LEFT", "front_right": "CAM_FRONT_RIGHT"}
POSE_CHANNEL = "LIDAR_TOP"
COMMAND_STEP = 5  # the 6th future pose, 3 s (UniAD rule)
REFERENCE_STEPS = 16  # keyframes ahead, 8 s (reference rule)
COMMAND_OFFSET = 2.0  # m
INSTRUCTION_RULES = ("reference", "uniad")
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


def command_from_offset(y: float) -> str:
    """The instruction from a lateral offset (m, left positive) of a pose ahead."""
    if y >= COMMAND_OFFSET:
        return "turn left"
    if y <= -COMMAND_OFFSET:
        return "turn right"
    return "go straight"


def command_from_future(future: np.ndarray) -> str:
    """The UniAD / ST-P3 rule: lateral offset of the future pose at 3 s."""
    return command_from_offset(float(future[COMMAND_STEP, 1]))


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
        instruction_rule: str = "reference",
        scenes: set[str] | None = None,
    ):
        if instruction_rule not in INSTRUCTION_RULES:
            valid = ", ".join(INSTRUCTION_RULES)
            raise ValueError(f"unknown instruction rule {instruction_rule!r}; valid: {valid}")
        self.root = Path(dataroot)
        self.version = version
        self.out = Path(out)
        self.split = split or version.removeprefix("v1.0-")
        self.images = images or ImageOptions()
        self.instruction_rule = instruction_rule
        self.scenes = None if scenes is None else frozenset(scenes)  # scene names to convert
        cb = [Path(can_bus)] if can_bus else [self.root / "can_bus", self.root.parent / "can_bus"]
        self.can_bus = next((p for p in cb if p.is_dir()), None)
        self.drivelm = self._drivelm(Path(drivelm)) if drivelm else {}
        self.t = {name: self._table(name) for name in TABLES}
        self._index()

    # --- tables ----------------------------------------------------------------------
    def _file(self, table: str) -> Path:
        return self.root / self.version / f"{table}.json"

    def _table(self, name: str) -> dict[str, dict]:
        path = self._file(name)
        if not path.is_file():
            raise FileNotFoundError(f"nuScenes table not found: {path}")
        rows = _read_json(path)
        if not isinstance(rows, list):
            raise ConvertError(path, None, "", f"a table must be a JSON list, got {_kind(rows)}")
        out: dict[str, dict] = {}
        for i, r in enumerate(rows):
            if not isinstance(r, dict):
                raise ConvertError(path, f"#{i}", "", f"a record must be an object, got {_kind(r)}")
            tok = r.get("token")
            if not isinstance(tok, str) or not tok:
                raise ConvertError(path, f"#{i}", "token", "missing or not a string")
            out[tok] = r
        return out

    def _drivelm(self, path: Path) -> dict:
        data = _read_json(path)
        if not isinstance(data, dict):
            raise ConvertError(path, None, "", f"expected a JSON object, got {_kind(data)}")
        return data

    def field(self, table: str, row: dict, key: str, kind: type | tuple[type, ...] = str):
        """row[key], checked to be of `kind`; else a ConvertError naming table, token, field."""
        value = row.get(key)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            what = "missing field" if key not in row else f"expected {_names(kind)}"
            raise ConvertError(self._file(table), row.get("token"), key, what)
        return value

    def nums(self, table: str, row: dict, key: str, size: int | None = None) -> np.ndarray:
        """row[key] as finite numbers (`size` of them when given)."""
        if key not in row:
            raise ConvertError(self._file(table), row.get("token"), key, "missing field")
        return numbers(row[key], self._file(table), row.get("token"), key, size)

    def get(self, table: str, token: str, ref_table: str, ref_token: str, field: str) -> dict:
        """A record by token; a dangling reference names the referring file, record and field."""
        try:
            return self.t[table][token]
        except (KeyError, TypeError):
            raise ConvertError(
                self._file(ref_table),
                ref_token,
                field,
                f"references missing token {token!r} in {table}.json",
            ) from None

    def ref(self, table: str, row: dict, key: str, target: str) -> dict:
        """The record of `target` that row[key] refers to."""
        return self.get(target, self.field(table, row, key), table, row["token"], key)

    def _index(self) -> None:
        self.keyframes: dict[tuple[str, str], dict] = {}
        for sd in self.t["sample_data"].values():
            if not sd.get("is_key_frame"):
                continue
            cs = self.ref("sample_data", sd, "calibrated_sensor_token", "calibrated_sensor")
            sensor = self.ref("calibrated_sensor", cs, "sensor_token", "sensor")
            channel = self.field("sensor", sensor, "channel")
            self.keyframes[(self.field("sample_data", sd, "sample_token"), channel)] = sd
        self.anns: dict[str, list[dict]] = defaultdict(list)
        for a in self.t["sample_annotation"].values():
            self.anns[self.field("sample_annotation", a, "sample_token")].append(a)

    def units(self) -> list[Unit]:
        for sc in self.t["scene"].values():
            self.field("scene", sc, "name")
        scenes = sorted(self.t["scene"].values(), key=lambda s: s["name"])
        # indices over every scene of the version, so a scene keeps its manifest name and
        # shard whichever scene list selects it
        units = [Unit(i, s["name"], s["token"]) for i, s in enumerate(scenes)]
        if self.scenes is None:
            return units
        missing = sorted(self.scenes - {u.name for u in units})
        if missing:
            shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise ValueError(
                f"{self._file('scene')}: {len(missing)} listed scene(s) not in {self.version}: "
                f"{shown}"
            )
        return [u for u in units if u.name in self.scenes]

    # --- conversion ------------------------------------------------------------------
    def scene_samples(self, scene: dict) -> list[dict]:
        """The keyframes of a scene in `next` order; a chain that loops is a ConvertError."""
        samples: list[dict] = []
        seen: set[str] = set()
        tok = self.field("scene", scene, "first_sample_token")
        ref = ("scene", scene["token"], "first_sample_token")
        while tok:
            if tok in seen:
                raise ConvertError(
                    self._file(ref[0]), ref[1], ref[2], f"the sample chain loops back to {tok!r}"
                )
            seen.add(tok)
            s = self.get("sample", tok, *ref)
            samples.append(s)
            nxt = s.get("next", "")
            if not isinstance(nxt, str):
                raise ConvertError(self._file("sample"), s["token"], "next", "expected a string")
            ref, tok = ("sample", s["token"], "next"), nxt
        return samples

    def __call__(self, unit: Unit) -> Iterator[DrivingSample | ConvertError | Filtered]:
        scene = self.t["scene"][unit.payload]
        samples = self.scene_samples(scene)
        with record_errors(self._file("scene"), scene["token"]):
            poses = np.stack([self._ego_pose(s) for s in samples])
            can = self._can_bus(scene["name"])
        edge = min(len(samples), HISTORY - 1 + FUTURE)
        if edge:
            yield Filtered(f"keyframe without {HISTORY - 1} earlier / {FUTURE} later ones", edge)
        for k in range(HISTORY - 1, len(samples) - FUTURE):
            try:
                with record_errors(self._file("sample"), samples[k]["token"]):
                    yield self._sample(scene, samples, poses, k, can)
            except ConvertError as e:
                yield e

    def _ego_pose(self, sample: dict) -> np.ndarray:
        sd = self.keyframes.get((sample["token"], POSE_CHANNEL))
        if sd is None:
            raise ConvertError(
                self._file("sample"),
                sample["token"],
                "",
                f"no {POSE_CHANNEL} keyframe in sample_data.json",
            )
        ep = self.ref("sample_data", sd, "ego_pose_token", "ego_pose")
        t = self.nums("ego_pose", ep, "translation", 3)
        q = self.nums("ego_pose", ep, "rotation", 4)
        return np.array([t[0], t[1], float(yaw_from_quaternion(q))])

    def _can_bus(self, scene_name: str) -> np.ndarray | None:
        """CAN-bus pose messages (N, 5): utime, vx, vy, ax, ay, sorted by time; or None."""
        if self.can_bus is None:
            return None
        try:  # the scene name comes from data: it must name a file inside the CAN-bus folder
            path = inside(self.can_bus, f"{scene_name}_pose.json", "CAN-bus file")
        except UnsafePathError as e:
            raise ConvertError(self._file("scene"), scene_name, "name", str(e)) from None
        if not path.is_file():
            return None
        msgs = _read_json(path)
        if not isinstance(msgs, list):
            raise ConvertError(path, None, "", f"expected a JSON list, got {_kind(msgs)}")
        rows = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict):
                raise ConvertError(path, f"#{i}", "", f"expected an object, got {_kind(m)}")
            for key in ("utime", "vel", "accel"):
                if key not in m:
                    raise ConvertError(path, f"#{i}", key, "missing field")
            v = numbers(m["vel"], path, f"#{i}", "vel")
            a = numbers(m["accel"], path, f"#{i}", "accel")
            if v.size < 2 or a.size < 2:
                raise ConvertError(path, f"#{i}", "vel", "expected at least 2 numbers")
            rows.append([numbers(m["utime"], path, f"#{i}", "utime", 1)[0], v[0], v[1], a[0], a[1]])
        if not rows:
            return None
        arr = np.asarray(rows, dtype=np.float64)
        return arr[np.argsort(arr[:, 0], kind="stable")]

    def _timestamp(self, sample: dict) -> float:
        return float(self.nums("sample", sample, "timestamp", 1)[0])

    def _ego_state(self, samples, local: np.ndarray, k: int, can) -> EgoState:
        ts = self._timestamp(samples[k])
        if can is not None:
            m = can[int(np.argmin(np.abs(can[:, 0] - ts)))]
            if abs(m[0] - ts) < 100_000:  # within 0.1 s
                return EgoState(vx=m[1], vy=m[2], ax=m[3], ay=m[4])
        # differences of the keyframe poses, in the current ego frame
        t = np.array([self._timestamp(samples[k - j]) for j in (2, 1, 0)]) * 1e-6
        if not np.all(np.diff(t) > 0):
            raise ConvertError(
                self._file("sample"), samples[k]["token"], "timestamp", "times not increasing"
            )
        p = local[HISTORY - 3 : HISTORY, :2]
        v_now = (p[2] - p[1]) / (t[2] - t[1])
        v_prev = (p[1] - p[0]) / (t[1] - t[0])
        acc = (v_now - v_prev) / (0.5 * (t[2] - t[0]))
        return EgoState(vx=v_now[0], vy=v_now[1], ax=acc[0], ay=acc[1])

    def instruction(self, poses: np.ndarray, k: int, future: np.ndarray) -> str:
        """The instruction of keyframe k by the converter's rule (see module docstring)."""
        if self.instruction_rule == "uniad":
            return command_from_future(future)
        ahead = poses[min(k + REFERENCE_STEPS, len(poses) - 1)]
        return command_from_offset(float(to_local(ahead, poses[k])[1]))

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
        frames = self.drivelm.get(scene["token"], {})
        qa = frames.get("key_frames", {}).get(cur["token"]) if isinstance(frames, dict) else None
        objects, arrivals = self._objects(samples, poses, k)
        return DrivingSample(
            id=f"nuscenes-{cur['token']}",
            source="nuscenes",
            split=self.split,
            cameras=cameras,
            ego=ego,
            instruction=self.instruction(poses, k, future),
            history=round_poses(history),
            future=round_poses(future),
            reasoning=drivelm_reasoning(qa) if isinstance(qa, dict) else None,
            meta_action=meta_action(future, ego.speed),
            scene=SceneFacts(objects=objects, future_objects=arrivals, objects_tracked=True),
            meta={
                "sample_token": cur["token"],
                "scene_token": scene["token"],
                "scene_name": scene["name"],
                "location": log.get("location") if isinstance(log.get("location"), str) else None,
                "timestamp_us": int(self._timestamp(cur)),
                "instruction_rule": self.instruction_rule,
            },
        )

    def _image(self, sample: dict, channel: str) -> str:
        sd = self.keyframes.get((sample["token"], channel))
        if sd is None:
            raise ConvertError(
                self._file("sample"),
                sample["token"],
                "",
                f"no {channel} keyframe in sample_data.json",
            )
        fname = self.field("sample_data", sd, "filename")
        src = self.root / fname
        if not src.is_file():
            raise ConvertError(
                self._file("sample_data"), sd["token"], "filename", f"image not found: {fname}"
            )
        try:
            return place_image(src, self.out, f"images/nuscenes/{fname}", self.images)
        except ConvertError as e:  # a file name that would leave --out when copied
            file = self._file("sample_data")
            raise ConvertError(file, sd["token"], "filename", e.reason) from None

    def _objects(self, samples, poses, k) -> tuple[list[SceneObject], list[FutureObject]]:
        """Objects annotated now (with their poses at each future keyframe) and those
        annotated only at a later keyframe."""
        origin = poses[k]
        # instance -> {step: annotation}, step 0 = now
        track: dict[str, dict[int, dict]] = defaultdict(dict)
        for j in range(FUTURE + 1):
            for a in self.anns.get(samples[k + j]["token"], []):
                track[self.field("sample_annotation", a, "instance_token")][j] = a
        objs, arrivals = [], []
        for inst_tok, by_step in track.items():
            first = by_step[min(by_step)]
            inst = self.ref("sample_annotation", first, "instance_token", "instance")
            cat = self.ref("instance", inst, "category_token", "category")
            kind = object_class(self.field("category", cat, "name"))
            size = self.nums("sample_annotation", first, "size", 3)
            w, length = float(size[0]), float(size[1])
            if w <= 0 or length <= 0:
                continue
            fut = [
                self._box(by_step[j], origin) if j in by_step else None
                for j in range(1, FUTURE + 1)
            ]
            while fut and fut[-1] is None:
                fut.pop()
            poses_out = [None if f is None else round_poses(f[None])[0] for f in fut]
            if 0 not in by_step:
                arrivals.append(
                    FutureObject(
                        id=inst_tok, kind=kind, size=(round(length, 3), round(w, 3)),
                        future=poses_out,
                    )
                )  # fmt: skip
                continue
            a = by_step[0]
            box = self._box(a, origin)
            objs.append(
                SceneObject(
                    id=inst_tok,
                    kind=kind,
                    box=(
                        *(round(float(x), 3) for x in box[:2]),
                        round(float(box[2]), 4),
                        round(length, 3),
                        round(w, 3),
                    ),
                    velocity=tuple(round(float(x), 3) for x in self._velocity(a, origin)),
                    future=poses_out or None,
                )
            )
        return objs, arrivals

    def _box(self, a: dict, origin: np.ndarray) -> np.ndarray:
        t = self.nums("sample_annotation", a, "translation", 3)
        q = self.nums("sample_annotation", a, "rotation", 4)
        out = to_local(np.array([t[0], t[1], float(yaw_from_quaternion(q))]), origin)
        out[2] = wrap_angle(out[2])
        return out

    def _velocity(self, a: dict, origin: np.ndarray) -> np.ndarray:
        """Global velocity from the neighbouring annotations, rotated into the ego frame."""
        ann = self.t["sample_annotation"]
        prev, nxt = a.get("prev"), a.get("next")
        prev = ann.get(prev) if isinstance(prev, str) else None
        nxt = ann.get(nxt) if isinstance(nxt, str) else None
        first, last = prev or a, nxt or a
        if first is last:
            return np.zeros(2)
        s0 = self.t["sample"].get(first.get("sample_token"), {})
        s1 = self.t["sample"].get(last.get("sample_token"), {})
        if "timestamp" not in s0 or "timestamp" not in s1:
            return np.zeros(2)
        t0, t1 = self._timestamp(s0), self._timestamp(s1)
        if t1 <= t0:
            return np.zeros(2)
        p0 = self.nums("sample_annotation", first, "translation", 3)[:2]
        p1 = self.nums("sample_annotation", last, "translation", 3)[:2]
        return rotation(-origin[2]) @ ((p1 - p0) / ((t1 - t0) * 1e-6))


def _read_json(path: Path):
    """A JSON file; malformed, too deep or not UTF-8 -> ConvertError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise ConvertError(path, None, "", f"malformed JSON: {e}") from None


def _kind(value) -> str:
    names = {dict: "an object", list: "a list", str: "a string"}
    return names.get(type(value), type(value).__name__)


def _names(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)
