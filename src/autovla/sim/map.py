"""Road geometry of the embedded world: lane paths, drivable area, markings, lights.

Two layouts: a straight or constant-curvature road with 1-4 lanes per direction, and a
signalised 4-way intersection with straight/left/right connections. World frame: the ego
starts near the origin heading +x; right-hand traffic (forward lanes on the right, y < 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from autovla.geometry import points_in_polygon, wrap_angle

DS = 0.5  # path sampling (m)
SHOULDER = 1.0  # drivable margin beyond the outer lane edge (m)


class Path:
    """A polyline resampled every DS metres with headings; poses at arc length s, offset d."""

    def __init__(self, pts: np.ndarray):
        pts = np.asarray(pts, dtype=np.float64)
        seg = np.hypot(*np.diff(pts, axis=0).T)
        keep = np.concatenate([[True], seg > 1e-6])
        pts = pts[keep]
        s_raw = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(pts, axis=0).T))])
        self.length = float(s_raw[-1])
        self.s = np.arange(0.0, self.length + 1e-9, DS)
        self.xy = np.stack(
            [np.interp(self.s, s_raw, pts[:, 0]), np.interp(self.s, s_raw, pts[:, 1])], -1
        )
        d = np.gradient(self.xy, axis=0)
        self.heading = np.arctan2(d[:, 1], d[:, 0])
        self.kappa = np.gradient(np.unwrap(self.heading)) / DS

    def pose(self, s: np.ndarray | float, d: np.ndarray | float = 0.0) -> np.ndarray:
        """Poses (..., 3) at arc length s (extrapolated straight beyond the ends), offset d left."""
        s = np.asarray(s, dtype=np.float64)
        d = np.asarray(d, dtype=np.float64)
        f = np.clip(s / DS, 0.0, len(self.s) - 1.0)
        i = np.minimum(f.astype(int), len(self.s) - 2)
        t = f - i
        xy = self.xy[i] * (1 - t)[..., None] + self.xy[i + 1] * t[..., None]
        h = self.heading[i] + wrap_angle(self.heading[i + 1] - self.heading[i]) * t
        extra = s - np.clip(s, 0.0, self.s[-1])  # beyond the ends: continue straight
        c, sn = np.cos(h), np.sin(h)
        x = xy[..., 0] + c * extra - sn * d
        y = xy[..., 1] + sn * extra + c * d
        return np.stack([x, y, wrap_angle(h)], -1)

    def project(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Arc length and signed lateral offset (left +) of points (..., 2)."""
        p = np.asarray(xy, dtype=np.float64)
        diff = p[..., None, :] - self.xy
        i = np.argmin((diff**2).sum(-1), axis=-1)
        h = self.heading[i]
        rel = p - self.xy[i]
        lon = np.cos(h) * rel[..., 0] + np.sin(h) * rel[..., 1]
        lat = -np.sin(h) * rel[..., 0] + np.cos(h) * rel[..., 1]
        return self.s[i] + lon, lat

    def offset(self, d: float, s0: float = 0.0, s1: float | None = None) -> np.ndarray:
        """Points (K, 2) of the curve offset by d (left +) between s0 and s1."""
        s1 = self.length if s1 is None else s1
        sel = (self.s >= s0) & (self.s <= s1)
        return self.pose(self.s[sel], d)[:, :2]


@dataclass
class Lane:
    path: Path
    width: float
    road: str  # "fwd", "back", "connector", or an arm name
    index: int = 0  # 0 = rightmost


@dataclass
class Marking:
    pts: np.ndarray  # (K, 2)
    style: str  # solid_white, dashed_white, solid_yellow, stop_line
    width: float = 0.15


@dataclass
class StopLine:
    p0: np.ndarray
    p1: np.ndarray
    heading: float  # approach direction
    light: int  # index into RoadMap.lights


@dataclass
class TrafficLight:
    """A fixed-cycle signal: green, yellow, red; `offset` shifts the cycle start (s)."""

    position: np.ndarray  # (3,) world x, y, z of the head
    facing: float  # heading of the approach it controls
    green: float
    yellow: float
    red: float
    offset: float

    def state(self, t: float) -> str:
        c = (t + self.offset) % (self.green + self.yellow + self.red)
        if c < self.green:
            return "green"
        return "yellow" if c < self.green + self.yellow else "red"


@dataclass
class RoadMap:
    kind: str  # straight, curve, intersection
    lanes: list[Lane]
    drivable: list[np.ndarray]  # simple polygons; a point is drivable if inside any
    markings: list[Marking] = field(default_factory=list)
    crosswalks: list[np.ndarray] = field(default_factory=list)  # (4, 2) each
    stop_lines: list[StopLine] = field(default_factory=list)
    lights: list[TrafficLight] = field(default_factory=list)
    intersection: np.ndarray | None = None  # (4, 2)
    lanes_per_direction: int = 1
    lane_width: float = 3.5
    speed_limit: float = 13.9

    def on_road(self, pts: np.ndarray) -> np.ndarray:
        pts = np.asarray(pts, dtype=np.float64)
        inside = np.zeros(pts.shape[:-1], dtype=bool)
        for poly in self.drivable:
            inside |= points_in_polygon(pts, poly)
        return inside


def _arc(kappa: float, s: np.ndarray) -> np.ndarray:
    """Reference line of constant curvature starting at the origin heading +x."""
    if abs(kappa) < 1e-9:
        return np.stack([s, np.zeros_like(s)], -1)
    th = kappa * s
    return np.stack([np.sin(th) / kappa, (1.0 - np.cos(th)) / kappa], -1)


def _strip(
    path: Path, d0: float, d1: float, s0: float = 0.0, s1: float | None = None
) -> np.ndarray:
    return np.concatenate([path.offset(d0, s0, s1), path.offset(d1, s0, s1)[::-1]], 0)


def build_road(
    lanes: int,
    back_lanes: int,
    width: float,
    kappa: float,
    start: float = -80.0,
    end: float = 320.0,
) -> RoadMap:
    """A road of constant curvature; forward lane k (0 = rightmost) has offset -(lanes-k-0.5) w."""
    s = np.arange(start, end + 1e-9, 1.0)
    ref = Path(_arc(kappa, s))
    # the reference path starts at `start`; shift so that s = 0 of lanes is at world x ~ start
    out: list[Lane] = []
    for k in range(lanes):
        d = -(lanes - k - 0.5) * width
        out.append(Lane(Path(ref.offset(d)), width, "fwd", k))
    for k in range(back_lanes):
        d = (back_lanes - k - 0.5) * width
        out.append(Lane(Path(ref.offset(d)[::-1]), width, "back", k))
    drivable = [_strip(ref, -lanes * width - SHOULDER, back_lanes * width + SHOULDER)]
    marks = [Marking(ref.offset(-lanes * width), "solid_white")]
    marks.append(Marking(ref.offset(back_lanes * width), "solid_white"))
    for k in range(1, lanes):
        marks.append(Marking(ref.offset(-k * width), "dashed_white"))
    for k in range(1, back_lanes):
        marks.append(Marking(ref.offset(k * width), "dashed_white"))
    if back_lanes:
        marks += [
            Marking(ref.offset(0.12), "solid_yellow"),
            Marking(ref.offset(-0.12), "solid_yellow"),
        ]
    kind = "straight" if abs(kappa) < 1e-9 else "curve"
    return RoadMap(kind, out, drivable, marks, lanes_per_direction=lanes, lane_width=width)


def add_crosswalk(m: RoadMap, x: float, depth: float = 4.0) -> None:
    """A mid-block crosswalk across a straight road at world x (used by pedestrian scenes)."""
    y0 = -m.lanes_per_direction * m.lane_width - SHOULDER
    y1 = sum(1 for ln in m.lanes if ln.road == "back") * m.lane_width + SHOULDER
    m.crosswalks.append(np.array([[x + depth, y1], [x, y1], [x, y0], [x + depth, y0]]))


def _rot(pts: np.ndarray, ang: float) -> np.ndarray:
    c, s = np.cos(ang), np.sin(ang)
    return pts @ np.array([[c, s], [-s, c]])


def intersection_half(lanes: int, width: float) -> float:
    return lanes * width + 6.0


def intersection_route(
    lanes: int, width: float, arm: int, lane: int, turn: str, arm_len: float = 150.0
) -> Path:
    """Route entering from `arm` (0 = from the west heading east, counter-clockwise), lane index
    `lane` (0 = rightmost), turning `turn` in straight/left/right; approach, connector, exit."""
    h = intersection_half(lanes, width)
    y = -(lanes - lane - 0.5) * width
    approach = np.stack([np.linspace(-h - arm_len, -h, 60), np.full(60, y)], -1)
    if turn == "straight":
        mid = np.stack([np.linspace(-h, h, 30), np.full(30, y)], -1)
        exit_ = np.stack([np.linspace(h, h + arm_len, 60), np.full(60, y)], -1)
    elif turn == "left":
        r = h - y
        phi = np.linspace(-np.pi / 2, 0.0, 40)
        mid = np.stack([-h + r * np.cos(phi), h + r * np.sin(phi)], -1)
        x = -h + r
        exit_ = np.stack([np.full(60, x), np.linspace(h, h + arm_len, 60)], -1)
    elif turn == "right":
        r = h + y
        phi = np.linspace(np.pi / 2, 0.0, 30)
        mid = np.stack([-h + r * np.cos(phi), -h + r * np.sin(phi)], -1)
        x = -h + r
        exit_ = np.stack([np.full(60, x), np.linspace(-h, -h - arm_len, 60)], -1)
    else:
        raise ValueError(f"unknown turn {turn!r}; valid: straight, left, right")
    pts = np.concatenate([approach, mid[1:], exit_[1:]], 0)
    return Path(_rot(pts, arm * np.pi / 2))


def build_intersection(
    lanes: int, width: float, green: float, yellow: float, offset: float, arm_len: float = 150.0
) -> RoadMap:
    """A 4-way signalised intersection at the origin; arms 0/2 (east-west) share a phase."""
    h = intersection_half(lanes, width)
    half_w = lanes * width + SHOULDER
    m = RoadMap("intersection", [], [], lanes_per_direction=lanes, lane_width=width)
    m.intersection = np.array([[h, h], [-h, h], [-h, -h], [h, -h]], dtype=np.float64)
    cycle_red = green + yellow + 2.0  # the other phase's green+yellow plus 2 x 1 s all-red
    for arm in range(4):
        ang = arm * np.pi / 2
        west = np.array(
            [[-h + 1, half_w], [-h - arm_len, half_w], [-h - arm_len, -half_w], [-h + 1, -half_w]]
        )
        m.drivable.append(_rot(west, ang))
        for k in range(lanes):
            for turn in (
                ("straight",)
                + (("left",) if k == lanes - 1 else ())
                + (("right",) if k == 0 else ())
            ):
                m.lanes.append(
                    Lane(
                        intersection_route(lanes, width, arm, k, turn, arm_len),
                        width,
                        f"arm{arm}_{turn}",
                        k,
                    )
                )
        xs = np.linspace(-h - arm_len, -h, 2)
        m.markings.append(
            Marking(_rot(np.stack([xs, np.full(2, -lanes * width)], -1), ang), "solid_white")
        )
        m.markings.append(
            Marking(_rot(np.stack([xs, np.full(2, lanes * width)], -1), ang), "solid_white")
        )
        m.markings.append(Marking(_rot(np.stack([xs, np.full(2, 0.12)], -1), ang), "solid_yellow"))
        m.markings.append(Marking(_rot(np.stack([xs, np.full(2, -0.12)], -1), ang), "solid_yellow"))
        for k in range(1, lanes):
            for sgn in (-1, 1):
                m.markings.append(
                    Marking(
                        _rot(np.stack([xs, np.full(2, sgn * k * width)], -1), ang), "dashed_white"
                    )
                )
        cw = np.array(
            [[-h - 0.5, half_w], [-h - 3.5, half_w], [-h - 3.5, -half_w], [-h - 0.5, -half_w]]
        )
        m.crosswalks.append(_rot(cw, ang))
        line = _rot(np.array([[-h - 4.5, 0.0], [-h - 4.5, -lanes * width]]), ang)
        m.markings.append(Marking(line, "stop_line", 0.4))
        phase_offset = offset - (0.0 if arm % 2 == 0 else green + yellow + 1.0)
        head = _rot(np.array([[-h - 4.0, -half_w - 0.5]]), ang)[0]
        m.lights.append(
            TrafficLight(
                np.array([head[0], head[1], 5.0]), ang, green, yellow, cycle_red, phase_offset
            )
        )
        m.stop_lines.append(StopLine(line[0], line[1], ang, arm))
    m.drivable.append(m.intersection.copy())
    return m
