"""A small nuPlan-format world built by the tests: a GeoPackage written by GDAL (through
pyogrio) with the layers and columns of the nuPlan maps, and OpenScene log pickles over it.

Layout in a local metric frame (x east, y north; the map is rotated by ROT and placed at a UTM
origin in Las Vegas, zone 11N, so every transform is exercised):

    y=7   +------- RB 13 (west, lane 1005) ---+-- I 31 --+--- RB 14 (west, lane 1006) ---+
    y=3.5 +------- RB 11 lane 1002 (east) ----+  2002 -> +--- RB 12 lane 1004 -----------+
    y=0   +------- RB 11 lane 1001 (east) ----+  2001 -> +--- RB 12 lane 1003 -----------+
    y=-3.5+-----------+----- carpark 41 ------+          +
    y=-15             +-----------------------+
         x=0         x=40                    x=100     x=120                          x=220

Roadblock connectors: 21 (11 -> 12, lane connectors 2001: 1001 -> 1003, 2002: 1002 -> 1004)
and 22 (14 -> 13, 2003: 1006 -> 1005), both in intersection 31. A lone roadblock 16 (lane
1008) lies far east, linked to nothing.

The scene log: the ego drives east in lane 1001 at 10 m/s and is at x = 60 at the current
frame (index 3). A lead vehicle drives in lane 1002 at 12 m/s, 10 m ahead; a car is parked in
the carpark at (90, -7.75); a pedestrian walks in the carpark; an oncoming car is seen in
lane 1005 from frame 5 to 12; a traffic cone is seen once (frame 8, carpark corner). The
traffic light of connector 2001 (the ego's) is red, 2002 green, 2003 red (not on the route).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import shapely

from autovla.geometry import to_global, to_local, wrap_angle

LOCATION = "us-nv-las-vegas-strip"
VERSION = "9.15.1915"
UTM = "EPSG:32611"
ORIGIN = np.array([664_000.0, 3_997_000.0])  # local (0, 0) in UTM 11N
ROT = 0.6  # rad: local x axis in the projected frame
LOG = "2021.06.09.17.23.18_veh-38_00773_01140"
EGO_X0, EGO_Y, EGO_V = 60.0, -1.75, 10.0  # ego at the current frame (local), speed
LANE_W = 3.5
CAMERAS = ("CAM_F0", "CAM_L0", "CAM_L1", "CAM_L2", "CAM_R0", "CAM_R1", "CAM_R2", "CAM_B0")
SPEED_LIMIT = 15.0


def to_utm(xy: np.ndarray) -> np.ndarray:
    """Local metric coordinates (..., 2) -> UTM."""
    return to_global(np.asarray(xy, dtype=np.float64), np.array([*ORIGIN, ROT]))


def local_pose_to_global(p) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    return np.array([*to_utm(p[:2]), wrap_angle(p[2] + ROT)])


def _box(x0, y0, x1, y1) -> shapely.Polygon:
    return shapely.box(x0, y0, x1, y1)


def _line(*pts) -> shapely.LineString:
    return shapely.LineString(pts)


def map_features() -> dict[str, list[tuple[int, shapely.Geometry, dict]]]:
    """Every layer: (fid, geometry in local coordinates, attributes)."""
    w = LANE_W
    lanes = [  # fid, group, x0, x1, y_lo, y_hi, direction, index
        (1001, 11, 0, 100, -w, 0, +1, 1),
        (1002, 11, 0, 100, 0, w, +1, 0),
        (1003, 12, 120, 220, -w, 0, +1, 1),
        (1004, 12, 120, 220, 0, w, +1, 0),
        (1005, 13, 0, 100, w, 2 * w, -1, 0),
        (1006, 14, 120, 220, w, 2 * w, -1, 0),
        (1008, 16, 500, 600, 0, w, +1, 0),
    ]
    out: dict[str, list] = {
        k: []
        for k in (
            "lanes_polygons",
            "lane_connectors",
            "gen_lane_connectors_scaled_width_polygons",
            "lane_groups_polygons",
            "lane_group_connectors",
            "intersections",
            "carpark_areas",
            "baseline_paths",
            "boundaries",
            "stop_polygons",
            "crosswalks",
            "walkways",
        )
    }
    baseline = 5000
    for fid, group, x0, x1, ylo, yhi, d, idx in lanes:
        yc = (ylo + yhi) / 2
        xs = np.linspace(x0, x1, 11) if d > 0 else np.linspace(x1, x0, 11)
        out["lanes_polygons"].append(
            (
                fid,
                _box(x0, ylo, x1, yhi),
                {
                    "lane_fid": fid,
                    "lane_group_fid": group,
                    "lane_index": idx,
                    "left_boundary_fid": 9000 + fid,
                    "right_boundary_fid": 9500 + fid,
                    "speed_limit_mps": SPEED_LIMIT,
                },
            )
        )
        out["baseline_paths"].append(
            (baseline, _line(*[(x, yc) for x in xs]), {"lane_fid": fid, "lane_connector_fid": None})
        )
        baseline += 1
    for gid, x0, x1, y0, y1 in (
        (11, 0, 100, -w, w),
        (12, 120, 220, -w, w),
        (13, 0, 100, w, 2 * w),
        (14, 120, 220, w, 2 * w),
        (16, 500, 600, 0, w),
    ):
        out["lane_groups_polygons"].append(
            (gid, _box(x0, y0, x1, y1), {"from_edge_fid": 0, "to_edge_fid": 0})
        )
    out["lane_group_connectors"] += [
        (
            21,
            _box(100, -w, 120, w),
            {"from_lane_group_fid": 11, "to_lane_group_fid": 12, "intersection_fid": 31},
        ),
        (
            22,
            _box(100, w, 120, 2 * w),
            {"from_lane_group_fid": 14, "to_lane_group_fid": 13, "intersection_fid": 31},
        ),
    ]
    connectors = [  # fid, group, exit lane, entry lane, y_lo, y_hi, direction
        (2001, 21, 1001, 1003, -w, 0, +1),
        (2002, 21, 1002, 1004, 0, w, +1),
        (2003, 22, 1006, 1005, w, 2 * w, -1),
    ]
    for fid, group, ex, en, ylo, yhi, d in connectors:
        yc = (ylo + yhi) / 2
        xs = (100, 110, 120) if d > 0 else (120, 110, 100)
        out["lane_connectors"].append(
            (
                fid,
                _line(*[(x, yc) for x in xs]),
                {
                    "exit_lane_fid": ex,
                    "entry_lane_fid": en,
                    "lane_group_connector_fid": group,
                    "speed_limit_mps": np.nan,
                    "traffic_light_stop_line_fids": "",
                },
            )
        )
        out["gen_lane_connectors_scaled_width_polygons"].append(
            (
                4000 + fid,
                _box(100, ylo, 120, yhi),
                {"lane_connector_fid": fid, "left_boundary_fid": 0, "right_boundary_fid": 0},
            )
        )
        out["baseline_paths"].append(
            (baseline, _line(*[(x, yc) for x in xs]), {"lane_fid": None, "lane_connector_fid": fid})
        )
        baseline += 1
    out["intersections"].append((31, _box(100, -w, 120, 2 * w), {"intersection_type_fid": 1}))
    out["carpark_areas"].append((41, _box(40, -15, 100, -w), {}))
    out["boundaries"].append((61, _line((0, -w), (100, -w)), {"boundary_type_fid": 2}))
    out["stop_polygons"].append((71, _box(98, -w, 100, 0), {"stop_polygon_type_fid": 2}))
    out["crosswalks"].append((81, _box(122, -w, 126, 2 * w), {}))
    out["walkways"].append((91, _box(0, 2 * w, 100, 2 * w + 2), {}))
    return out


def write_map(
    maps_root: Path,
    storage: str = "EPSG:4326",
    projected: str | None = UTM,
    location: str = LOCATION,
    version: str = VERSION,
    features: dict | None = None,
    write_json: bool = True,
) -> Path:
    """Write `<maps_root>/<location>/<version>/map.gpkg` with GDAL (pyogrio).

    `storage` is the CRS the geometries are stored in (EPSG:4326 lon/lat, or the UTM CRS);
    `projected` goes into the `meta` table as projectedCoordSystem (None: no meta table)."""
    import pyogrio
    import pyogrio.raw
    import pyproj

    pyogrio.set_gdal_config_options({"OGR_SQLITE_SYNCHRONOUS": "OFF"})  # no fsync per layer

    path = maps_root / location / version / "map.gpkg"
    path.parent.mkdir(parents=True, exist_ok=True)
    to_storage = pyproj.Transformer.from_crs(UTM, storage, always_xy=True)

    def store(g: shapely.Geometry) -> shapely.Geometry:
        return shapely.transform(g, lambda xy: np.stack(to_storage.transform(*to_utm(xy).T), -1))

    for layer, rows in (features or map_features()).items():
        if not rows:
            continue
        names = ["fid", *rows[0][2].keys()]
        cols = [np.array([r[0] for r in rows], dtype=np.int64)]
        for n in names[1:]:
            vals = [r[2][n] for r in rows]
            if all(isinstance(v, str) for v in vals):
                cols.append(np.array(vals, dtype=object))
            elif any(v is None for v in vals) or any(isinstance(v, float) for v in vals):
                cols.append(np.array([np.nan if v is None else v for v in vals], np.float64))
            else:
                cols.append(np.array(vals, dtype=np.int64))
        geoms = np.array(shapely.to_wkb([store(r[1]) for r in rows]), dtype=object)
        gtype = shapely.get_type_id(rows[0][1])
        pyogrio.raw.write(
            path,
            geoms,
            cols,
            names,
            layer=layer,
            driver="GPKG",
            crs=storage,
            geometry_type={1: "LineString", 3: "Polygon"}[int(gtype)],
        )
    if projected is not None:
        pyogrio.raw.write(
            path,
            None,
            [
                np.array(["version", "projectedCoordSystem"], dtype=object),
                np.array(["9.15", projected], dtype=object),
            ],
            ["key", "value"],
            layer="meta",
            driver="GPKG",
        )
    if write_json:
        index = maps_root / "nuplan-maps-v1.0.json"
        data = json.loads(index.read_text()) if index.is_file() else {}
        data[location] = {"version": version, "layers": {}}
        index.write_text(json.dumps(data))
    return path


# --- the log ---------------------------------------------------------------------------------
def quat(yaw: float) -> list[float]:
    return [float(np.cos(yaw / 2)), 0.0, 0.0, float(np.sin(yaw / 2))]


def tracks(t: float, k: int) -> list[tuple[str, str, tuple, tuple, tuple]]:
    """(track token, class, local pose, (length, width, height), local velocity) at time t
    (s from the current frame) in frame k."""
    out = [
        ("lead", "vehicle", (EGO_X0 + 10 + 12 * t, LANE_W / 2, 0.0), (4.8, 2.0, 1.6), (12, 0)),
        ("parked", "vehicle", (90.0, -7.75, 0.0), (4.5, 1.9, 1.5), (0, 0)),
        ("ped", "pedestrian", (50 + 1.0 * t, -12.0, 0.0), (0.6, 0.6, 1.8), (1.0, 0)),
    ]
    if 5 <= k <= 12:
        out.append(
            ("oncoming", "vehicle", (140 - 10 * (t - 1), 5.25, np.pi), (4.6, 1.9, 1.5), (-10, 0))
        )
    if k == 8:
        # a static object: its (bogus) velocity must not reach the cache
        out.append(("cone", "traffic_cone", (98.0, -5.0, 0.3), (0.4, 0.4, 0.7), (0.3, 0.1)))
    return out


def make_log(
    n: int = 14,
    current: int = 3,
    ego_x0: float = EGO_X0,
    red: bool = True,
    roadblock_ids: list | None = None,
    log_name: str = LOG,
    location: str = LOCATION,
    with_tracks: bool = True,
    blobs: Path | None = None,
) -> list[dict]:
    """Frames of an OpenScene log with every key of the format; frame `current` has the ego
    at (ego_x0, -1.75) in the local frame. With `blobs` (sensor_blobs/<split>/), tiny JPEGs
    are written there for the 8 cameras."""
    from _sources_fixtures import jpeg_bytes

    jpg = jpeg_bytes() if blobs is not None else b""
    frames = []
    for k in range(n):
        cams = {}
        for cam in CAMERAS:
            rel = f"{log_name}/{cam}/{k:016x}.jpg"
            if blobs is not None:
                (blobs / rel).parent.mkdir(parents=True, exist_ok=True)
                (blobs / rel).write_bytes(jpg)
            cams[cam] = {
                "data_path": rel,
                "sensor2lidar_rotation": np.eye(3),
                "sensor2lidar_translation": np.zeros(3),
                "cam_intrinsic": np.eye(3),
                "distortion": np.zeros(5),
            }
        t = 0.5 * (k - current)
        ego = local_pose_to_global((ego_x0 + EGO_V * t, EGO_Y, 0.0))
        anns = {
            "gt_boxes": np.zeros((0, 7)),
            "gt_names": np.array([], dtype="<U12"),
            "gt_velocity_3d": np.zeros((0, 3)),
            "instance_tokens": [],
            "track_tokens": [],
        }
        if with_tracks:
            rows = tracks(t, k)
            boxes, vels = [], []
            for _, _, p, size, v in rows:
                g = local_pose_to_global(p)
                loc = to_local(g, ego)
                boxes.append([loc[0], loc[1], 0.5, *size, g[2] - ego[2]])  # yaw unwrapped
                gv = to_global(np.array(v, float), np.array([0, 0, ROT]))  # local -> global
                lv = to_local(gv, np.array([0, 0, ego[2]]))  # global -> ego
                vels.append([lv[0], lv[1], 0.0])
            anns = {
                "gt_boxes": np.array(boxes, dtype=np.float64),
                "gt_names": np.array([r[1] for r in rows]),
                "gt_velocity_3d": np.array(vels, dtype=np.float64),
                "instance_tokens": [f"{r[0]}-inst{k}" for r in rows],
                "track_tokens": [r[0] for r in rows],
            }
        frames.append(
            {
                "token": f"{log_name[-5:]}{k:011x}",
                "frame_idx": k,
                "timestamp": 1_623_259_398_000_000 + 500_000 * k,
                "log_name": log_name,
                "log_token": "a1b2c3d4e5f60718",
                "scene_name": f"{log_name}-scene",
                "scene_token": "0f1e2d3c4b5a6978",
                "map_location": location,
                "vehicle_name": "veh-38",
                "roadblock_ids": list(
                    roadblock_ids if roadblock_ids is not None else ["11", "11", "21", "12"]
                ),
                "can_bus": np.zeros(18),
                "lidar_path": f"{log_name}/MergedPointCloud/{k:016x}.pcd",
                "lidar2ego_translation": np.array([1.5, 0.0, 1.8]),
                "lidar2ego_rotation": np.array([1.0, 0.0, 0.0, 0.0]),
                "ego2global_translation": np.array([ego[0], ego[1], 600.0]),
                "ego2global_rotation": np.array(quat(ego[2])),
                "ego_dynamic_state": [EGO_V, 0.0, 0.0, 0.0],
                "traffic_lights": [(2001, red), (2002, False), (2003, True)],
                "driving_command": np.array([0, 1, 0, 0]),
                "sample_prev": None,
                "sample_next": None,
                "ego2global": np.eye(4),
                "lidar2ego": np.eye(4),
                "lidar2global": np.eye(4),
                "cams": cams,
                "anns": anns,
            }
        )
    return frames


def write_log(logs_root: Path, frames: list[dict], split: str = "test") -> Path:
    path = logs_root / split / f"{frames[0]['log_name']}.pkl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(frames, protocol=pickle.HIGHEST_PROTOCOL))  # as OpenScene
    return path


def navsim_dataset(
    root: Path, logs: list[list[dict]] | None = None, split: str = "test", cache: bool = True
) -> Path:
    """Logs (default: one 16-frame fixture log) with camera files, converted by
    `NavsimConverter` (stride 1, images copied at 224x112), the fixture map, and (with
    `cache`) the metric cache built by `autovla data metric-cache navsim`. Returns the
    dataset directory `root/data`."""
    from typer.testing import CliRunner

    from autovla.cli import app
    from autovla.data.sources.navsim import NavsimConverter
    from autovla.data.sources.runner import ImageOptions, run_conversion

    blobs = root / "sensor_blobs" / split
    for frames in logs or [make_log(n=16)]:
        write_log(root / "navsim_logs", make_log_files(frames, blobs), split)
    write_map(root / "maps")
    data = root / "data"
    conv = NavsimConverter(root / "navsim_logs", root / "sensor_blobs", data, split=split,
                           stride=1, images=ImageOptions(copy=True, size=(224, 112)))  # fmt: skip
    run_conversion(conv.units(), conv, data, progress=False)
    if cache:
        r = CliRunner().invoke(app, ["data", "metric-cache", "navsim", "--logs",
                                     str(root / "navsim_logs"), "--maps", str(root / "maps"),
                                     "--data", str(data), "--quiet"])  # fmt: skip
        assert r.exit_code == 0, r.output
    return data


def make_log_files(frames: list[dict], blobs: Path) -> list[dict]:
    """Write a tiny JPEG for every camera path of `frames` under `blobs`; returns frames."""
    from _sources_fixtures import jpeg_bytes

    jpg = jpeg_bytes()
    for f in frames:
        for cam in f["cams"].values():
            p = blobs / cam["data_path"]
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(jpg)
    return frames
