"""Waymo Open Dataset vision-based E2E driving (WOD-E2E) tfrecords -> DrivingSample manifests.

One `E2EDFrame` per record (docs/real-datasets.md). Per frame:
* cameras: FRONT, FRONT_LEFT, FRONT_RIGHT JPEG bytes written to
  `images/waymo/<context>/<timestamp>_<camera>.jpg` under the output (they cannot be
  referenced in place; `<context>` is the context name made a plain file name,
  `autovla.paths.safe_name`). 4 frames per camera at 2 Hz, as the method reads them: the
  frames of the same segment (context name) nearest -1.5, -1.0, -0.5 s (within
  `tolerance_s`) and this one. Records are not in time order within a file and a segment may
  span files, so every file is indexed first (context name, timestamp, file, offset); a frame
  without that much history in its segment is skipped and counted ("filtered: ...");
* history: past states (4 Hz, last = now) at -1.5, -1.0, -0.5, 0 s, the last being (0, 0, 0);
  headings from central differences of the 4 Hz path (a backward difference lags half a
  step on curves);
* ego state: velocity and acceleration of the last past state;
* future: the 20 points at 4 Hz (+0.25 ... +5 s) -> every 2nd point (0.5 ... 5 s), headings
  from central differences of the 4 Hz path (backward at 5 s, the last point); absent in the
  test split (future None);
* intent -> instruction; rated preference trajectories (score >= 0) -> `preference` (4 Hz).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError

from autovla.data.meta_actions import meta_action
from autovla.data.schema import DrivingSample, EgoState, Preference, round_poses
from autovla.data.sources.runner import (
    ConvertError,
    Filtered,
    ImageOptions,
    Unit,
    record_errors,
    write_image_bytes,
)
from autovla.data.sources.tfrecord import iter_records, read_record_at
from autovla.data.sources.waymo_proto import messages
from autovla.geometry import headings_from_path
from autovla.paths import safe_name

CAMERAS = {1: "front", 2: "front_left", 3: "front_right"}  # CameraName enum values
INTENTS = {0: "unknown", 1: "go straight", 2: "turn left", 3: "turn right"}
FUTURE_HZ = 4
HISTORY = 4  # poses (and camera frames) at 2 Hz, the last is now
HISTORY_OFFSETS_S = (-1.5, -1.0, -0.5)  # the earlier camera frames
TOLERANCE_S = 0.1  # a history frame may be this far from its nominal time
FUTURE_POINTS = 20


@dataclass(frozen=True)
class FrameRef:
    """Where one record lies: enough to read it again for its images."""

    timestamp: int  # microseconds
    file: Path
    offset: int
    index: int


def _xy(states, path: Path, rid: str, field: str) -> np.ndarray:
    x, y = np.asarray(states.pos_x, np.float64), np.asarray(states.pos_y, np.float64)
    if len(x) != len(y):
        raise ConvertError(path, rid, f"{field}.pos_y", f"{len(x)} pos_x but {len(y)} pos_y")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ConvertError(path, rid, f"{field}.pos_x", "positions must be finite (NaN or inf)")
    return np.stack([x, y], -1)


def _split_of(path: Path) -> str:
    name = path.name
    for prefix, split in (("training", "train"), ("validation", "val"), ("test", "test")):
        if name.startswith(prefix):
            return split
    return "train"


def _context(msg, path: Path, index: int) -> str:
    return msg.frame.context.name or f"{path.stem}-{index}"


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
        tolerance_s: float = TOLERANCE_S,
    ):
        self.files = sorted(Path(f) for f in files)
        self.out = Path(out)
        self.split = split
        # Image bytes are always written; "copy" only decides whether they are resized.
        self.images = images or ImageOptions()
        self.clusters = clusters or {}
        self.verify_crc = verify_crc
        self.tolerance_us = round(tolerance_s * 1e6)
        self.segments: dict[str, list[FrameRef]] | None = None

    def units(self) -> list[Unit]:
        self.index()
        return [Unit(i, f.name, f) for i, f in enumerate(self.files)]

    def index(self) -> dict[str, list[FrameRef]]:
        """Every readable record of every file by context name, in time order (built once;
        workers inherit it). Unreadable records are left to the conversion to report."""
        if self.segments is not None:
            return self.segments
        header = messages()["E2EDFrameHeader"]
        seg: dict[str, list[FrameRef]] = defaultdict(list)
        for path in self.files:
            try:
                for i, offset, data in iter_records(path, verify=False):
                    if isinstance(data, ConvertError):
                        continue
                    try:
                        msg = header.FromString(data)
                    except DecodeError:
                        continue
                    ref = FrameRef(int(msg.frame.timestamp_micros), path, offset, i)
                    seg[_context(msg, path, i)].append(ref)
            except ConvertError:
                continue  # a truncated file: its readable records are indexed
        self.segments = {k: sorted(v, key=lambda r: (r.timestamp, str(r.file), r.offset))
                         for k, v in seg.items()}  # fmt: skip
        return self.segments

    def __call__(self, unit: Unit) -> Iterator[DrivingSample | ConvertError | Filtered]:
        path: Path = unit.payload  # type: ignore[assignment]
        self.index()
        cls = messages()["E2EDFrame"]
        for i, _, data in iter_records(path, verify=self.verify_crc):
            if isinstance(data, ConvertError):
                yield data
                continue
            try:
                frame = cls.FromString(data)
            except DecodeError as e:
                yield ConvertError(path, f"#{i}", "", f"not an E2EDFrame: {e}")
                continue
            ctx = _context(frame, path, i)
            rid = f"#{i} ({ctx} @ {int(frame.frame.timestamp_micros)})"
            try:
                with record_errors(path, rid):
                    history = self.history_frames(ctx, int(frame.frame.timestamp_micros))
                    if isinstance(history, Filtered):
                        yield history
                        continue
                    yield self._sample(frame, path, i, history)
            except ConvertError as e:
                yield e

    def history_frames(self, ctx: str, ts: int) -> list[FrameRef] | Filtered:
        """The segment's frames nearest -1.5, -1.0, -0.5 s before `ts`, oldest first."""
        frames = (self.segments or {}).get(ctx, [])
        times = [r.timestamp for r in frames]
        out = []
        for dt in HISTORY_OFFSETS_S:
            want = ts + round(dt * 1e6)
            j = bisect.bisect_left(times, want)
            near = frames[max(0, j - 1) : j + 1]
            best = min(near, key=lambda r: abs(r.timestamp - want), default=None)
            if best is None or abs(best.timestamp - want) > self.tolerance_us:
                return Filtered(f"no frame {dt:g} s earlier in its segment")
            out.append(best)
        return out

    def _history_images(self, ref: FrameRef) -> dict[int, bytes]:
        """Camera JPEGs of an earlier frame, read again from its file."""
        data = read_record_at(ref.file, ref.offset, ref.index, verify=self.verify_crc)
        try:
            msg = messages()["E2EDFrame"].FromString(data)
        except DecodeError as e:
            raise ConvertError(ref.file, f"#{ref.index}", "", f"not an E2EDFrame: {e}") from None
        return {img.name: img.image for img in msg.frame.images}

    def _camera_paths(self, msg, path: Path, rid: str, ctx: str, ts: int,
                      history: list[FrameRef]) -> dict[str, list[str]]:  # fmt: skip
        """Write (once) and list the JPEGs of the history frames and this one, oldest first."""
        folder = safe_name(ctx)
        cameras: dict[str, list[str]] = {name: [] for name in CAMERAS.values()}
        for ref in [*history, None]:
            frame_ts = ts if ref is None else ref.timestamp
            dests = {num: f"images/waymo/{folder}/{frame_ts}_{name}.jpg"
                     for num, name in CAMERAS.items()}  # fmt: skip
            if ref is None:
                images, where, where_rid = {im.name: im.image for im in msg.frame.images}, path, rid
            elif all((self.out / d).is_file() for d in dests.values()):
                images = None  # an earlier frame whose images an earlier sample wrote
            else:
                images, where, where_rid = self._history_images(ref), ref.file, f"#{ref.index}"
            for num, name in CAMERAS.items():
                if images is not None:
                    if not images.get(num):
                        raise ConvertError(
                            where, where_rid, f"frame.images[{name}]", "missing camera image"
                        )
                    write_image_bytes(images[num], self.out, dests[num], self.images)
                cameras[name].append(dests[num])
        return cameras

    def _sample(self, msg, path: Path, index: int, history_refs: list[FrameRef]) -> DrivingSample:
        ctx = _context(msg, path, index)
        ts = int(msg.frame.timestamp_micros)
        rid = f"#{index} ({ctx} @ {ts})"
        past = _xy(msg.past_states, path, rid, "past_states")
        need = 2 * (HISTORY - 1) + 1
        if len(past) < need:
            raise ConvertError(path, rid, "past_states.pos_x", f"{len(past)} past states < {need}")
        hist_xy = past[-need::2]  # -1.5, -1.0, -0.5, 0 s
        rel = past - past[0]  # the path starts at its first point (headings_from_path's origin)
        heads = headings_from_path(rel, central=True)[-need::2]
        heads[-1] = 0.0  # the ego frame: heading now is 0 by definition
        history = np.column_stack([hist_xy, heads])

        s = msg.past_states
        last = len(past) - 1

        def at(values, field: str) -> float:
            v = float(values[last]) if len(values) > last else 0.0
            if not np.isfinite(v):
                raise ConvertError(path, rid, f"past_states.{field}", "must be finite (NaN or inf)")
            return v

        ego = EgoState(
            vx=at(s.vel_x, "vel_x"),
            vy=at(s.vel_y, "vel_y"),
            ax=at(s.accel_x, "accel_x"),
            ay=at(s.accel_y, "accel_y"),
        )

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
            h = headings_from_path(fut_xy, initial=0.0, central=True)
            future = np.column_stack([fut_xy, h])[1::2]  # 0.5, 1.0, ... 5.0 s

        cameras = self._camera_paths(msg, path, rid, ctx, ts, history_refs)
        return DrivingSample(
            id=f"waymo-{safe_name(ctx)}-{ts}",
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
            if not np.isfinite(t.preference_score):
                raise ConvertError(
                    path, rid, f"preference_trajectories[{k}].preference_score", "not finite"
                )
            xy = _xy(t, path, rid, f"preference_trajectories[{k}]")
            trajs.append([(round(float(a), 4), round(float(b), 4)) for a, b in xy])
            scores.append(float(t.preference_score))
        if not trajs:
            return None
        return Preference(
            trajectories=trajs, scores=scores, hz=FUTURE_HZ, cluster=self.clusters.get(ctx)
        )
