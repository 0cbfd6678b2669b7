"""nuPlan GeoPackage reader, lane graph, route correction, starting lane, centerline and
drivable map, on a map written by GDAL (tests/_nuplan_fixtures.py)."""

from __future__ import annotations

import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import shapely

from autovla.scoring import route as R
from autovla.scoring.nuplan_map import (
    CARPARK_AREA,
    INTERSECTION,
    LANE,
    LANE_CONNECTOR,
    ROADBLOCK,
    ROADBLOCK_CONNECTOR,
    Block,
    MapError,
    MapStore,
    NuPlanMap,
    discrete_path,
    map_file,
    wkb_of_gpkg_blob,
)

sys.path.insert(0, str(Path(__file__).parent))
import _nuplan_fixtures as F


@pytest.fixture(scope="module")
def maps(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("maps")
    F.write_map(root)  # lon/lat storage, UTM projectedCoordSystem (as the real maps)
    return root


@pytest.fixture(scope="module")
def m(maps) -> NuPlanMap:
    return MapStore(maps).get(F.LOCATION)


def local(xy) -> np.ndarray:
    """UTM -> the fixture's local frame."""
    from autovla.geometry import to_local

    return to_local(np.asarray(xy, dtype=np.float64), np.array([*F.ORIGIN, F.ROT]))


def ego(x: float, y: float, h: float = 0.0) -> np.ndarray:
    return F.local_pose_to_global((x, y, h))


# --- GeoPackage reading ----------------------------------------------------------------------
def test_geopackage_binary_header_variants():
    wkb = shapely.to_wkb(shapely.Point(1.5, -2.0))
    plain = b"GP\x00\x01" + struct.pack("<i", 4326) + wkb  # no envelope, little-endian
    xy = b"GP\x00\x03" + struct.pack("<i", 4326) + struct.pack("<4d", 1.5, 1.5, -2, -2) + wkb
    xyz = b"GP\x00\x04" + struct.pack(">i", 4326) + bytes(48) + wkb  # big-endian header
    for blob in (plain, xy, xyz):
        assert shapely.from_wkb(wkb_of_gpkg_blob(blob)).equals(shapely.Point(1.5, -2.0))
    for bad, why in ((b"XY\x00\x01" + bytes(4) + wkb, "magic"),
                     (b"GP\x00\x21" + bytes(4) + wkb, "extended"),
                     (b"GP\x00\x0e" + bytes(4) + wkb, "envelope")):  # fmt: skip
        with pytest.raises(ValueError, match=why):
            wkb_of_gpkg_blob(bad)


def test_reads_layers_reprojected_to_the_projected_crs(m):
    assert m.crs.to_epsg() == 32611
    assert sorted(m.lanes) == ["1001", "1002", "1003", "1004", "1005", "1006", "1008"]
    assert sorted(m.connectors) == ["2001", "2002", "2003"]
    assert sorted(m.roadblocks) == ["11", "12", "13", "14", "16"]
    assert sorted(m.roadblock_connectors) == ["21", "22"]
    # stored as lon/lat, read back in metres: lane 1001's baseline from (0, -1.75) to (100, ...)
    base = m.lanes["1001"].baseline
    np.testing.assert_allclose(local(base[[0, -1], :2]), [[0, -1.75], [100, -1.75]], atol=1e-6)
    np.testing.assert_allclose(base[:, 2], F.ROT, atol=1e-9)
    assert m.lanes["1001"].length == pytest.approx(100.0, abs=1e-6)
    assert m.lanes["1001"].speed_limit == F.SPEED_LIMIT
    assert m.connectors["2001"].speed_limit is None  # NaN in the file
    assert m.connectors["2001"].polygon.area == pytest.approx(70.0, abs=1e-4)
    ids, polys = m.intersections
    assert ids == ["31"] and polys[0].area == pytest.approx(20 * 10.5, abs=1e-3)


def test_stored_in_the_projected_crs_is_not_reprojected(tmp_path, m):
    F.write_map(tmp_path, storage=F.UTM, projected=F.UTM)
    utm = NuPlanMap(map_file(tmp_path, F.LOCATION))
    F.write_map(tmp_path / "nometa", storage=F.UTM, projected=None)
    nometa = NuPlanMap(map_file(tmp_path / "nometa", F.LOCATION))
    for other in (utm, nometa):
        for lid, lane in m.lanes.items():
            np.testing.assert_allclose(other.lanes[lid].baseline, lane.baseline, atol=1e-6)
            assert other.lanes[lid].polygon.equals_exact(lane.polygon, 1e-6)


def test_lane_graph(m):
    lane, conn = m.lanes["1001"], m.connectors["2001"]
    assert lane.block is m.roadblocks["11"] and conn.block is m.roadblock_connectors["21"]
    assert lane.outgoing == [conn] and conn.incoming == [lane]
    assert conn.outgoing == [m.lanes["1003"]] and m.lanes["1003"].incoming == [conn]
    assert [e.id for e in m.roadblocks["11"].edges] == ["1001", "1002"]
    assert [e.id for e in m.roadblock_connectors["21"].edges] == ["2001", "2002"]
    rb11, rbc21, rb12 = m.roadblocks["11"], m.roadblock_connectors["21"], m.roadblocks["12"]
    assert rb11.outgoing == [rbc21] and rbc21.outgoing == [rb12] and rb12.incoming == [rbc21]
    assert m.roadblocks["16"].outgoing == [] and m.roadblocks["16"].incoming == []
    assert m.block("21") is rbc21 and m.block("11") is rb11 and m.block("99") is None


def test_discrete_path_headings():
    p = discrete_path(shapely.LineString([(0, 0), (1, 0), (1, 1)]))
    np.testing.assert_allclose(p[:, 2], [0, np.pi / 2, np.pi / 2])


def test_map_is_read_once_per_process(maps, monkeypatch):
    store = MapStore(maps)
    first = store.get("las_vegas")  # NAVSIM's alias of us-nv-las-vegas-strip
    calls = []
    monkeypatch.setattr(NuPlanMap, "_load", lambda self: calls.append(1))
    assert store.get(F.LOCATION) is first and not calls


def test_map_layout_errors(tmp_path, maps):
    with pytest.raises(MapError, match="'sg-one-north' not found"):
        map_file(maps, "sg-one-north")
    with pytest.raises(MapError, match="map location"):
        map_file(maps, "../etc")
    # without the JSON index the only version folder is used
    shutil.copytree(maps / F.LOCATION, tmp_path / F.LOCATION)
    assert map_file(tmp_path, F.LOCATION) == tmp_path / F.LOCATION / F.VERSION / "map.gpkg"
    (tmp_path / F.LOCATION / "9.99").mkdir()
    (tmp_path / F.LOCATION / "9.99" / "map.gpkg").write_bytes(b"")
    with pytest.raises(MapError, match="2 map versions"):
        map_file(tmp_path, F.LOCATION)


@pytest.mark.parametrize(
    "content, match",
    [(b"", "empty file"), (b"this is not sqlite" * 100, "not a GeoPackage|broken")],
)
def test_empty_or_broken_geopackage(tmp_path, content, match):
    path = tmp_path / "map.gpkg"
    path.write_bytes(content)
    with pytest.raises(MapError, match=match) as e:
        NuPlanMap(path)
    assert str(path) in str(e.value)


def test_missing_layer_column_or_link(tmp_path):
    feats = F.map_features()
    del feats["lane_group_connectors"]
    F.write_map(tmp_path / "a", features=feats)
    with pytest.raises(MapError, match="layer 'lane_group_connectors'"):
        NuPlanMap(map_file(tmp_path / "a", F.LOCATION))
    feats = F.map_features()
    feats["lanes_polygons"] = [(f, g, {k: v for k, v in a.items() if k != "speed_limit_mps"})
                               for f, g, a in feats["lanes_polygons"]]  # fmt: skip
    F.write_map(tmp_path / "b", features=feats)
    with pytest.raises(MapError, match="'speed_limit_mps': missing column"):
        NuPlanMap(map_file(tmp_path / "b", F.LOCATION))


def test_unusable_records_are_left_out_and_listed(tmp_path, caplog):
    feats = F.map_features()
    feats["lane_connectors"][0][2]["entry_lane_fid"] = 4242  # connector 2001 -> nowhere
    feats["baseline_paths"] = [
        r for r in feats["baseline_paths"] if r[2]["lane_fid"] != 1004
    ]  # lane 1004 has no centre line
    F.write_map(tmp_path, features=feats)
    m = NuPlanMap(map_file(tmp_path, F.LOCATION))
    assert "2001" not in m.connectors and "1004" not in m.lanes
    assert m.roadblock_connectors["21"].edges == []  # 2002 entered lane 1004
    assert m.lanes["1001"].outgoing == []  # its connector is gone
    assert sorted(m.problems) == [
        "layer 'lane_connectors' record '2001': field 'entry_lane_fid': lane '4242' not in "
        "lanes_polygons",
        "layer 'lane_connectors' record '2002': field 'entry_lane_fid': lane '1004' not in "
        "lanes_polygons",
        "layer 'lanes_polygons' record '1004': no baseline path (baseline_paths.lane_fid)",
    ]
    assert "3 map records left out" in caplog.text
    # a geometry blob that is no GeoPackageBinary, one that holds no WKB, and a NULL one
    import sqlite3

    con = sqlite3.connect(map_file(tmp_path, F.LOCATION))
    for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"):
        con.execute(f'DROP TRIGGER "{name}"')  # GDAL's R-tree triggers need its functions
    con.execute("UPDATE intersections SET geom = X'00'")
    con.execute("UPDATE carpark_areas SET geom = X'47500001E61000000102'")
    con.execute("UPDATE walkways SET geom = NULL")
    con.commit()
    con.close()
    m = NuPlanMap(map_file(tmp_path, F.LOCATION))
    assert m.intersections[0] == [] and m.carparks[0] == []
    assert "layer 'intersections' record 31 field 'geom': not a GeoPackageBinary" in " ".join(
        m.problems
    )
    assert "layer 'carpark_areas' record 41 field 'geom': unreadable WKB" in m.problems


def test_broken_store_error_is_remembered(tmp_path):
    (tmp_path / F.LOCATION / F.VERSION).mkdir(parents=True)
    (tmp_path / F.LOCATION / F.VERSION / "map.gpkg").write_bytes(b"")
    store = MapStore(tmp_path)
    for _ in range(2):
        with pytest.raises(MapError, match="empty"):
            store.get(F.LOCATION)


# --- spatial queries -------------------------------------------------------------------------
def test_spatial_queries(m):
    p = ego(60, -1.75)
    rb, rbc = m.blocks_in(shapely.Point(p[0], p[1]).buffer(1.0))
    assert [b.id for b in rb] == ["11"] and rbc == []
    far = ego(300, -1.75)
    assert [b.id for b in m.nearest_blocks(shapely.Point(far[:2]))] == ["12", "21"]


def test_drivable_map_box(m):
    centre = ego(61.461, -1.75)
    d = R.drivable_map(m, centre)
    got = dict(zip(d.ids, d.types.tolist(), strict=True))
    assert got == {"11": ROADBLOCK, "12": ROADBLOCK, "13": ROADBLOCK, "14": ROADBLOCK,
                   "1001": LANE, "1002": LANE, "1003": LANE, "1004": LANE, "1005": LANE,
                   "1006": LANE, "2001": LANE_CONNECTOR, "2002": LANE_CONNECTOR,
                   "2003": LANE_CONNECTOR, "31": INTERSECTION, "41": CARPARK_AREA}  # fmt: skip
    assert "21" not in d.ids  # roadblock-connector polygons themselves are left out
    small = R.drivable_map(m, centre, radius=10.0)
    assert sorted(small.ids) == ["1001", "1002", "1005", "11", "13", "41"]


# --- route -----------------------------------------------------------------------------------
def ids(blocks) -> list[str]:
    return [b.id for b in blocks]


def test_route_lookup_dedupes_and_names_missing_ids(m):
    assert ids(R.route_blocks(m, ["11", "11", "21", "12", "21"])) == ["11", "21", "12"]
    with pytest.raises(R.RouteError, match="'777' is neither") as e:
        R.route_blocks(m, ["11", "777"])
    assert e.value.field == "roadblock_ids"


@pytest.mark.parametrize(
    "route, pose, expected",
    [
        (["11", "21", "12"], (60, -1.75, 0), ["11", "21", "12"]),  # on route: unchanged
        (["11", "12"], (60, -1.75, 0), ["11", "21", "12"]),  # gap filled
        (["21", "12"], (60, -1.75, 0), ["11", "21", "12"]),  # starts before: backward BFS
        (["13"], (150, 5.25, np.pi), ["14", "22", "13"]),  # westbound, backward BFS
        (["16", "21", "12"], (60, -1.75, 0), ["11", "21", "12"]),  # forward BFS to route[1]
        (["12"], (60, 1.75, np.pi), ["11", "21", "12"]),  # wrong way: nearest block, linked
        (["11", "21", "12"], (550, 1.75, 0), ["11", "21", "12"]),  # on lone block 16: no path
    ],
)
def test_route_correction(m, route, pose, expected):
    assert ids(R.correct_route(m, R.route_blocks(m, route), ego(*pose))) == expected


def test_current_block_prefers_on_route_and_heading(m):
    best, cands = R.current_block(m, ego(60, -1.75), {"11"})
    assert best.id == "11" and ids(cands) == ["11"]  # lane 1002's vertices are 3.5 m away
    # at the stop line both roadblock 11 and connector 21 qualify: the on-route one wins
    for on_route in ("11", "21"):
        best, cands = R.current_block(m, ego(99.5, -1.75), {on_route})
        assert best.id == on_route and ids(cands) == [on_route]
    best, cands = R.current_block(m, ego(99.5, -1.75), {"12"})  # neither on the route
    assert best.id == "11" and ids(cands) == ["11", "21"]
    # heading east on the westbound lane: lane 1005 is off by pi, so nothing qualifies and
    # the candidate with the nearest lane vertex is returned
    best, cands = R.current_block(m, ego(60, 5.25, 0.0), {"13"})
    assert best.id == "13" and ids(cands) == ["13"]


def test_loops_are_cut_at_an_overlapping_connector():
    a = Block("a", ROADBLOCK_CONNECTOR, shapely.box(0, 0, 10, 10))
    b = Block("b", ROADBLOCK, shapely.box(10, 0, 20, 10))
    c = Block("c", ROADBLOCK_CONNECTOR, shapely.box(5, 5, 15, 15))  # 25 m^2 over a
    d = Block("d", ROADBLOCK_CONNECTOR, shapely.box(9.5, -1, 30, 1))  # 0.5 m^2 over a
    assert ids(R.remove_loops([a, b, c, b])) == ["a", "b"]
    assert ids(R.remove_loops([a, b, d])) == ["a", "b", "d"]
    assert ids(R.remove_loops([b, b])) == ["b", "b"]  # only connectors count


def test_bfs_depth_limit(m):
    rb11 = m.roadblocks["11"]
    assert ids(R.bfs_blocks(rb11, {"12"}, 3)[0]) == ["11", "21", "12"]
    assert R.bfs_blocks(rb11, {"12"}, 2) == ([], False)  # 12 sits at depth 3
    path, found = R.bfs_blocks(m.roadblocks["12"], {"11"}, 3, forward=False)
    assert found and ids(path) == ["11", "21", "12"]  # driving order


# --- starting lane and centerline ------------------------------------------------------------
def scene(m, x, y, h=0.0, route=("11", "21", "12")):
    from autovla.geometry import box_corners, to_global

    rear = ego(x, y, h)
    centre = to_global(np.array([1.461, 0.0]), rear)
    foot = shapely.Polygon(box_corners(rear, 5.176, 2.297, 1.127))
    blocks = R.correct_route(m, R.route_blocks(m, list(route)), rear)
    edges = R.route_edges(blocks)
    lane = R.starting_lane(edges, R.drivable_map(m, centre), rear, centre, foot)
    return blocks, edges, lane


def test_starting_lane_and_centerline(m):
    blocks, edges, lane = scene(m, 60, -1.75)
    assert [e.id for e in edges] == ["1001", "1002", "2001", "2002", "1003", "1004"]
    assert lane.id == "1001"
    path = R.lane_path(lane, blocks, edges)
    assert [e.id for e in path] == ["1001", "2001", "1003"]
    line = local(R.centerline(path)[:, :2])
    np.testing.assert_allclose(line[[0, -1]], [[0, -1.75], [220, -1.75]], atol=1e-6)
    assert len(line) == 11 + 3 + 11  # baseline vertices concatenated as NAVSIM does
    # in the left lane, yawed towards the right lane: still the lane under the rear axle
    _, _, lane = scene(m, 60, 1.0, -0.3)
    assert lane.id == "1002"
    # in the carpark: no route lane under the rear axle -> the nearest to the footprint
    _, _, lane = scene(m, 70, -9.0)
    assert lane.id == "1001"


def test_centerline_falls_back_to_the_deepest_cheapest_path(m):
    blocks, edges, lane = scene(m, 60, -1.75, route=("11", "21", "12", "16"))
    assert ids(blocks) == ["11", "21", "12", "16"]  # 16 cannot be linked
    assert [e.id for e in R.lane_path(lane, blocks, edges)] == ["1001", "2001", "1003"]


# --- hostile maps: named errors, never a crash, a hang or another file opened ----------------
def _mutated(tmp_path: Path, maps: Path, *sql: tuple) -> Path:
    dst = tmp_path / "maps"
    shutil.copytree(maps, dst)
    path = map_file(dst, F.LOCATION)
    import sqlite3

    con = sqlite3.connect(path)
    for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"):
        con.execute(f'DROP TRIGGER "{name}"')  # GDAL's R-tree triggers need its functions
    for statement, *args in sql:
        con.execute(statement, *args)
    con.commit()
    con.close()
    return path


def _gp(wkb: bytes) -> bytes:
    return b"GP\x00\x01" + struct.pack("<i", 4326) + wkb


_NESTED = _gp(b"".join(b"\x01" + struct.pack("<II", 7, 1) for _ in range(200_000))
              + b"\x01" + struct.pack("<Idd", 1, 0, 0))  # fmt: skip
_FIRST_LANE = "UPDATE lanes_polygons SET geom = ? WHERE fid = 1001"
_MULTI_GC = _gp(b"\x01" + struct.pack("<II", 6, 1) + b"\x01" + struct.pack("<II", 7, 0))


@pytest.mark.parametrize(
    "blob, match",
    [
        (_NESTED, "record 1001 field 'geom': GeometryCollection geometry"),
        (_gp(shapely.to_wkb(shapely.Point(0, 0))), "Point geometry \\(expected Polygon or Multi"),
        (_MULTI_GC, "GeometryCollection inside a MultiPolygon"),
    ],
    ids=["nested-collections", "point", "collection-in-multipolygon"],
)
def test_unexpected_geometry_types_are_map_errors(tmp_path, maps, blob, match):
    path = _mutated(tmp_path, maps, (_FIRST_LANE, (blob,)))
    with pytest.raises(MapError, match=match) as e:
        NuPlanMap(path)
    assert str(path) in str(e.value) and "layer 'lanes_polygons'" in str(e.value)


def test_declared_counts_beyond_the_blob_are_unreadable(tmp_path, maps):
    line = _gp(b"\x01" + struct.pack("<II", 2, 0x7FFFFFFF) + struct.pack("<dd", 0, 0))
    path = _mutated(tmp_path, maps, ("UPDATE baseline_paths SET geom = ? WHERE lane_fid = 1004",
                                     (line,)))  # fmt: skip
    m = NuPlanMap(path)
    assert "1004" not in m.lanes
    assert any("layer 'baseline_paths'" in p and "unreadable WKB" in p for p in m.problems)


def test_bad_values_name_layer_record_and_field(tmp_path, maps):
    path = _mutated(tmp_path, maps, ("UPDATE lanes_polygons SET speed_limit_mps = 'fast'",))
    with pytest.raises(MapError, match="layer 'lanes_polygons' record '1001' field "
                       "'speed_limit_mps': 'fast' is not a number"):  # fmt: skip
        NuPlanMap(path)
    path = _mutated(tmp_path / "srs", maps, ("UPDATE gpkg_spatial_ref_sys SET "
                    "organization_coordsys_id = 'abc' WHERE srs_id = 4326",))  # fmt: skip
    with pytest.raises(MapError, match="organization_coordsys_id"):
        NuPlanMap(path)


def test_views_are_refused_and_reading_is_bounded(tmp_path, maps, monkeypatch):
    from autovla.scoring import nuplan_map

    view = (
        "CREATE VIEW intersections AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL "
        "SELECT x + 1 FROM c) SELECT x AS fid, zeroblob(1000) AS geom FROM c"
    )
    rename = "ALTER TABLE intersections RENAME TO intersections_real"
    path = _mutated(tmp_path, maps, (rename,), (view,))
    with pytest.raises(MapError, match=r"layer 'intersections'.* is a view, not a table"):
        NuPlanMap(path)
    monkeypatch.setattr(nuplan_map, "MAP_READ_SECONDS", -1.0)
    monkeypatch.setattr(nuplan_map, "_PROGRESS_OPS", 1)
    with pytest.raises(MapError, match="reading took over"):
        NuPlanMap(map_file(maps, F.LOCATION))


def test_file_names_cannot_add_sqlite_uri_parameters(tmp_path, maps):
    # unescaped, "?mode=memory" would open an empty in-memory database instead of the file
    dst = tmp_path / "x?mode=memory#"
    shutil.copytree(maps, dst)
    assert sorted(NuPlanMap(map_file(dst, F.LOCATION)).roadblocks) == sorted(
        MapStore(maps).get(F.LOCATION).roadblocks
    )


class _Counted(list):
    """A block's link list that counts how often the search walks it."""

    walks = 0

    def __iter__(self):
        _Counted.walks += 1
        return super().__iter__()


def _ring(k: int, seed: int | None = None) -> list[Block]:
    """6 roadblocks in a ring, k parallel connectors between neighbours (turn options); with a
    seed, extra random links between any two blocks."""
    rbs = [Block(f"rb{i}", ROADBLOCK, None) for i in range(6)]
    blocks = list(rbs)
    for i, b in enumerate(rbs):
        for j in range(k):
            c = Block(f"c{i}_{j}", ROADBLOCK_CONNECTOR, None)
            blocks.append(c)
            b.outgoing.append(c), c.incoming.append(b)
            c.outgoing.append(rbs[(i + 1) % 6]), rbs[(i + 1) % 6].incoming.append(c)
    rng = np.random.default_rng(seed)
    for _ in range(0 if seed is None else 12):
        a, b = rng.choice(len(blocks), 2)
        blocks[a].outgoing.append(blocks[b]), blocks[b].incoming.append(blocks[a])
    return blocks


def _naive_bfs(start, targets, max_depth, forward=True):
    """NAVSIM's search as written: every copy of a node kept in its level."""
    level, parent, depth = [start], {(start.id, 1): None}, 1
    while level and depth <= max_depth:
        nxt = []
        for block in level:
            if block.id in targets:
                path, d = [block], depth
                while (p := parent[(path[-1].id, d)]) is not None:
                    path.append(p)
                    d -= 1
                return (path[::-1] if forward else path), True
            for n in block.outgoing if forward else block.incoming:
                nxt.append(n)
                parent[(n.id, depth + 1)] = block
        level, depth = nxt, depth + 1
    return [], False


def test_bfs_is_linear_in_depth_with_parallel_links():
    blocks = _ring(2)
    for b in blocks:
        b.outgoing = _Counted(b.outgoing)
    _Counted.walks = 0
    assert R.bfs_blocks(blocks[0], {"unreachable"}, R.FORWARD_DEPTH) == ([], False)
    # NAVSIM's list doubles every second level (~2^16 walks); at most 2 per block and depth
    assert _Counted.walks <= 2 * len(blocks) * R.FORWARD_DEPTH
    big = _ring(50)  # the review's case: 50 turn options per junction
    assert R.bfs_blocks(big[0], {"unreachable"}, R.FORWARD_DEPTH) == ([], False)


@pytest.mark.parametrize("seed", range(6))
def test_bfs_answers_as_navsims_search(seed):
    blocks = _ring(2, seed)
    for target in ("rb3", "c4_1", "rb0", "nowhere"):
        for forward in (True, False):
            got = R.bfs_blocks(blocks[1], {target}, 9, forward)
            want = _naive_bfs(blocks[1], {target}, 9, forward)
            assert ids(got[0]) == ids(want[0]) and got[1] == want[1], (target, forward)
