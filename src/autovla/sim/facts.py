"""From a world instant to the sample's parts: scene facts, scoring sidecar, rendered frames.

Shared by dataset export (states read from a rollout log) and the closed loop (states read
from the live world), so both produce the same schema.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from autovla.data.schema import SceneFacts, SceneObject
from autovla.geometry import to_local, wrap_angle
from autovla.io import atomic_path
from autovla.sim.agents import EGO_FRONT
from autovla.sim.map import RoadMap
from autovla.sim.render import (
    BoxItem,
    Camera,
    light_items,
    render_camera,
    static_mesh,
    vehicle_item,
)
from autovla.sim.scenarios import Scenario
from autovla.sim.scoring import (
    AGENT_KINDS,
    F_DRIVABLE,
    F_JUNCTION,
    F_LANE,
    GRID_RES,
    GRID_SHAPE,
    GRID_X0,
    GRID_Y0,
    ScoringData,
)

LANE_BAND = 1.2  # m either side of a centreline counts as "in a lane"
FACT_RANGE = (-30.0, 80.0, 40.0)  # x min, x max, |y| max of objects listed in scene facts


@dataclass
class Instant:
    """The world at one time, in world coordinates."""

    t: float
    ego: np.ndarray  # x, y, yaw, v, a
    ego_s: float
    ego_d: float
    agents: np.ndarray  # (A, 3) centre poses
    v: np.ndarray
    a: np.ndarray
    cutting_in: np.ndarray
    lights: list[str]


class SceneStatic:
    """Per-scenario caches: the render mesh and world-frame geometry for the grid."""

    def __init__(self, scn: Scenario):
        m: RoadMap = scn.world.map
        self.mesh = static_mesh(m)
        self.drivable = [p if len(p) <= 8 else _decimate_strip(p) for p in m.drivable]
        self.centrelines = [ln.path.xy[::4] for ln in m.lanes]  # 2 m spacing
        self.junction = m.intersection


def _decimate_strip(poly: np.ndarray, step: int = 4) -> np.ndarray:
    k = len(poly) // 2
    idx = np.unique(np.concatenate([np.arange(0, k, step), [k - 1]]))
    return np.concatenate([poly[:k][idx], poly[k:][::-1][idx][::-1]], 0)


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """NPZ with fixed zip timestamps, so the same arrays give the same bytes."""
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue(), compresslevel=1)


def rasterise(static: SceneStatic, pose: np.ndarray) -> np.ndarray:
    """Drivable / lane-band / junction flags on the ego-frame grid."""
    h, w = GRID_SHAPE
    out = np.zeros((h, w), dtype=np.uint8)

    def pix(poly: np.ndarray) -> list[tuple[float, float]]:
        p = to_local(poly, pose)
        cols = (p[:, 1] - GRID_Y0) / GRID_RES
        rows = (p[:, 0] - GRID_X0) / GRID_RES
        return list(zip(cols.tolist(), rows.tolist(), strict=True))

    groups = [(static.drivable, F_DRIVABLE)]
    if static.junction is not None:
        groups.append(([static.junction], F_JUNCTION))
    for polys, flag in groups:
        img = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(img)
        for poly in polys:
            draw.polygon(pix(poly), fill=1)
        out |= np.asarray(img, dtype=np.uint8) * np.uint8(flag)
    # lane bands: thick centrelines, clipped to the grid window
    img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)
    width = max(1, round(2 * LANE_BAND / GRID_RES))
    for line in static.centrelines:
        p = to_local(line, pose)
        keep = (p[:, 0] > GRID_X0 - 10) & (p[:, 0] < GRID_X0 + h * GRID_RES + 10)
        keep &= (p[:, 1] > GRID_Y0 - 10) & (p[:, 1] < GRID_Y0 + w * GRID_RES + 10)
        if keep.sum() < 2:
            continue
        p = p[keep]
        pts = list(
            zip(
                ((p[:, 1] - GRID_Y0) / GRID_RES).tolist(),
                ((p[:, 0] - GRID_X0) / GRID_RES).tolist(),
                strict=True,
            )
        )
        draw.line(pts, fill=1, width=width, joint="curve")
    out |= np.asarray(img, dtype=np.uint8) * np.uint8(F_LANE)
    return out


def _relation(scn: Scenario, inst: Instant, j: int, lane_w: float) -> str:
    agent = scn.world.agents[j]
    route = scn.expert.route
    s, d = route.project(inst.agents[j, :2])
    if agent.kind == "pedestrian":
        return "crossing" if scn.world.map.on_road(inst.agents[j, :2][None])[0] else "sidewalk"
    h = float(np.interp(s, route.s, np.unwrap(route.heading)))
    rel = abs(float(wrap_angle(inst.agents[j, 2] - h)))
    if rel > np.radians(150):
        return "oncoming"
    if rel > np.radians(30):
        return "crossing"
    ego_lane = round(inst.ego_d / lane_w)
    k = round(d / lane_w) - ego_lane
    if k == 0:
        return "same_lane_ahead" if s > inst.ego_s else "same_lane_behind"
    side = "left" if k > 0 else "right"
    return f"{side}_lane" if abs(k) == 1 else f"far_{side}"


def _behaviour(scn: Scenario, inst: Instant, j: int) -> str:
    agent = scn.world.agents[j]
    if agent.kind == "pedestrian":
        return "crossing" if inst.v[j] > 0.3 else "waiting"
    if agent.static:
        return "stopped" if agent.kind == "vehicle" else "static"
    if inst.cutting_in[j]:
        return "cutting_in"
    if inst.a[j] < -1.5 and inst.v[j] > 0.3:
        return "braking"
    if inst.v[j] < 0.3:
        return "stopped"
    return "moving"


def traffic_light(scn: Scenario, inst: Instant) -> tuple[str, float | None]:
    """The light controlling the ego's approach and the distance to its stop line."""
    front = inst.ego_s + EGO_FRONT
    for s_line, li in scn.world.stop_positions(scn.expert.route):
        dist = s_line - front
        if -0.5 < dist < 100.0:
            return inst.lights[li], round(float(dist), 2)
    return "none", None


def scene_facts(scn: Scenario, inst: Instant) -> SceneFacts:
    m = scn.world.map
    pose = inst.ego[:3]
    local = to_local(inst.agents, pose) if len(inst.agents) else np.zeros((0, 3))
    objects = []
    for j, agent in enumerate(scn.world.agents):
        x, y, h = local[j]
        if not (FACT_RANGE[0] < x < FACT_RANGE[1] and abs(y) < FACT_RANGE[2]):
            continue
        vel = inst.v[j] * np.array([np.cos(h), np.sin(h)])
        objects.append(
            SceneObject(
                id=agent.id,
                kind=agent.kind,
                box=(
                    round(x, 3),
                    round(y, 3),
                    round(float(h), 4),
                    round(agent.length, 3),
                    round(agent.width, 3),
                ),
                velocity=(round(float(vel[0]), 3), round(float(vel[1]), 3)),
                lane_relation=_relation(scn, inst, j, m.lane_width),
                behaviour=_behaviour(scn, inst, j),
            )
        )
    light, dist = traffic_light(scn, inst)
    lanes = m.lanes_per_direction
    route_lane = next((ln.index for ln in m.lanes if ln.path is scn.expert.route), 0)
    ego_lane = int(np.clip(route_lane + round(inst.ego_d / m.lane_width), 0, lanes - 1))
    notes = []
    if any(a.kind in ("traffic_cone", "barrier") for a in scn.world.agents):
        notes.append("lane closed by construction ahead")
    if m.kind == "intersection" and m.intersection is not None:
        notes.append("signalised intersection ahead")
    return SceneFacts(
        objects=objects,
        traffic_light=light,
        traffic_light_distance=dist,
        road=m.kind,
        lanes=lanes,
        ego_lane=ego_lane,
        speed_limit=m.speed_limit,
        lighting=scn.lighting,
        notes=notes,
    )


def scoring_data(
    scn: Scenario,
    static: SceneStatic,
    inst: Instant,
    agents_future: np.ndarray,
    red: np.ndarray,
    future: np.ndarray,
) -> ScoringData:
    """Sidecar for one sample: agents_future (A, 51, 3) world poses; red (L, 51) bools."""
    pose = inst.ego[:3]
    m = scn.world.map
    route = scn.expert.route
    s = np.arange(inst.ego_s - 20.0, inst.ego_s + 160.0, 1.0)
    lines = np.array([[sl.p0, sl.p1] for sl in m.stop_lines]).reshape(-1, 2, 2)
    return ScoringData(
        grid=rasterise(static, pose),
        agents=to_local(agents_future, pose)
        .astype(np.float32)
        .reshape(-1, agents_future.shape[1], 3),
        sizes=np.array([[a.length, a.width] for a in scn.world.agents], dtype=np.float32).reshape(
            -1, 2
        ),
        kinds=np.array([AGENT_KINDS.index(a.kind) for a in scn.world.agents], dtype=np.int8),
        route=to_local(route.pose(s)[:, :2], pose).astype(np.float32),
        ego=np.array([inst.ego[3], inst.ego[4]], dtype=np.float32),
        expert=np.asarray(future, dtype=np.float32),
        stop_lines=to_local(lines, pose).astype(np.float32),
        stop_heading=np.array(
            [wrap_angle(sl.heading - pose[2]) for sl in m.stop_lines], dtype=np.float32
        ),
        red=np.asarray(red, dtype=bool).reshape(len(m.stop_lines), agents_future.shape[1]),
        crosswalks=to_local(np.array(m.crosswalks).reshape(-1, 4, 2), pose).astype(np.float32),
    )


def scoring_arrays(data: ScoringData) -> dict[str, np.ndarray]:
    """Sidecar arrays, with the expert's progress precomputed (the scorer's metric cache)."""
    from autovla.sim.scoring import _agent_cache

    _agent_cache(data)
    return {f.name: getattr(data, f.name) for f in fields(data)}


def frame_items(scn: Scenario, inst: Instant) -> list[BoxItem]:
    items = []
    for j, a in enumerate(scn.world.agents):
        p = inst.agents[j]
        if a.kind == "vehicle":
            items.append(
                vehicle_item(
                    p,
                    a.length,
                    a.width,
                    a.height,
                    a.color,
                    bool(inst.a[j] < -1.0 and inst.v[j] > 0.3),
                )
            )
        else:
            items.append(BoxItem(p, a.length, a.width, a.height, a.color))
    for li, light in enumerate(scn.world.map.lights):
        items += light_items(light.position, light.facing, inst.lights[li])
    return items


def render_frame(
    scn: Scenario, static: SceneStatic, inst: Instant, cameras: list[Camera]
) -> dict[str, Image.Image]:
    items = frame_items(scn, inst)
    return {
        c.name: render_camera(c, inst.ego[:3], static.mesh, items, scn.lighting) for c in cameras
    }
