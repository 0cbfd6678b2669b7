"""nuPlan vector maps (`map.gpkg`) read without the nuPlan devkit: lanes, lane connectors,
roadblocks, roadblock connectors, intersections, carparks and baseline paths, as a lane graph
with spatial indexes (docs/navsim.md, "Maps").

The GeoPackage is read with `sqlite3` and `shapely` alone: each table's geometry column and
CRS come from `gpkg_geometry_columns` / `gpkg_spatial_ref_sys`, each geometry blob is a
GeoPackageBinary header followed by ISO WKB. When the `meta` table names a
`projectedCoordSystem` that differs from the storage CRS, every geometry is reprojected to it
with pyproj (log poses are in that projected frame). An object's id is `str(fid)`, as the
devkit makes it.

A map is loaded once per process (`MapStore`) and queried with `shapely.STRtree`.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely

from autovla.io import read_json
from autovla.paths import UnsafePathError, check_name
from autovla.scoring.wkb import LINES, POLYGONS, UnexpectedGeometry, check_wkb

MAPS_JSON = "nuplan-maps-v1.0.json"
LOCATIONS = (
    "sg-one-north",
    "us-ma-boston",
    "us-nv-las-vegas-strip",
    "us-pa-pittsburgh-hazelwood",
)
LOCATION_ALIASES = {"las_vegas": "us-nv-las-vegas-strip"}  # as NAVSIM's scenario maps it

# Map object kinds. The first five match the metric cache's drivable-map types.
LANE, LANE_CONNECTOR, ROADBLOCK, INTERSECTION, CARPARK_AREA, ROADBLOCK_CONNECTOR = range(6)

# GeoPackage tables and the columns read from each (docs/navsim.md, section 2).
TABLES: dict[str, tuple[str, ...]] = {
    "lanes_polygons": ("lane_group_fid", "speed_limit_mps"),
    "lane_connectors": (
        "exit_lane_fid",
        "entry_lane_fid",
        "lane_group_connector_fid",
        "speed_limit_mps",
    ),
    "gen_lane_connectors_scaled_width_polygons": ("lane_connector_fid",),
    "lane_groups_polygons": (),
    "lane_group_connectors": ("from_lane_group_fid", "to_lane_group_fid"),
    "intersections": (),
    "carpark_areas": (),
    "baseline_paths": ("lane_fid", "lane_connector_fid"),
}


# Geometry types each layer may hold; anything else, GeometryCollections above all (nested
# ones crash GEOS), is refused before shapely parses it.
LAYER_GEOMETRY: dict[str, frozenset[int]] = {t: POLYGONS for t in TABLES}
LAYER_GEOMETRY["baseline_paths"] = LINES
LAYER_GEOMETRY["lane_connectors"] = LINES | POLYGONS  # not used; devkit maps store lines
# the other tables the reader opens; each must be a plain table (a view can run any query)
GPKG_TABLES = ("gpkg_geometry_columns", "gpkg_spatial_ref_sys")
MAP_READ_SECONDS = 600.0  # SQLite work allowed for one map (a real one reads in seconds)
_PROGRESS_OPS = 10_000  # SQLite virtual-machine steps between two looks at the clock


class MapError(ValueError):
    """A map that cannot be used; the message names the file, the layer, the record, the field."""

    def __init__(self, file: str | os.PathLike, message: str, layer: str = "", record=None):
        self.file = str(file)
        where = f" layer {layer!r}" if layer else ""
        where += f" record {record!r}" if record is not None else ""
        super().__init__(f"{self.file}:{where} {message}")


# --- GeoPackage reading ----------------------------------------------------------------------
_ENVELOPE_BYTES = {0: 0, 1: 32, 2: 48, 3: 48, 4: 64}


def wkb_of_gpkg_blob(blob: bytes) -> bytes:
    """The ISO WKB inside one GeoPackageBinary blob (OGC GeoPackage 1.3, 2.1.3.1.1)."""
    if len(blob) < 8 or blob[:2] != b"GP":
        raise ValueError("not a GeoPackageBinary blob (no 'GP' magic)")
    if blob[2] != 0:
        raise ValueError(f"GeoPackageBinary version {blob[2]} (expected 0)")
    flags = blob[3]
    if flags & 0x20:
        raise ValueError("extended GeoPackageBinary geometries are not supported")
    env = (flags >> 1) & 0x07
    if env not in _ENVELOPE_BYTES:
        raise ValueError(f"invalid envelope indicator {env}")
    return blob[8 + _ENVELOPE_BYTES[env] :]


@dataclass
class Layer:
    """One GeoPackage table: fids, geometries (storage CRS) and the requested columns."""

    fids: np.ndarray  # int64
    geoms: np.ndarray  # shapely geometries (object)
    columns: dict[str, list]
    srs_id: int | None
    problems: list[str] = field(default_factory=list)  # rows left out, and why

    @property
    def ids(self) -> list[str]:
        return [str(int(f)) for f in self.fids]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def read_layer(con: sqlite3.Connection, file: Path, table: str, columns: Sequence[str]) -> Layer:
    """Read `table` (its fid, geometry and `columns`) from an open GeoPackage."""
    row = con.execute(
        "SELECT column_name, srs_id FROM gpkg_geometry_columns WHERE table_name = ?", (table,)
    ).fetchone()
    if row is None:
        raise MapError(file, "missing (not in gpkg_geometry_columns)", table)
    geom_col, srs_id = row
    have = {r[1] for r in con.execute(f"PRAGMA table_info({_quote(table)})")}
    if not have:
        raise MapError(file, "missing (no such table)", table)
    fid_col = _fid_column(con, table, have)
    for c in columns:
        if c not in have:
            raise MapError(file, f"field {c!r}: missing column", table)
    select = ", ".join(_quote(c) for c in (fid_col, geom_col, *columns))
    rows = con.execute(f"SELECT {select} FROM {_quote(table)} ORDER BY {_quote(fid_col)}")
    rows = rows.fetchall()
    problems: list[str] = []  # rows without a usable geometry are left out

    def drop(r, why: str) -> None:
        problems.append(f"layer {table!r} record {r[0]!r} field {geom_col!r}: {why}")

    kept, bodies = [], []
    allowed = LAYER_GEOMETRY.get(table, LINES | POLYGONS)
    for r in rows:
        if type(r[0]) is not int:
            raise MapError(file, f"field {fid_col!r}: {_short(r[0])} is not an integer id", table)
        try:
            if r[1] is None:
                raise ValueError("missing")
            if not isinstance(r[1], bytes):
                raise ValueError(f"not a blob ({type(r[1]).__name__})")
            body = wkb_of_gpkg_blob(r[1])
            check_wkb(body, allowed)
            bodies.append(body)
            kept.append(r)
        except UnexpectedGeometry as e:
            raise MapError(file, f"field {geom_col!r}: {e}", table, r[0]) from None
        except ValueError as e:
            drop(r, str(e))
    geoms = shapely.from_wkb(bodies, on_invalid="ignore") if bodies else np.empty(0, object)
    ok = np.array([g is not None for g in geoms], dtype=bool)
    for r in (r for r, good in zip(kept, ok, strict=True) if not good):
        drop(r, "unreadable WKB")
    kept = [r for r, good in zip(kept, ok, strict=True) if good]
    geoms = shapely.force_2d(np.asarray(geoms, dtype=object)[ok])
    cols = {c: [r[2 + i] for r in kept] for i, c in enumerate(columns)}
    fids = np.array([r[0] for r in kept], dtype=np.int64)
    srs = None if srs_id in (-1, 0) else srs_id
    return Layer(fids, np.asarray(geoms, dtype=object), cols, srs, problems)


def _short(v) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _fid_column(con: sqlite3.Connection, table: str, have: set[str]) -> str:
    pk = [r[1] for r in con.execute(f"PRAGMA table_info({_quote(table)})") if r[5] == 1]
    if pk:
        return pk[0]
    return "fid" if "fid" in have else "rowid"


def _srs(con: sqlite3.Connection, srs_id: int):
    import pyproj

    org, code, definition = con.execute(
        "SELECT organization, organization_coordsys_id, definition FROM gpkg_spatial_ref_sys "
        "WHERE srs_id = ?",
        (srs_id,),
    ).fetchone() or (None, None, None)
    if isinstance(org, str) and org.upper() == "EPSG" and code is not None:
        if type(code) is not int or code <= 0:
            raise ValueError(f"srs_id {srs_id}: field 'organization_coordsys_id' {_short(code)} "
                             "is not a positive EPSG code")  # fmt: skip
        return pyproj.CRS.from_epsg(code)
    if isinstance(definition, str) and definition.strip().lower() != "undefined":
        return pyproj.CRS.from_user_input(definition)
    raise ValueError(f"srs_id {srs_id} has no usable definition in gpkg_spatial_ref_sys")


def _check_plain_tables(con: sqlite3.Connection, file: Path) -> None:
    """Every table the reader queries must be a plain table: a view (or a virtual table) of
    the same name would run whatever query it holds, a recursive one without end."""
    names = (*GPKG_TABLES, *TABLES, "meta")
    marks = ", ".join("?" * len(names))
    rows = con.execute(
        f"SELECT name, type, sql FROM sqlite_master WHERE name IN ({marks})", names
    ).fetchall()
    for name, kind, sql in rows:
        virtual = isinstance(sql, str) and sql.lstrip().upper().startswith("CREATE VIRTUAL")
        if kind != "table" or virtual:
            what = "a virtual table" if virtual else f"a {kind}"
            raise MapError(file, f"is {what}, not a table (only plain tables are read)", name)


def _meta(con: sqlite3.Connection) -> dict[str, str]:
    try:
        rows = con.execute('SELECT "key", "value" FROM meta').fetchall()
    except sqlite3.Error:
        return {}
    return {str(k): str(v) for k, v in rows if k is not None and v is not None}


def _reprojector(con: sqlite3.Connection, file: Path, srs_ids: set[int | None]):
    """A function reprojecting storage coordinates to the map's projectedCoordSystem, or None
    when the map names none or already stores its geometries in it."""
    import pyproj

    target = _meta(con).get("projectedCoordSystem")
    if not target:
        return None, None
    try:
        dst = pyproj.CRS.from_user_input(target)
    except pyproj.exceptions.CRSError as e:
        msg = f"field 'projectedCoordSystem': unknown CRS {target!r} ({e})"
        raise MapError(file, msg, "meta") from None
    ids = {s for s in srs_ids if s is not None}
    if len(ids) > 1:
        raise MapError(file, f"layers are stored in different CRSs (srs_id {sorted(ids)})")
    if not ids:  # no storage CRS declared: the coordinates are taken as projected already
        return None, dst
    try:
        src = _srs(con, ids.pop())
    except (ValueError, pyproj.exceptions.CRSError) as e:
        raise MapError(file, f"storage CRS: {e}", "gpkg_spatial_ref_sys") from None
    if src.equals(dst, ignore_axis_order=True):
        return None, dst
    tr = pyproj.Transformer.from_crs(src, dst, always_xy=True)

    def project(geoms: np.ndarray) -> np.ndarray:
        return shapely.transform(geoms, lambda xy: np.stack(tr.transform(xy[:, 0], xy[:, 1]), -1))

    return project, dst


# --- the map ---------------------------------------------------------------------------------
@dataclass(eq=False)
class Edge:
    """A lane or lane connector: a node of the lane graph (devkit `interior_edges`)."""

    id: str
    kind: int  # LANE or LANE_CONNECTOR
    polygon: shapely.Geometry
    baseline: np.ndarray  # (N, 3) x, y, heading: the baseline path's vertices
    speed_limit: float | None
    block: Block | None = None
    outgoing: list[Edge] = field(default_factory=list)
    incoming: list[Edge] = field(default_factory=list)

    @property
    def length(self) -> float:
        d = np.diff(self.baseline[:, :2], axis=0)
        return float(np.hypot(d[:, 0], d[:, 1]).sum())

    def __repr__(self) -> str:
        return f"Edge({'lane' if self.kind == LANE else 'lane_connector'} {self.id})"


@dataclass(eq=False)
class Block:
    """A roadblock (lane group) or roadblock connector (lane group connector)."""

    id: str
    kind: int  # ROADBLOCK or ROADBLOCK_CONNECTOR
    polygon: shapely.Geometry
    edges: list[Edge] = field(default_factory=list)  # interior lanes / lane connectors
    outgoing: list[Block] = field(default_factory=list)
    incoming: list[Block] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"Block({'roadblock' if self.kind == ROADBLOCK else 'connector'} {self.id})"


def discrete_path(line: shapely.Geometry) -> np.ndarray:
    """Vertices of a baseline path with headings towards the next vertex; the last vertex
    repeats the previous heading (as the devkit's discrete baseline path)."""
    xy = shapely.get_coordinates(line)
    if len(xy) < 2:
        return np.concatenate([xy, np.zeros((len(xy), 1))], 1)
    d = np.diff(xy, axis=0)
    h = np.arctan2(d[:, 1], d[:, 0])
    return np.concatenate([xy, np.append(h, h[-1])[:, None]], 1)


class NuPlanMap:
    """The vector layers PDM scoring needs, linked into a lane graph, in the projected CRS."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.lanes: dict[str, Edge] = {}
        self.connectors: dict[str, Edge] = {}
        self.roadblocks: dict[str, Block] = {}
        self.roadblock_connectors: dict[str, Block] = {}
        self.crs = None
        self.problems: list[str] = []  # records left out of the graph, and why
        self._load()
        if self.problems:
            import logging

            logging.getLogger(__name__).warning(
                "%s: %d map records left out, e.g. %s",
                self.path,
                len(self.problems),
                "; ".join(self.problems[:3]),
            )

    # -- loading --
    def _load(self) -> None:
        path = self.path
        if not path.is_file():
            raise MapError(path, "map file not found")
        if path.stat().st_size == 0:
            raise MapError(path, "empty file (not a GeoPackage)")
        try:
            # as an escaped URI ("?" or "#" in a file name would start SQLite URI parameters)
            con = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
        except sqlite3.Error as e:
            raise MapError(path, f"cannot open as SQLite/GeoPackage: {e}") from None
        deadline = time.monotonic() + MAP_READ_SECONDS
        con.set_progress_handler(lambda: time.monotonic() > deadline, _PROGRESS_OPS)

        def error(e: sqlite3.Error, what: str) -> MapError:
            if time.monotonic() > deadline:  # the progress handler interrupted the query
                return MapError(path, f"reading took over {MAP_READ_SECONDS:.0f} s")
            return MapError(path, f"{what} ({e})")

        try:
            try:
                _check_plain_tables(con, path)
                con.execute("SELECT count(*) FROM gpkg_geometry_columns").fetchone()
            except sqlite3.DatabaseError as e:
                raise error(e, "not a GeoPackage") from None
            layers = {t: read_layer(con, path, t, cols) for t, cols in TABLES.items()}
            project, self.crs = _reprojector(con, path, {ly.srs_id for ly in layers.values()})
        except sqlite3.DatabaseError as e:
            raise error(e, "broken GeoPackage") from None
        finally:
            con.close()
        if project is not None:
            for ly in layers.values():
                ly.geoms = project(ly.geoms)
        self._build(layers)

    def _build(self, ly: dict[str, Layer]) -> None:
        """Link the layers into the lane graph. A record that cannot be used (no baseline
        path, no polygon, a link to a missing object) is left out and listed in `problems`,
        as the devkit would fail only on using it."""
        problems = self.problems
        for layer in ly.values():
            problems.extend(layer.problems)

        def skip(layer: str, record, why: str) -> None:
            problems.append(f"layer {layer!r} record {str(record)!r}: {why}")

        baselines: dict[tuple[int, str], np.ndarray] = {}
        bp = ly["baseline_paths"]
        for fid, g, lane, conn in zip(
            bp.fids, bp.geoms, bp.columns["lane_fid"], bp.columns["lane_connector_fid"],
            strict=True,
        ):  # fmt: skip
            path = discrete_path(g)
            if len(path) < 2:
                skip("baseline_paths", fid, "fewer than 2 vertices")
            elif lane is not None:
                baselines[(LANE, _sid(lane))] = path
            elif conn is not None:
                baselines[(LANE_CONNECTOR, _sid(conn))] = path
            else:
                skip("baseline_paths", fid, "both lane_fid and lane_connector_fid are empty")
        conn_polys = {}
        cp = ly["gen_lane_connectors_scaled_width_polygons"]
        for g, c in zip(cp.geoms, cp.columns["lane_connector_fid"], strict=True):
            if c is not None:
                conn_polys[_sid(c)] = g

        rb = ly["lane_groups_polygons"]
        for fid, g in zip(rb.fids, rb.geoms, strict=True):
            self.roadblocks[str(fid)] = Block(str(fid), ROADBLOCK, g)
        rbc = ly["lane_group_connectors"]
        for fid, g in zip(rbc.fids, rbc.geoms, strict=True):
            self.roadblock_connectors[str(fid)] = Block(str(fid), ROADBLOCK_CONNECTOR, g)

        la = ly["lanes_polygons"]
        for fid, g, group, limit in zip(
            la.fids, la.geoms, la.columns["lane_group_fid"], la.columns["speed_limit_mps"],
            strict=True,
        ):  # fmt: skip
            lid = str(fid)
            base = baselines.get((LANE, lid))
            block = self.roadblocks.get(_sid(group))
            if base is None:
                skip("lanes_polygons", lid, "no baseline path (baseline_paths.lane_fid)")
            elif block is None:
                skip("lanes_polygons", lid, f"field 'lane_group_fid': roadblock "
                     f"{_sid(group)!r} not in lane_groups_polygons")  # fmt: skip
            else:
                speed = _limit(limit, self.path, "lanes_polygons", lid)
                edge = Edge(lid, LANE, g, base, speed, block)
                block.edges.append(edge)
                self.lanes[lid] = edge

        lc = ly["lane_connectors"]
        cols = lc.columns
        for fid, exit_, entry, group, limit in zip(
            lc.fids, cols["exit_lane_fid"], cols["entry_lane_fid"],
            cols["lane_group_connector_fid"], cols["speed_limit_mps"], strict=True,
        ):  # fmt: skip
            cid = str(fid)
            base, poly = baselines.get((LANE_CONNECTOR, cid)), conn_polys.get(cid)
            block = self.roadblock_connectors.get(_sid(group))
            src, dst = self.lanes.get(_sid(exit_)), self.lanes.get(_sid(entry))
            checks = (
                (base, "no baseline path (baseline_paths.lane_connector_fid)"),
                (poly, "no polygon in gen_lane_connectors_scaled_width_polygons"),
                (block, f"field 'lane_group_connector_fid': {_sid(group)!r} not in "
                 "lane_group_connectors"),
                (src, f"field 'exit_lane_fid': lane {_sid(exit_)!r} not in lanes_polygons"),
                (dst, f"field 'entry_lane_fid': lane {_sid(entry)!r} not in lanes_polygons"),
            )  # fmt: skip
            why = next((msg for obj, msg in checks if obj is None), None)
            if why is not None:
                skip("lane_connectors", cid, why)
                continue
            speed = _limit(limit, self.path, "lane_connectors", cid)
            edge = Edge(cid, LANE_CONNECTOR, poly, base, speed, block)
            block.edges.append(edge)
            self.connectors[cid] = edge
            src.outgoing.append(edge)
            edge.incoming.append(src)
            edge.outgoing.append(dst)
            dst.incoming.append(edge)

        cols = rbc.columns
        for fid, a, b in zip(
            rbc.fids, cols["from_lane_group_fid"], cols["to_lane_group_fid"], strict=True
        ):
            conn = self.roadblock_connectors[str(fid)]
            src, dst = self.roadblocks.get(_sid(a)), self.roadblocks.get(_sid(b))
            if src is None or dst is None:
                name, v = ("from_lane_group_fid", a) if src is None else ("to_lane_group_fid", b)
                skip("lane_group_connectors", fid, f"field {name!r}: roadblock {_sid(v)!r} not "
                     "in lane_groups_polygons (its links are left out)")  # fmt: skip
                continue
            src.outgoing.append(conn)
            conn.incoming.append(src)
            conn.outgoing.append(dst)
            dst.incoming.append(conn)

        self.intersections = (ly["intersections"].ids, ly["intersections"].geoms)
        self.carparks = (ly["carpark_areas"].ids, ly["carpark_areas"].geoms)
        self._rb = list(self.roadblocks.values())
        self._rbc = list(self.roadblock_connectors.values())
        self._rb_tree = shapely.STRtree([b.polygon for b in self._rb])
        self._rbc_tree = shapely.STRtree([b.polygon for b in self._rbc])
        self._int_tree = shapely.STRtree(self.intersections[1])
        self._cp_tree = shapely.STRtree(self.carparks[1])
        if not self.roadblocks:
            raise MapError(path, "no roadblocks (empty map)", "lane_groups_polygons")

    # -- queries --
    def block(self, block_id: str) -> Block | None:
        """A route id looked up as a roadblock, then as a roadblock connector (as PDM does)."""
        return self.roadblocks.get(block_id) or self.roadblock_connectors.get(block_id)

    def blocks_in(self, geometry: shapely.Geometry) -> tuple[list[Block], list[Block]]:
        """(roadblocks, roadblock connectors) whose polygons intersect `geometry`."""
        rb = self._rb_tree.query(geometry, predicate="intersects")
        rbc = self._rbc_tree.query(geometry, predicate="intersects")
        return [self._rb[i] for i in sorted(rb)], [self._rbc[i] for i in sorted(rbc)]

    def nearest_blocks(self, point: shapely.Point) -> list[Block]:
        """The nearest roadblock and the nearest roadblock connector (those that exist)."""
        out = []
        for tree, items in ((self._rb_tree, self._rb), (self._rbc_tree, self._rbc)):
            if len(items):
                out.append(items[int(tree.query_nearest(point, all_matches=False)[0])])
        return out

    def areas_in(self, geometry: shapely.Geometry, kind: int) -> list[tuple[str, shapely.Geometry]]:
        """(id, polygon) of the intersections or carpark areas intersecting `geometry`."""
        tree, (ids, geoms) = (
            (self._int_tree, self.intersections)
            if kind == INTERSECTION
            else (self._cp_tree, self.carparks)
        )
        hit = sorted(tree.query(geometry, predicate="intersects"))
        return [(ids[i], geoms[i]) for i in hit]


def _sid(v) -> str:
    """An id column value as the devkit's string id (ints may come back as floats or text)."""
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v).strip()


def _limit(v, file: Path, layer: str, record: str) -> float | None:
    """A speed limit in m/s; None when absent or not finite (as the devkit treats NaN)."""
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        msg = f"field 'speed_limit_mps': {_short(v)} is not a number"
        raise MapError(file, msg, layer, record)
    v = float(v)
    return None if not np.isfinite(v) else v


# --- maps on disk ----------------------------------------------------------------------------
def map_file(maps_root: str | os.PathLike, location: str) -> Path:
    """`<maps>/<location>/<version>/map.gpkg`, the version from `nuplan-maps-v1.0.json` (or the
    only version folder when the JSON is absent)."""
    root = Path(maps_root)
    loc = LOCATION_ALIASES.get(location, location)
    try:
        check_name(loc, "map location")
    except UnsafePathError as e:
        raise MapError(root, str(e)) from None
    if not (root / loc).is_dir():
        raise MapError(
            root, f"map location {loc!r} not found (expected {root / loc}/<version>/map.gpkg)"
        )
    index = root / MAPS_JSON
    if index.is_file():
        try:
            version = str(read_json(index)[loc]["version"])
        except (ValueError, KeyError, TypeError) as e:
            msg = f"no version for location {loc!r} ({type(e).__name__}: {e})"
            raise MapError(index, msg) from None
        try:
            check_name(version, "map version")
        except UnsafePathError as e:
            raise MapError(index, str(e)) from None
    else:
        versions = sorted(p.name for p in (root / loc).iterdir() if (p / "map.gpkg").is_file())
        if len(versions) != 1:
            raise MapError(
                root / loc,
                f"{MAPS_JSON} is missing and there are "
                f"{len(versions)} map versions here: {versions}",
            )
        version = versions[0]
    return root / loc / version / "map.gpkg"


class MapStore:
    """Maps by location, each read once per process."""

    def __init__(self, maps_root: str | os.PathLike):
        self.root = Path(maps_root)
        self._maps: dict[str, NuPlanMap | MapError] = {}

    def get(self, location: str) -> NuPlanMap:
        path = map_file(self.root, location)
        key = str(path)
        if key not in self._maps:
            try:
                self._maps[key] = NuPlanMap(path)
            except MapError as e:  # remembered: a broken map is not re-read for every scene
                self._maps[key] = e
        got = self._maps[key]
        if isinstance(got, MapError):
            raise got
        return got
