"""From a world instant to the sample's parts: scene facts and rendered frames.

Shared by dataset export (states read from a rollout log) and the closed loop (states read
from the live world), so both produce the same schema.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from autovla.data.schema import SceneFacts, SceneObject
from autovla.geometry import to_local, wrap_angle
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
    """Per-scenario caches: the render mesh."""

    def __init__(self, scn: Scenario):
        m: RoadMap = scn.world.map
        self.mesh = static_mesh(m)


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
