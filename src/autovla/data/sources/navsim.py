"""NAVSIM / OpenScene v1.1 logs -> DrivingSample manifests.

A log is a pickle of frame dicts at 2 Hz (docs/navsim.md). A scene is a window of 4 history
+ 10 future frames whose current frame is index 3 (its token is the scene token); windows
start every `stride` frames (14: non-overlapping). A scene filter keeps only the scenes whose
token it lists: NAVSIM's navtrain / navtest filters list scenes starting at every frame
(`frame_interval: 1`), so convert with stride 1 for them.
History = the 4 poses of frames 0..3 in the current ego frame (the last is (0, 0, 0));
future = frames 4..13 (0.5 s ... 5 s).

The split written to the samples is the name of the folder the log lies in
(`navsim_logs/<split>/<log>.pkl`, or `--logs` itself when it is that folder) unless given.

Pickles can run code when loaded. Logs are read only from the root the user names, with a
restricted unpickler (`autovla.safe_pickle`, every pickle protocol); `trust_pickles=True`
lifts the restriction for logs from a trusted source that need other classes.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from autovla import safe_pickle
from autovla.data.meta_actions import meta_action
from autovla.data.schema import DrivingSample, EgoState, SceneFacts, SceneObject, round_poses
from autovla.data.sources.runner import (
    ConvertError,
    Filtered,
    ImageOptions,
    Unit,
    numbers,
    place_image,
    record_errors,
)
from autovla.geometry import to_global, to_local, wrap_angle, yaw_from_quaternion

HISTORY, FUTURE = 4, 10
CAMERAS = {"front": "CAM_F0", "front_left": "CAM_L0", "front_right": "CAM_R0"}
COMMANDS = ("turn left", "go straight", "turn right", "unknown")  # one-hot order of the logs
CLASSES = {
    "vehicle": "vehicle",
    "pedestrian": "pedestrian",
    "bicycle": "bicycle",
    "traffic_cone": "traffic_cone",
    "barrier": "barrier",
    "czone_sign": "static",
    "generic_object": "generic_object",
}


def load_log(path: Path, trust_pickles: bool = False) -> list[dict]:
    try:
        # from bytes, not the file: a length prefix in a corrupt pickle cannot make the
        # unpickler allocate more than the file holds
        raw = path.read_bytes()
        frames = pickle.loads(raw) if trust_pickles else safe_pickle.load(raw)
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        ImportError,
        IndexError,
        KeyError,
        RecursionError,
    ) as e:
        raise ConvertError(path, None, "", f"unreadable log pickle: {e}") from None
    if not isinstance(frames, list) or not all(isinstance(x, dict) for x in frames):
        raise ConvertError(path, None, "", "unreadable log pickle: expected a list of frame dicts")
    return frames


def _token(frame: dict) -> str | None:
    token = frame.get("token")
    return None if token is None else str(token)[:200]


def _has_roadblocks(frame: dict) -> bool:
    rb = frame.get("roadblock_ids")
    return isinstance(rb, (list, tuple, np.ndarray)) and len(rb) > 0


def _pose(frame: dict, path: Path) -> np.ndarray:
    tok = _token(frame)
    for key in ("ego2global_translation", "ego2global_rotation"):
        if key not in frame:
            raise ConvertError(path, tok, key, "missing field")
    t = numbers(frame["ego2global_translation"], path, tok, "ego2global_translation", 3)
    q = numbers(frame["ego2global_rotation"], path, tok, "ego2global_rotation", 4)
    if not np.linalg.norm(q) > 0:
        raise ConvertError(path, tok, "ego2global_rotation", "a zero quaternion")
    return np.array([t[0], t[1], float(yaw_from_quaternion(q))])


def split_of_log(log_path: Path, logs_root: Path) -> str:
    """The split a log belongs to: its folder under `logs_root`, else `logs_root`'s name
    (`navsim_logs/<split>/` given directly)."""
    rel = log_path.resolve().relative_to(logs_root.resolve())
    return rel.parts[0] if len(rel.parts) > 1 else logs_root.resolve().name


class NavsimConverter:
    """Callable over units (one log pickle each); see module docstring."""

    def __init__(
        self,
        logs: str | Path,
        sensor_blobs: str | Path,
        out: str | Path,
        split: str | None = None,
        stride: int = HISTORY + FUTURE,
        require_roadblocks: bool = True,
        images: ImageOptions | None = None,
        trust_pickles: bool = False,
        scene_filter: set[str] | None = None,
    ):
        self.logs = Path(logs).resolve()
        self.blobs = Path(sensor_blobs)
        self.out = Path(out)
        self.split = split
        self.stride = stride
        self.require_roadblocks = require_roadblocks
        self.images = images or ImageOptions()
        self.trust_pickles = trust_pickles
        # scene tokens to keep (NAVSIM's navtrain / navtest filters), None = every scene
        self.scene_filter = None if scene_filter is None else frozenset(scene_filter)

    def units(self) -> list[Unit]:
        if not self.logs.is_dir():
            raise FileNotFoundError(f"log directory not found: {self.logs}")
        files = sorted(self.logs.rglob("*.pkl"))
        # Only files that really lie under the root the user named (no symlink escapes).
        files = [f for f in files if f.resolve().is_relative_to(self.logs)]
        return [Unit(i, f.stem, f) for i, f in enumerate(files)]

    def __call__(self, unit: Unit) -> Iterator[DrivingSample | ConvertError | Filtered]:
        path: Path = unit.payload  # type: ignore[assignment]
        frames = load_log(path, self.trust_pickles)
        split_dir = split_of_log(path, self.logs)
        n = HISTORY + FUTURE
        if len(frames) < n:
            yield Filtered(f"log shorter than {n} frames")
        for start in range(0, len(frames) - n + 1, self.stride):
            window = frames[start : start + n]
            cur = window[HISTORY - 1]
            if self.scene_filter is not None and str(cur.get("token")) not in self.scene_filter:
                yield Filtered("not in the scene filter")
                continue
            if self.require_roadblocks and not _has_roadblocks(cur):
                yield Filtered("no roadblock ids")
                continue
            try:
                with record_errors(path, _token(cur)):
                    yield self._scene(window, path, split_dir)
            except ConvertError as e:
                yield e

    def _scene(self, window: list[dict], path: Path, split_dir: str) -> DrivingSample:
        cur = window[HISTORY - 1]
        token = str(cur.get("token", ""))
        # Missing frames: timestamps must step by ~0.5 s and frame_idx (when present) by 1.
        ts = np.array(
            [numbers(f.get("timestamp", 0), path, _token(f), "timestamp", 1)[0] for f in window]
        )
        ts = ts * 1e-6
        gaps = np.diff(ts)
        if np.any(np.abs(gaps - 0.5) > 0.15):
            bad = int(np.argmax(np.abs(gaps - 0.5) > 0.15))
            raise ConvertError(
                path,
                token,
                "timestamp",
                f"missing frames: {gaps[bad]:.2f} s gap after frame {window[bad].get('token')}",
            )
        poses = np.stack([_pose(f, path) for f in window])
        local = to_local(poses, poses[HISTORY - 1])
        history, future = local[:HISTORY], local[HISTORY:]
        dyn = numbers(cur.get("ego_dynamic_state", [0, 0, 0, 0]), path, token, "ego_dynamic_state")
        if dyn.size < 4:
            raise ConvertError(path, token, "ego_dynamic_state", f"{dyn.size} numbers, expected 4")
        ego = EgoState(vx=dyn[0], vy=dyn[1], ax=dyn[2], ay=dyn[3])
        cmd = numbers(cur.get("driving_command", [0, 0, 0, 1]), path, token, "driving_command")
        instruction = (
            COMMANDS[int(np.argmax(cmd))] if cmd.size == 4 and cmd.max() > 0 else "unknown"
        )
        cameras = {
            name: [self._image(f, cam, path, split_dir) for f in window[:HISTORY]]
            for name, cam in CAMERAS.items()
        }
        return DrivingSample(
            id=f"navsim-{token}",
            source="navsim",
            split=self.split or split_dir,
            cameras=cameras,
            ego=ego,
            instruction=instruction,
            history=round_poses(history),
            future=round_poses(future),
            meta_action=meta_action(future, ego.speed),
            scene=SceneFacts(objects=self._objects(window, poses, path)),
            meta={
                "scene_token": token,
                "log_name": cur.get("log_name", path.stem),
                "map_location": cur.get("map_location"),
                "timestamp_us": int(cur.get("timestamp", 0)),
            },
        )

    def _image(self, frame: dict, cam: str, path: Path, split_dir: str) -> str:
        token = frame.get("token")
        try:
            rel = frame["cams"][cam]["data_path"]
        except (KeyError, TypeError):
            raise ConvertError(path, token, f"cams.{cam}.data_path", "missing camera") from None
        if not isinstance(rel, str) or not rel:
            raise ConvertError(path, token, f"cams.{cam}.data_path", "not a path")
        # sensor_blobs/<split>/<data_path>; the split is the log's folder under --logs, or the
        # name of --logs itself when it points at navsim_logs/<split>; or blobs given down to it
        split = split_dir
        src = next((p for p in (self.blobs / split / rel, self.blobs / rel) if p.is_file()), None)
        if src is None:
            raise ConvertError(path, token, f"cams.{cam}.data_path", f"image not found: {rel}")
        dest = f"images/navsim/{split}/{rel}"
        try:
            return place_image(src, self.out, dest, self.images)
        except ConvertError as e:  # a data path that would leave --out when copied
            raise ConvertError(path, token, f"cams.{cam}.data_path", e.reason) from None

    def _objects(self, window: list[dict], poses: np.ndarray, path: Path) -> list[SceneObject]:
        cur = window[HISTORY - 1]
        anns = cur.get("anns")
        if not anns:
            return []
        tok = _token(cur)
        try:
            boxes = numbers(anns["gt_boxes"], path, tok, "anns.gt_boxes").reshape(-1, 7)
            names = list(anns["gt_names"])
            v3 = anns.get("gt_velocity_3d", np.zeros((len(boxes), 3)))
            vel = numbers(v3, path, tok, "anns.gt_velocity_3d").reshape(-1, 3)
            tracks = [str(t) for t in anns.get("track_tokens", range(len(boxes)))]
        except (KeyError, ValueError, TypeError) as e:
            if isinstance(e, ConvertError):
                raise
            raise ConvertError(path, tok, "anns", f"bad annotations: {e}") from None
        futures = self._object_futures(window, poses, set(tracks), path)
        objs = []
        for box, name, v, tid in zip(boxes, names, vel, tracks, strict=False):
            kind = CLASSES.get(str(name), "generic_object")
            if box[3] <= 0 or box[4] <= 0:
                continue
            fut = futures.get(tid)
            objs.append(
                SceneObject(
                    id=tid,
                    kind=kind,
                    box=(
                        *(round(float(x), 3) for x in (box[0], box[1])),
                        round(float(wrap_angle(box[6])), 4),
                        round(float(box[3]), 3),
                        round(float(box[4]), 3),
                    ),
                    velocity=(round(float(v[0]), 3), round(float(v[1]), 3)),
                    future=round_poses(fut) if fut is not None and len(fut) else None,
                )
            )
        return objs

    def _object_futures(
        self, window: list[dict], poses: np.ndarray, tracks: set[str], path: Path
    ) -> dict[str, np.ndarray]:
        """Track poses in future frames, in the current ego frame; cut at the first gap."""
        out: dict[str, list] = {t: [] for t in tracks}
        alive = set(tracks)
        for k in range(HISTORY, HISTORY + FUTURE):
            anns = window[k].get("anns") or {}
            ids = [str(t) for t in anns.get("track_tokens", [])]
            boxes = numbers(
                anns.get("gt_boxes", np.zeros((0, 7))), path, _token(window[k]), "anns.gt_boxes"
            ).reshape(-1, 7)
            here = dict(zip(ids, boxes, strict=False))
            for t in list(alive):
                if t not in here:
                    alive.discard(t)
                    continue
                b = here[t]
                # box in frame k's ego frame -> global -> current ego frame
                g = to_global(b[[0, 1, 6]], poses[k])
                out[t].append(to_local(g, poses[HISTORY - 1]))
        return {t: np.array(v) for t, v in out.items() if v}
