"""Waymo Open Dataset vision-based E2E driving (WOD-E2E) tfrecords -> DrivingSample manifests.

One `E2EDFrame` per record (shared FORMATS.md). Per frame:
* cameras: FRONT, FRONT_LEFT, FRONT_RIGHT JPEG bytes written to
  `images/waymo/<context>/<timestamp>_<camera>.jpg` under the output (they cannot be
  referenced in place). Only the current frame's images: whether earlier records hold the
  history frames is not documented, so samples carry 1 frame per camera;
* history: past states (4 Hz, last = now) at -1.5, -1.0, -0.5, 0 s, the last being (0, 0, 0);
  headings from the path (direction of travel between consecutive 4 Hz points);
* ego state: velocity and acceleration of the last past state;
* future: the 20 points at 4 Hz (+0.25 ... +5 s) -> every 2nd point (0.5 ... 5 s), headings
  from the 4 Hz path; absent in the test split (future None);
* intent -> instruction; rated preference trajectories (score >= 0) -> `preference` (4 Hz).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError

from autovla.data.meta_actions import meta_action
from autovla.data.schema import DrivingSample, EgoState, Preference, round_poses
from autovla.data.sources.runner import ConvertError, ImageOptions, Unit, write_image_bytes
from autovla.data.sources.tfrecord import read_tfrecord
from autovla.data.sources.waymo_proto import messages
from autovla.geometry import headings_from_path

CAMERAS = {1: "front", 2: "front_left", 3: "front_right"}  # CameraName enum values
INTENTS = {0: "unknown", 1: "go straight", 2: "turn left", 3: "turn right"}
FUTURE_HZ = 4
HISTORY = 4  # poses at 2 Hz, the last is now
FUTURE_POINTS = 20


def _xy(states, path: Path, rid: str, field: str) -> np.ndarray:
    x, y = np.asarray(states.pos_x, np.float64), np.asarray(states.pos_y, np.float64)
    if len(x) != len(y):
        raise ConvertError(path, rid, f"{field}.pos_y", f"{len(x)} pos_x but {len(y)} pos_y")
    return np.stack([x, y], -1)


def _split_of(path: Path) -> str:
    name = path.name
    for prefix, split in (("training", "train"), ("validation", "val"), ("test", "test")):
        if name.startswith(prefix):
            return split
    return "train"


class WaymoConverter:
    """Callable over units (one tfrecord file each); see module docstring."""

    def __init__(
        self,
        files: list[Path],
        out: str | Path,
        split: str | None = None,
        images: ImageOptions | None = None,
        clusters: dict[str, str] | None = None,
        verify_crc: bool = True,
    ):
        self.files = sorted(Path(f) for f in files)
        self.out = Path(out)
        self.split = split
        # Image bytes are always written; "copy" only decides whether they are resized.
        self.images = images or ImageOptions()
        self.clusters = clusters or {}
        self.verify_crc = verify_crc

    def units(self) -> list[Unit]:
        return [Unit(i, f.name, f) for i, f in enumerate(self.files)]

    def __call__(self, unit: Unit) -> Iterator[DrivingSample | ConvertError]:
        path: Path = unit.payload  # type: ignore[assignment]
        cls = messages()["E2EDFrame"]
        for i, data in read_tfrecord(path, verify=self.verify_crc):
            if isinstance(data, ConvertError):
                yield data
                continue
            try:
                frame = cls.FromString(data)
            except DecodeError as e:
                yield ConvertError(path, f"#{i}", "", f"not an E2EDFrame: {e}")
                continue
            try:
                yield self._sample(frame, path, i)
            except ConvertError as e:
                yield e

    def _sample(self, msg, path: Path, index: int) -> DrivingSample:
        ctx = msg.frame.context.name or f"{path.stem}-{index}"
        ts = int(msg.frame.timestamp_micros)
        rid = f"#{index} ({ctx} @ {ts})"
        past = _xy(msg.past_states, path, rid, "past_states")
        need = 2 * (HISTORY - 1) + 1
        if len(past) < need:
            raise ConvertError(path, rid, "past_states.pos_x", f"{len(past)} past states < {need}")
        hist_xy = past[-need::2]  # -1.5, -1.0, -0.5, 0 s
        rel = past - past[0]
        first = np.arctan2(rel[1, 1], rel[1, 0]) if len(rel) > 1 else 0.0
        heads = headings_from_path(rel, initial=float(first))[-need::2]
        heads[-1] = 0.0  # the ego frame: heading now is 0 by definition
        history = np.column_stack([hist_xy, heads])

        s = msg.past_states
        last = len(past) - 1

        def at(values) -> float:
            return float(values[last]) if len(values) > last else 0.0

        ego = EgoState(vx=at(s.vel_x), vy=at(s.vel_y), ax=at(s.accel_x), ay=at(s.accel_y))

        fut_xy = _xy(msg.future_states, path, rid, "future_states")
        future = None
        if len(fut_xy):
            if len(fut_xy) != FUTURE_POINTS:
                raise ConvertError(
                    path,
                    rid,
                    "future_states.pos_x",
                    f"{len(fut_xy)} future states, expected {FUTURE_POINTS}",
                )
            h = headings_from_path(fut_xy, initial=0.0)
            future = np.column_stack([fut_xy, h])[1::2]  # 0.5, 1.0, ... 5.0 s

        cameras = {}
        images = {img.name: img.image for img in msg.frame.images}
        for num, name in CAMERAS.items():
            if not images.get(num):
                raise ConvertError(path, rid, f"frame.images[{name}]", "missing camera image")
            rel_dest = f"images/waymo/{ctx}/{ts}_{name}.jpg"
            cameras[name] = [write_image_bytes(images[num], self.out, rel_dest, self.images)]

        return DrivingSample(
            id=f"waymo-{ctx}-{ts}",
            source="waymo",
            split=self.split or _split_of(path),
            cameras=cameras,
            ego=ego,
            instruction=INTENTS.get(int(msg.intent), "unknown"),
            history=round_poses(history),
            future=round_poses(future) if future is not None else None,
            meta_action=meta_action(future, ego.speed) if future is not None else None,
            preference=self._preference(msg, path, rid, ctx),
            meta={"context_name": ctx, "timestamp_micros": ts, "file": path.name, "record": index},
        )

    def _preference(self, msg, path: Path, rid: str, ctx: str) -> Preference | None:
        trajs, scores = [], []
        for k, t in enumerate(msg.preference_trajectories):
            if not t.HasField("preference_score") or t.preference_score < 0:
                continue  # unrated
            xy = _xy(t, path, rid, f"preference_trajectories[{k}]")
            trajs.append([(round(float(a), 4), round(float(b), 4)) for a, b in xy])
            scores.append(float(t.preference_score))
        if not trajs:
            return None
        return Preference(
            trajectories=trajs, scores=scores, hz=FUTURE_HZ, cluster=self.clusters.get(ctx)
        )
