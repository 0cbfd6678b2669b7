"""The metric cache: everything needed to score plans for one scene, in its ego frame.

One object for every source (converted NAVSIM logs with nuPlan maps, the embedded world),
the counterpart of NAVSIM v1.1's `MetricCache` (docs/scoring.md). Everything is stored in
the current ego frame: origin at the rear axle at t = 0, x forward, y left, heading
counter-clockwise (radians, wrapped). Plans (ego frame) need no transform.

File format: one `.npz` per scene, loaded with `allow_pickle=False`: strings as unicode
arrays, polygons as WKB bytes (one uint8 buffer plus int64 offsets).
"""

from __future__ import annotations

import io
import itertools
import math
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely

from autovla.io import atomic_path
from autovla.paths import inside
from autovla.scoring.wkb import POLYGONS, check_wkb

VERSION = 1
OBS_STEPS = 51  # scoring observation: 0 .. 5 s at 0.1 s
PDM_STEPS = 51  # PDM-Closed trajectory: 0 .. 5 s at 0.1 s (4 s are scored)

# drivable-map object types (NAVSIM's PDMDrivableMap layers)
LANE, LANE_CONNECTOR, ROADBLOCK, INTERSECTION, CARPARK_AREA = range(5)
MAP_TYPES = ("lane", "lane_connector", "roadblock", "intersection", "carpark_area")
# track classes: the first three are agents, the rest static objects
TRACK_TYPES = (
    "vehicle",
    "pedestrian",
    "bicycle",
    "traffic_cone",
    "barrier",
    "czone_sign",
    "generic_object",
)
N_AGENT_TYPES = 3


class MetricCacheError(ValueError):
    """A metric cache that cannot be read or is inconsistent; the message names file/field."""


@dataclass
class MetricCache:
    """Scoring inputs of one scene (see the module docstring for the frame).

    Shapes: ego (7,) = x, y, heading, vx, vy, ax, ay of the rear axle at t = 0 (velocity and
    acceleration in the ego frame); centerline (K, 3); map_types (M,) int8 and map_polygons
    (M,) shapely Polygons; track_types (A,) int8 into TRACK_TYPES; boxes (51, A, 5) = x, y,
    heading, length, width and velocity (51, A, 2), NaN where a track is absent;
    pdm_closed (51, 3) the PDM-Closed reference's poses at 0.1 s from 0 to 5 s (the first
    41 are scored; all 51 make the `pdm-closed` baseline's plan); pdm_progress its raw
    progress times its NC x DAC, scored as a plan (normalises ego progress).
    """

    token: str
    ego: np.ndarray
    centerline: np.ndarray
    route_lane_ids: list[str]
    map_ids: list[str]
    map_types: np.ndarray
    map_polygons: np.ndarray
    track_ids: list[str]
    track_types: np.ndarray
    boxes: np.ndarray
    velocity: np.ndarray
    pdm_closed: np.ndarray
    pdm_progress: float
    speed_limit: float | None = None
    red_light_ids: list[str] = field(default_factory=list)
    version: int = VERSION
    # per-process derived arrays (prepared geometry, corners, ...), never saved
    derived: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.ego = np.asarray(self.ego, dtype=np.float64)
        self.centerline = np.asarray(self.centerline, dtype=np.float64).reshape(-1, 3)
        self.route_lane_ids = [str(x) for x in self.route_lane_ids]
        self.map_ids = [str(x) for x in self.map_ids]
        self.map_types = np.asarray(self.map_types, dtype=np.int8).reshape(-1)
        polys = np.empty(len(self.map_polygons), dtype=object)
        polys[:] = list(self.map_polygons)
        self.map_polygons = polys
        self.track_ids = [str(x) for x in self.track_ids]
        self.track_types = np.asarray(self.track_types, dtype=np.int8).reshape(-1)
        a = len(self.track_ids)
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(OBS_STEPS, a, 5)
        self.velocity = np.asarray(self.velocity, dtype=np.float64).reshape(OBS_STEPS, a, 2)
        self.pdm_closed = np.asarray(self.pdm_closed, dtype=np.float64)
        self.pdm_progress = float(self.pdm_progress)
        self.red_light_ids = [str(x) for x in self.red_light_ids]
        self.validate()

    def validate(self, where: str | None = None) -> None:
        """Shapes and values the scorer relies on; MetricCacheError naming the field."""
        at = where or f"metric cache {self.token!r}"

        def bad(name: str, why: str) -> MetricCacheError:
            return MetricCacheError(f"{at}, field {name!r}: {why}")

        if self.version != VERSION:
            raise bad("version", f"layout {self.version}, this autovla reads {VERSION}; rebuild")
        if self.ego.shape != (7,) or not np.isfinite(self.ego).all():
            raise bad("ego", f"expected 7 finite values, got shape {self.ego.shape}")
        if not np.isfinite(self.centerline).all():
            raise bad("centerline", "has NaN or infinite values")
        if len(self.centerline) < 2 or not np.ptp(self.centerline[:, :2], axis=0).any():
            raise bad("centerline", "needs at least two distinct points")
        m = len(self.map_ids)
        if len(self.map_types) != m or len(self.map_polygons) != m:
            raise bad(
                "map_types",
                f"{len(self.map_types)} types and {len(self.map_polygons)} polygons "
                f"for {m} map ids",
            )
        if m and (self.map_types.min() < 0 or self.map_types.max() >= len(MAP_TYPES)):
            raise bad("map_types", f"values must be in 0..{len(MAP_TYPES) - 1}")
        if m and not all(
            isinstance(p, shapely.Polygon | shapely.MultiPolygon) for p in self.map_polygons
        ):
            raise bad("map_polygons", "every entry must be a Polygon or MultiPolygon")
        if len(self.track_types) != len(self.track_ids):
            raise bad("track_types", f"{len(self.track_types)} for {len(self.track_ids)} tracks")
        if len(self.track_types) and (
            self.track_types.min() < 0 or self.track_types.max() >= len(TRACK_TYPES)
        ):
            raise bad("track_types", f"values must be in 0..{len(TRACK_TYPES) - 1}")
        if self.pdm_closed.shape != (PDM_STEPS, 3) or not np.isfinite(self.pdm_closed).all():
            raise bad(
                "pdm_closed", f"expected ({PDM_STEPS}, 3) finite, got {self.pdm_closed.shape}"
            )
        if not np.isfinite(self.pdm_progress) or self.pdm_progress < 0:
            raise bad("pdm_progress", f"must be finite and >= 0, got {self.pdm_progress}")

    # --- derived views ------------------------------------------------------------------
    @property
    def on_route(self) -> np.ndarray:
        """(M,) bool: lanes and lane connectors on the route."""
        ids = set(self.route_lane_ids)
        lanes = (self.map_types == LANE) | (self.map_types == LANE_CONNECTOR)
        return lanes & np.array([i in ids for i in self.map_ids], dtype=bool)

    # --- files --------------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        wkb = shapely.to_wkb(self.map_polygons) if len(self.map_polygons) else []
        sizes = np.array([len(b) for b in wkb], dtype=np.int64)
        return {
            "version": np.array(self.version, dtype=np.int64),
            "token": np.array(self.token),
            "ego": self.ego,
            "centerline": self.centerline,
            "route_lane_ids": _strings(self.route_lane_ids),
            "map_ids": _strings(self.map_ids),
            "map_types": self.map_types,
            "map_wkb": np.frombuffer(b"".join(wkb), dtype=np.uint8),
            "map_wkb_offsets": np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
            "track_ids": _strings(self.track_ids),
            "track_types": self.track_types,
            "boxes": self.boxes,
            "velocity": self.velocity,
            "pdm_closed": self.pdm_closed,
            "pdm_progress": np.array(self.pdm_progress, dtype=np.float64),
            "speed_limit": np.array(np.nan if self.speed_limit is None else self.speed_limit),
            "red_light_ids": _strings(self.red_light_ids),
        }

    def save(self, path: str | Path) -> None:
        """Write atomically; the same cache always gives the same bytes."""
        with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, arr in self.arrays().items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.asarray(arr, order="C"), allow_pickle=False)
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, buf.getvalue(), compresslevel=1)

    @classmethod
    def load(cls, path: str | Path) -> MetricCache:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"metric cache not found: {path}")
        z = read_npz(path)

        def bad(name: str, why: str) -> MetricCacheError:
            return MetricCacheError(f"{path}, field {name!r}: {why}")

        for name, (kinds, ndim) in _FIELDS.items():
            a = z[name]
            if a.dtype.kind not in kinds or a.ndim != ndim:
                want = {"U": "text", "iu": "integers", "fiu": "numbers", "u": "bytes"}[kinds]
                shape = "a scalar" if ndim == 0 else f"{ndim}-D"
                raise bad(name, f"expected {want} ({shape}), got {a.dtype} of shape {a.shape}")
        if z["map_wkb"].dtype != np.uint8:
            raise bad("map_wkb", f"expected uint8 bytes, got {z['map_wkb'].dtype}")
        a = len(z["track_ids"])
        shapes = {"centerline": (len(z["centerline"]), 3), "boxes": (OBS_STEPS, a, 5),
                  "velocity": (OBS_STEPS, a, 2)}  # fmt: skip
        for name, shape in shapes.items():
            if z[name].shape != shape:
                raise bad(name, f"expected shape {shape}, got {z[name].shape}")
        version = int(z["version"])
        if version != VERSION:
            raise bad("version", f"layout {version}, this autovla reads {VERSION}; rebuild it")
        for name, n in (("map_types", len(MAP_TYPES)), ("track_types", len(TRACK_TYPES))):
            if z[name].size and (z[name].min() < 0 or z[name].max() >= n):
                raise bad(name, f"values must be in 0..{n - 1}")
        buf, off = z["map_wkb"].tobytes(), z["map_wkb_offsets"]
        if len(off) != len(z["map_ids"]) + 1 or off[0] != 0 or off[-1] != len(buf):
            raise bad("map_wkb_offsets", f"expected {len(z['map_ids']) + 1} offsets from 0 to "
                      f"{len(buf)} (the map_wkb size), got {len(off)}")  # fmt: skip
        if (np.diff(off) < 0).any():
            raise bad("map_wkb_offsets", "offsets must not decrease")
        blobs = [buf[a:b] for a, b in itertools.pairwise(off.tolist())]
        for i, blob in enumerate(blobs):
            try:
                check_wkb(blob, POLYGONS)
            except ValueError as e:  # before GEOS, which crashes on nested collections
                raise bad(
                    "map_wkb", f"polygon {i} (map id {str(z['map_ids'][i])!r}): {e}"
                ) from None
        try:
            polys = shapely.from_wkb(blobs)
        except shapely.errors.GEOSException as e:
            raise bad("map_wkb", str(e)) from None
        limit = float(z["speed_limit"])
        try:
            return cls(
                token=str(z["token"]),
                ego=z["ego"],
                centerline=z["centerline"],
                route_lane_ids=z["route_lane_ids"].tolist(),
                map_ids=z["map_ids"].tolist(),
                map_types=z["map_types"],
                map_polygons=polys,
                track_ids=z["track_ids"].tolist(),
                track_types=z["track_types"],
                boxes=z["boxes"],
                velocity=z["velocity"],
                pdm_closed=z["pdm_closed"],
                pdm_progress=float(z["pdm_progress"]),
                speed_limit=None if np.isnan(limit) else limit,
                red_light_ids=z["red_light_ids"].tolist(),
            )
        except MetricCacheError as e:
            raise MetricCacheError(f"{path}: {e}") from None
        except ValueError as e:  # reshape of inconsistent arrays
            raise MetricCacheError(f"{path}: inconsistent arrays ({e})") from None


MAX_CACHE_BYTES = 256 * 2**20  # uncompressed; a scene's cache is a few hundred kB


def read_npz(path: Path, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """The metric cache's fields from an `.npz`, read without trusting it: sizes come from the
    zip headers before anything is inflated (a zip bomb is refused, not unpacked), a member is
    never inflated past its declared size, and each array's header must describe exactly the
    bytes that follow (no object arrays, no huge shape over a short body)."""
    max_bytes = MAX_CACHE_BYTES if max_bytes is None else max_bytes
    try:
        with zipfile.ZipFile(path) as zf:
            infos = {i.filename: i for i in zf.infolist()}
            total = sum(i.file_size for i in infos.values())
            if total > max_bytes:
                raise MetricCacheError(
                    f"{path}: {total} bytes uncompressed, over the {max_bytes}-byte limit of "
                    "a metric cache (MAX_CACHE_BYTES)"
                )
            missing = [k for k in _REQUIRED if f"{k}.npy" not in infos]
            if missing:
                raise MetricCacheError(f"{path}: metric cache lacks field(s) {', '.join(missing)}")
            out = {}
            for k in _REQUIRED:
                with zf.open(infos[f"{k}.npy"]) as f:
                    raw = f.read(max_bytes + 1)
                out[k] = _npy(raw, f"{path}, field {k!r}")
            return out
    except MetricCacheError:
        raise
    # a corrupt member: bad CRC or size, unknown compression, encrypted, broken deflate stream
    except (OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError,
            RuntimeError, ValueError, zlib.error) as e:  # fmt: skip
        raise MetricCacheError(f"{path}: not a readable metric cache ({e})") from None


def _npy(raw: bytes, where: str) -> np.ndarray:
    f = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(f)
        read_header = {
            (1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0,
        }.get(version)
        if read_header is None:
            raise ValueError(f"npy format version {version}")
        shape, fortran, dtype = read_header(f)
    except (ValueError, TypeError, SyntaxError) as e:
        raise MetricCacheError(f"{where}: not a numpy array ({e})") from None
    if dtype.hasobject or dtype.names is not None or dtype.subdtype is not None:
        raise MetricCacheError(f"{where}: refusing dtype {dtype} (plain numbers and text only)")
    body = memoryview(raw)[f.tell() :]
    if math.prod(shape) * dtype.itemsize != len(body):
        raise MetricCacheError(
            f"{where}: header says {shape} x {dtype}, file holds {len(body)} bytes"
        )
    arr = np.frombuffer(body, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return arr.copy()


# field -> (dtype kinds allowed, dimensions)
_FIELDS = {
    "version": ("iu", 0), "token": ("U", 0), "ego": ("fiu", 1), "centerline": ("fiu", 2),
    "route_lane_ids": ("U", 1), "map_ids": ("U", 1), "map_types": ("iu", 1),
    "map_wkb": ("u", 1), "map_wkb_offsets": ("iu", 1), "track_ids": ("U", 1),
    "track_types": ("iu", 1), "boxes": ("fiu", 3), "velocity": ("fiu", 3),
    "pdm_closed": ("fiu", 2), "pdm_progress": ("fiu", 0), "speed_limit": ("fiu", 0),
    "red_light_ids": ("U", 1),
}  # fmt: skip


_REQUIRED = (
    "version", "token", "ego", "centerline", "route_lane_ids", "map_ids", "map_types",
    "map_wkb", "map_wkb_offsets", "track_ids", "track_types", "boxes", "velocity",
    "pdm_closed", "pdm_progress", "speed_limit", "red_light_ids",
)  # fmt: skip


def _strings(items: list[str]) -> np.ndarray:
    return np.array(list(items), dtype=str) if items else np.zeros(0, dtype="<U1")


def cache_path(root: str | Path, sample) -> Path:
    """The metric-cache file of a sample (its `scoring` field, relative to the dataset root)."""
    if not sample.scoring:
        raise MetricCacheError(f"sample {sample.id!r}, field 'scoring': no metric cache")
    return inside(root, sample.scoring, f"sample {sample.id!r}, field 'scoring'")


def load_cache(root: str | Path, sample) -> MetricCache:
    """A sample's metric cache; errors name the sample and the field."""
    path = cache_path(root, sample)
    if not path.is_file():
        raise FileNotFoundError(
            f"sample {sample.id!r}, field 'scoring': metric cache not found: {path}"
        )
    try:
        return MetricCache.load(path)
    except MetricCacheError as e:
        raise MetricCacheError(f"sample {sample.id!r}, field 'scoring': {e}") from None
