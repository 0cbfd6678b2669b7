"""Flat-shaded pinhole camera renderer and a top-down (BEV) renderer.

Cameras follow the usual convention (x right, y down, z forward). Ground geometry (road,
markings, crosswalks) is drawn first in layer order; boxes (vehicles, pedestrians, cones,
traffic lights) are then drawn far to near with back faces culled (painter's algorithm).
Polygons crossing the near plane are clipped in 3-D before projection.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from autovla.geometry import box_corners
from autovla.sim.map import RoadMap

NEAR = 0.3  # m
FAR = 150.0  # m
CAMERA_HEIGHT = 1.55  # m above the ground
CAMERA_SPECS: dict[str, tuple[float, float, float, float]] = {
    # name: x, y (m from the rear axle), yaw (deg), horizontal field of view (deg)
    "front": (1.7, 0.0, 0.0, 70.0),
    "front_left": (1.5, 0.4, 55.0, 70.0),
    "front_right": (1.5, -0.4, -55.0, 70.0),
    "back": (-1.0, 0.0, 180.0, 70.0),
    "back_left": (-0.8, 0.4, 125.0, 70.0),
    "back_right": (-0.8, -0.4, -125.0, 70.0),
}
PALETTES = {
    "day": {
        "sky": (140, 185, 235),
        "grass": (95, 140, 75),
        "road": (85, 85, 90),
        "white": (235, 235, 235),
        "yellow": (230, 190, 40),
        "light": 1.0,
    },
    "dusk": {
        "sky": (70, 55, 100),
        "grass": (40, 60, 45),
        "road": (50, 50, 58),
        "white": (170, 170, 175),
        "yellow": (170, 140, 40),
        "light": 0.6,
    },
}
LAMPS = {"red": (255, 40, 30), "yellow": (255, 200, 0), "green": (40, 255, 90)}


@dataclass(frozen=True)
class Camera:
    """A pinhole camera on the ego: pose relative to the rear axle, intrinsics from size and fov."""

    name: str
    x: float
    y: float
    z: float
    yaw: float  # rad, counter-clockwise from ego x
    width: int
    height: int
    fov: float  # rad, horizontal

    @property
    def fx(self) -> float:
        return self.width / 2 / np.tan(self.fov / 2)

    def intrinsics(self) -> list[list[float]]:
        return [[self.fx, 0.0, self.width / 2], [0.0, self.fx, self.height / 2], [0.0, 0.0, 1.0]]

    def sensor_to_ego(self) -> np.ndarray:
        """4x4 transform from camera axes (x right, y down, z forward) to the ego frame."""
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        fwd, left, up = np.array([c, s, 0.0]), np.array([-s, c, 0.0]), np.array([0.0, 0.0, 1.0])
        m = np.eye(4)
        m[:3, 0], m[:3, 1], m[:3, 2] = -left, -up, fwd
        m[:3, 3] = [self.x, self.y, self.z]
        return m

    def to_dict(self) -> dict:
        return {
            "width": self.width,
            "height": self.height,
            "intrinsics": self.intrinsics(),
            "extrinsics": {
                "translation": [self.x, self.y, self.z],
                "yaw": self.yaw,
                "pitch": 0.0,
                "roll": 0.0,
                "sensor_to_ego": self.sensor_to_ego().tolist(),
            },
            "frame": "camera x right, y down, z forward; ego: rear axle, x fwd, y left, z up",
        }


def make_cameras(names: tuple[str, ...], image_size: tuple[int, int]) -> list[Camera]:
    w, h = image_size
    if w < 28 or h < 28:
        raise ValueError(f"image size must be at least 28 x 28 pixels, got {w} x {h}")
    out = []
    for n in names:
        if n not in CAMERA_SPECS:
            raise ValueError(f"unknown camera {n!r}; valid: {', '.join(CAMERA_SPECS)}")
        x, y, yaw, fov = CAMERA_SPECS[n]
        out.append(Camera(n, x, y, CAMERA_HEIGHT, np.radians(yaw), w, h, np.radians(fov)))
    return out


def project_points(points: np.ndarray, camera: dict | Camera) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (..., 2) and depths (...) of ego-frame 3-D points (..., 3) in a camera.

    `camera` is a Camera or its `to_dict()` form as stored in dataset.json; points with
    depth <= 0 are behind the camera (their pixels are meaningless).
    """
    cam = camera.to_dict() if isinstance(camera, Camera) else camera
    m = np.asarray(cam["extrinsics"]["sensor_to_ego"], dtype=np.float64)
    k = np.asarray(cam["intrinsics"], dtype=np.float64)
    p = np.asarray(points, dtype=np.float64)
    pc = (p - m[:3, 3]) @ m[:3, :3]  # ego -> camera axes (R^T (p - t))
    z = pc[..., 2]
    zs = np.where(np.abs(z) < 1e-9, 1e-9, z)
    u = k[0, 0] * pc[..., 0] / zs + k[0, 2]
    v = k[1, 1] * pc[..., 1] / zs + k[1, 2]
    return np.stack([u, v], -1), z


def project_trajectory(
    traj: np.ndarray, camera: dict | Camera, z: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (T, 2) of ego-frame poses or points (T, 2+) on the ground (height z), and a mask
    of those in front of the camera and inside the image (to draw a plan on the front view)."""
    t = np.asarray(traj, dtype=np.float64)
    pts = np.concatenate([t[..., :2], np.full((*t.shape[:-1], 1), z)], -1)
    uv, depth = project_points(pts, camera)
    cam = camera.to_dict() if isinstance(camera, Camera) else camera
    inside = (uv[..., 0] >= 0) & (uv[..., 0] < cam["width"]) & (uv[..., 1] >= 0)
    return uv, (depth > NEAR) & inside & (uv[..., 1] < cam["height"])


def ground_pixels(traj: np.ndarray, camera: dict | Camera) -> np.ndarray | None:
    """Pixels (T, 2) of ground points under ego-frame poses, NaN where behind the camera; None
    when `camera` is not a usable camera model (plots then show the raw image)."""
    t = np.asarray(traj, dtype=np.float64)
    pts = np.concatenate([t[..., :2], np.zeros((*t.shape[:-1], 1))], -1)
    try:
        uv, depth = project_points(pts, camera)
    except (KeyError, ValueError, TypeError):
        return None
    uv = uv.copy()
    uv[depth <= NEAR] = np.nan
    return uv


# --- static scene geometry ----------------------------------------------------------------
def _resample(pts: np.ndarray, step: float = 0.5) -> np.ndarray:
    seg = np.hypot(*np.diff(pts, axis=0).T)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    t = np.arange(0.0, s[-1] + 1e-9, step)
    return np.stack([np.interp(t, s, pts[:, 0]), np.interp(t, s, pts[:, 1])], -1)


def _line_quads(pts: np.ndarray, width: float, on: int, off: int) -> list[np.ndarray]:
    p = _resample(pts)
    out = []
    i = 0
    while i + 1 < len(p):
        j = min(i + on, len(p) - 1)
        a, b = p[i], p[j]
        d = b - a
        n = np.array([-d[1], d[0]]) / max(np.hypot(*d), 1e-9) * width / 2
        out.append(np.array([a + n, a - n, b - n, b + n]))
        i = j + off
    return out


@dataclass
class StaticMesh:
    quads: np.ndarray  # (Q, 4, 2) ground polygons in draw order
    colours: list[str]  # palette keys


def static_mesh(m: RoadMap) -> StaticMesh:
    quads: list[np.ndarray] = []
    cols: list[str] = []
    for poly in m.drivable:
        if len(poly) == 4:
            quads.append(poly)
            cols.append("road")
            continue
        k = len(poly) // 2
        right, left = poly[:k], poly[k:][::-1]
        for i in range(0, k - 1, 8):
            j = min(i + 8, k - 1)
            quads.append(np.array([right[i], right[j], left[j], left[i]]))
            cols.append("road")
    for mk in m.markings:
        colour = "yellow" if mk.style == "solid_yellow" else "white"
        on, off = (6, 12) if mk.style == "dashed_white" else (8, 0)
        for q in _line_quads(mk.pts, mk.width, on, off):
            quads.append(q)
            cols.append(colour)
    for cw in m.crosswalks:
        a, b = cw[1], cw[2]  # the edge across the road
        depth = cw[0] - cw[1]
        across = b - a
        n = int(np.hypot(*across) // 1.0)
        for i in range(n):
            p0 = a + across * (i / n)
            p1 = a + across * ((i + 0.5) / n)
            quads.append(np.array([p0, p1, p1 + depth, p0 + depth]))
            cols.append("white")
    return StaticMesh(np.array(quads), cols)


# --- dynamic objects ----------------------------------------------------------------------
@dataclass
class BoxItem:
    """An upright box in the world; decals are (face, u0, u1, v0, v1, colour) rectangles."""

    pose: np.ndarray  # centre x, y, heading
    length: float
    width: float
    height: float
    colour: tuple[int, int, int]
    z0: float = 0.0
    decals: tuple = ()


_FACES = {  # corner indices into (bottom FL, RL, RR, FR, top FL, RL, RR, FR), outward normal
    "front": ((3, 0, 4, 7), 0),
    "rear": ((1, 2, 6, 5), 1),
    "left": ((0, 1, 5, 4), 2),
    "right": ((2, 3, 7, 6), 3),
    "top": ((4, 5, 6, 7), 4),
}
_SHADE = {"front": 0.85, "rear": 0.8, "left": 0.7, "right": 0.65, "top": 1.0}


def vehicle_item(pose, length, width, height, colour, braking: bool) -> BoxItem:
    lamp = (255, 30, 30) if braking else (110, 10, 10)
    glass = (40, 50, 65)
    decals = (
        ("front", 0.12, 0.88, 0.55, 0.9, glass),
        ("rear", 0.12, 0.88, 0.6, 0.9, glass),
        ("left", 0.15, 0.7, 0.55, 0.9, glass),
        ("right", 0.3, 0.85, 0.55, 0.9, glass),
        ("rear", 0.04, 0.22, 0.3, 0.45, lamp),
        ("rear", 0.78, 0.96, 0.3, 0.45, lamp),
    )
    return BoxItem(np.asarray(pose, float), length, width, height, colour, 0.0, decals)


def light_items(position, facing: float, state: str) -> list[BoxItem]:
    pole = BoxItem(
        np.array([position[0], position[1], facing]), 0.15, 0.15, position[2], (60, 60, 60)
    )
    dark = {k: tuple(c // 5 for c in v) for k, v in LAMPS.items()}
    col = {k: (LAMPS[k] if k == state else dark[k]) for k in LAMPS}
    head = BoxItem(
        np.array([position[0], position[1], facing]),
        0.35,
        0.35,
        1.0,
        (30, 30, 30),
        position[2] - 0.5,
        (
            ("front", 0.2, 0.8, 0.7, 0.95, col["red"]),
            ("front", 0.2, 0.8, 0.38, 0.62, col["yellow"]),
            ("front", 0.2, 0.8, 0.05, 0.3, col["green"]),
        ),
    )
    # the lamps face the approaching traffic: turn the head around
    head.pose[2] = facing + np.pi
    return [pole, head]


def _box_polys(
    item: BoxItem, cam_world: np.ndarray, light: float
) -> list[tuple[np.ndarray, tuple]]:
    c2 = box_corners(item.pose, item.length, item.width)
    bottom = np.column_stack([c2, np.full(4, item.z0)])
    top = np.column_stack([c2, np.full(4, item.z0 + item.height)])
    corners = np.concatenate([bottom, top], 0)
    h = item.pose[2]
    normals = np.array(
        [
            [np.cos(h), np.sin(h), 0],
            [-np.cos(h), -np.sin(h), 0],
            [-np.sin(h), np.cos(h), 0],
            [np.sin(h), -np.cos(h), 0],
            [0, 0, 1.0],
        ]
    )
    out = []
    for name, (idx, ni) in _FACES.items():
        face = corners[list(idx)]
        if normals[ni] @ (face.mean(0) - cam_world) >= 0:
            continue  # back face
        shade = _SHADE[name] * light
        out.append((face, tuple(int(min(255, c * shade)) for c in item.colour)))
        for dface, u0, u1, v0, v1, col in item.decals:
            if dface != name:
                continue
            bl, br, tl = face[0], face[1], face[3]
            du, dv = br - bl, tl - bl
            q = np.array(
                [
                    bl + u0 * du + v0 * dv,
                    bl + u1 * du + v0 * dv,
                    bl + u1 * du + v1 * dv,
                    bl + u0 * du + v1 * dv,
                ]
            )
            out.append((q, col))
    return out


# --- rasterisation ------------------------------------------------------------------------
def _clip_near(poly: np.ndarray) -> np.ndarray:
    """Sutherland-Hodgman against z >= NEAR for a polygon in camera axes (K, 3)."""
    out = []
    n = len(poly)
    for i in range(n):
        a, b = poly[i], poly[(i + 1) % n]
        ina, inb = a[2] >= NEAR, b[2] >= NEAR
        if ina:
            out.append(a)
        if ina != inb:
            t = (NEAR - a[2]) / (b[2] - a[2])
            out.append(a + t * (b - a))
    return np.array(out)


def _world_to_cam(cam: Camera, ego_pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation (3, 3) and camera position (3,) mapping world points to camera axes."""
    s2e = cam.sensor_to_ego()
    c, s = np.cos(ego_pose[2]), np.sin(ego_pose[2])
    e2w = np.eye(4)
    e2w[:2, :2] = [[c, -s], [s, c]]
    e2w[:2, 3] = ego_pose[:2]
    s2w = e2w @ s2e
    return s2w[:3, :3], s2w[:3, 3]


def render_camera(
    cam: Camera,
    ego_pose: np.ndarray,
    mesh: StaticMesh,
    items: list[BoxItem],
    lighting: str = "day",
) -> Image.Image:
    """One camera image of the world seen from the ego rear-axle pose (x, y, yaw)."""
    pal = PALETTES[lighting]
    img = Image.new("RGB", (cam.width, cam.height), pal["sky"])
    draw = ImageDraw.Draw(img)
    cy = cam.height / 2
    draw.rectangle([0, int(cy), cam.width, cam.height], fill=pal["grass"])
    rot, pos = _world_to_cam(cam, ego_pose)
    polys: list[tuple[np.ndarray, tuple]] = []
    # ground: vectorised cull, then per-polygon clip only where needed
    q = mesh.quads
    q3 = np.concatenate([q, np.zeros((*q.shape[:2], 1))], -1)
    qc = (q3 - pos) @ rot
    z = qc[..., 2]
    tan = np.tan(cam.fov / 2) + 0.05
    xs = qc[..., 0] / np.maximum(z, 1e-6)
    outside = (
        (z < NEAR).all(-1)
        | (z.min(-1) > FAR)
        | ((z > NEAR).all(-1) & ((xs > tan).all(-1) | (xs < -tan).all(-1)))
    )
    for i in np.nonzero(~outside)[0]:
        polys.append((qc[i], pal[mesh.colours[i]]))
    order = sorted(items, key=lambda it: -np.hypot(it.pose[0] - pos[0], it.pose[1] - pos[1]))
    for it in order:
        d = it.pose[:2] - pos[:2]
        fwd = rot[:2, 2]
        if np.hypot(*d) > FAR or (d @ fwd < -3.0):
            continue
        for face, col in _box_polys(it, pos, pal["light"] if it.colour != (30, 30, 30) else 1.0):
            polys.append(((face - pos) @ rot, col))
    f = cam.fx
    for pc, col in polys:
        if (pc[:, 2] < NEAR).any():
            pc = _clip_near(pc)
            if len(pc) < 3:
                continue
        u = f * pc[:, 0] / pc[:, 2] + cam.width / 2
        v = f * pc[:, 1] / pc[:, 2] + cy
        draw.polygon(list(zip(u.tolist(), v.tolist(), strict=True)), fill=col)
    return img


# --- top-down view ------------------------------------------------------------------------
TRAJ_COLOURS = [(0, 90, 255), (0, 170, 0), (230, 120, 0), (200, 0, 200), (0, 180, 180)]


def render_bev(
    cache,
    trajectories: dict[str, np.ndarray] | None = None,
    size: int = 400,
    extent: tuple[float, float, float, float] = (-20.0, 80.0, -50.0, 50.0),
    step: int = 0,
) -> Image.Image:
    """Top-down image in the sample's ego frame (x up, y left) from its metric cache.

    Draws the drivable map (roadblocks, intersections and carparks filled, lanes and
    connectors outlined, route lanes tinted), the route centerline, the tracks at 10 Hz
    step `step`, the ego box and the given trajectories (name -> (T, 2+) ego-frame poses).
    """
    import shapely

    from autovla.scoring.cache import LANE, LANE_CONNECTOR, N_AGENT_TYPES, TRACK_TYPES
    from autovla.sim.agents import EGO_LENGTH, EGO_REAR, EGO_WIDTH

    x0, x1, y0, y1 = extent
    scale = size / max(x1 - x0, y1 - y0)
    w, h = int((y1 - y0) * scale), int((x1 - x0) * scale)

    def px(p: np.ndarray) -> list[tuple[float, float]]:
        p = np.asarray(p, dtype=np.float64)
        return list(
            zip(
                ((y1 - p[..., 1]) * scale).tolist(),
                ((x1 - p[..., 0]) * scale).tolist(),
                strict=True,
            )
        )

    img = Image.new("RGB", (w, h), (235, 235, 235))
    draw = ImageDraw.Draw(img)
    on_route = cache.on_route
    lanes = (cache.map_types == LANE) | (cache.map_types == LANE_CONNECTOR)
    for filled in (True, False):
        for i, poly in enumerate(cache.map_polygons):
            if lanes[i] == filled:
                continue
            for part in shapely.get_parts(poly):
                ring = shapely.get_coordinates(part.exterior)
                if filled:
                    draw.polygon(px(ring), fill=(190, 190, 195))
                else:
                    fill = (205, 205, 225) if on_route[i] else None
                    draw.polygon(px(ring), fill=fill, outline=(150, 150, 150))
    draw.line(px(cache.centerline[:, :2]), fill=(150, 150, 230), width=1)
    st = min(step, len(cache.boxes) - 1)
    for j in range(len(cache.track_ids)):
        box = cache.boxes[st, j]
        if not np.isfinite(box).all():
            continue
        c = box_corners(box[:3], box[3], box[4])
        kind = TRACK_TYPES[int(cache.track_types[j])]
        col = {"vehicle": (60, 60, 200), "pedestrian": (200, 60, 60)}.get(kind, (230, 140, 0))
        if cache.track_types[j] >= N_AGENT_TYPES:
            col = (230, 140, 0)
        draw.polygon(px(c), fill=col)
    ego = box_corners(np.zeros(3), EGO_LENGTH, EGO_WIDTH, EGO_REAR)
    draw.polygon(px(ego), fill=(20, 20, 20))
    for i, (name, tr) in enumerate((trajectories or {}).items()):
        pts = np.concatenate([np.zeros((1, 2)), np.asarray(tr)[:, :2]], 0)
        col = TRAJ_COLOURS[i % len(TRAJ_COLOURS)]
        draw.line(px(pts), fill=col, width=2)
        draw.text((4, 4 + 12 * i), name, fill=col)
    return img
