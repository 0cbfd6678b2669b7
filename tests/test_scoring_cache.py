"""Metric cache: save/load round trip, byte-stable files, clear errors on bad files."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import shapely

from autovla.scoring.cache import (
    LANE,
    ROADBLOCK,
    MetricCache,
    MetricCacheError,
    load_cache,
)


def small_cache(**kw) -> MetricCache:
    boxes = np.full((51, 2, 5), np.nan)
    boxes[:, 0] = [20.0, 0.0, 0.0, 4.5, 1.9]
    boxes[:10, 1] = [8.0, 3.5, np.pi, 0.5, 0.5]
    vel = np.where(np.isnan(boxes[..., :2]), np.nan, 0.0)
    args = dict(
        token="tok-1",
        ego=[0, 0, 0, 5.0, 0, 0.1, 0],
        centerline=np.stack([np.arange(-10, 100.0), np.zeros(110), np.zeros(110)], -1),
        route_lane_ids=["7"],
        map_ids=["7", "rb1"],
        map_types=[LANE, ROADBLOCK],
        map_polygons=[shapely.box(-10, -1.75, 100, 1.75), shapely.box(-10, -1.75, 100, 5.25)],
        track_ids=["car", "ped"],
        track_types=[0, 1],
        boxes=boxes,
        velocity=vel,
        pdm_closed=np.stack([np.arange(51) * 0.5, np.zeros(51), np.zeros(51)], -1),
        pdm_progress=20.0,
        speed_limit=13.9,
        red_light_ids=["99"],
    )
    args.update(kw)
    return MetricCache(**args)


def _same(a: MetricCache, b: MetricCache) -> None:
    for name in ("token", "route_lane_ids", "map_ids", "track_ids", "red_light_ids"):
        assert getattr(a, name) == getattr(b, name)
    for name in ("ego", "centerline", "map_types", "track_types", "boxes", "velocity"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    np.testing.assert_array_equal(a.pdm_closed, b.pdm_closed)
    assert a.pdm_progress == b.pdm_progress and a.speed_limit == b.speed_limit
    assert all(p.equals_exact(q, 0) for p, q in zip(a.map_polygons, b.map_polygons, strict=True))


def test_round_trip_and_stable_bytes(tmp_path: Path):
    c = small_cache()
    c.save(tmp_path / "a.npz")
    c.save(tmp_path / "b.npz")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    _same(c, MetricCache.load(tmp_path / "a.npz"))
    assert c.on_route.tolist() == [True, False]


def test_round_trip_empty_map_and_tracks(tmp_path: Path):
    c = small_cache(
        map_ids=[],
        map_types=[],
        map_polygons=[],
        track_ids=[],
        track_types=[],
        boxes=np.zeros((51, 0, 5)),
        velocity=np.zeros((51, 0, 2)),
        speed_limit=None,
        red_light_ids=[],
        route_lane_ids=[],
    )
    c.save(tmp_path / "e.npz")
    d = MetricCache.load(tmp_path / "e.npz")
    _same(c, d)
    assert d.boxes.shape == (51, 0, 5) and d.speed_limit is None


def test_load_from_sample_and_errors(tmp_path: Path):
    small_cache().save(tmp_path / "metric_cache" / "log" / "tok-1.npz")
    s = SimpleNamespace(id="tok-1", scoring="metric_cache/log/tok-1.npz")
    assert load_cache(tmp_path, s).token == "tok-1"
    with pytest.raises(FileNotFoundError, match="tok-1"):
        load_cache(tmp_path / "nowhere", s)
    with pytest.raises(MetricCacheError, match=r"tok-2.*'scoring'"):
        load_cache(tmp_path, SimpleNamespace(id="tok-2", scoring=None))
    with pytest.raises(ValueError, match="leaves"):
        load_cache(tmp_path, SimpleNamespace(id="tok-1", scoring="../x.npz"))
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(MetricCacheError, match=r"broken\.npz"):
        MetricCache.load(tmp_path / "broken.npz")


def test_bad_fields_are_named(tmp_path: Path):
    with pytest.raises(MetricCacheError, match="'pdm_closed'"):
        small_cache(pdm_closed=np.zeros((41, 3)))
    with pytest.raises(MetricCacheError, match="'map_types'"):
        small_cache(map_types=[LANE])
    with pytest.raises(MetricCacheError, match="'track_types'"):
        small_cache(track_types=[0, 9])
    c = small_cache()
    c.version = 0
    arrays = c.arrays()
    np.savez(tmp_path / "old.npz", **arrays)
    with pytest.raises(MetricCacheError, match=r"'version'.*rebuild"):
        MetricCache.load(tmp_path / "old.npz")
    del arrays["boxes"]
    arrays["version"] = np.array(1)
    np.savez(tmp_path / "lacking.npz", **arrays)
    with pytest.raises(MetricCacheError, match="boxes"):
        MetricCache.load(tmp_path / "lacking.npz")


# --- hostile files: a named error (file and field), never a crash or a huge allocation -------
def _variant(tmp_path: Path, name: str, **fields) -> Path:
    arrays = small_cache().arrays()
    arrays.update(fields)
    path = tmp_path / f"bad-{name}.npz"
    np.savez(path, **arrays)
    return path


_NESTED = b"".join(b"\x01" + struct.pack("<II", 7, 1) for _ in range(200_000))
_NESTED += b"\x01" + struct.pack("<Idd", 1, 0, 0)  # a Point at the bottom: GEOS recursed


@pytest.mark.parametrize(
    "name, fields, match",
    [
        ("version_str", {"version": np.array("abc")}, r"'version': expected integers \(a scalar\)"),
        ("speed_str", {"speed_limit": np.array("fast")}, "'speed_limit': expected numbers"),
        ("offsets_2d", {"map_wkb_offsets": np.zeros((2, 2), np.int64)}, "'map_wkb_offsets'"),
        ("offsets_float", {"map_wkb_offsets": np.array([0.0, 0.5])}, "'map_wkb_offsets'"),
        ("offsets_past_end", {"map_wkb_offsets": np.array([0, 5, 10**12])}, "'map_wkb_offsets'"),
        ("offsets_backwards", {"map_wkb_offsets": np.array([0, 200, 186])}, "not decrease"),
        ("route_scalar", {"route_lane_ids": np.array(5)}, r"'route_lane_ids': expected text"),
        ("route_scalar_str", {"route_lane_ids": np.array("lane42")}, "'route_lane_ids'"),
        ("map_types_str", {"map_types": np.array(["a", "b"])}, "'map_types'"),
        ("map_types_wrap", {"map_types": np.array([2, 258])}, "'map_types': values must be"),
        ("boxes_str", {"boxes": np.array(["x"])}, "'boxes'"),
        ("boxes_shape", {"boxes": np.zeros((51, 5, 2))}, "'boxes': expected shape"),
        ("centerline_4", {"centerline": np.zeros((6, 4))}, "'centerline': expected shape"),
        ("wkb_u8", {"map_wkb": np.zeros(186, np.uint64)}, "'map_wkb'"),
        (
            "wkb_point",
            {
                "map_wkb": np.frombuffer(shapely.to_wkb(shapely.Point(0, 0)) * 2, np.uint8),
                "map_wkb_offsets": np.array([0, 21, 42]),
            },
            "polygon 0 .*Point",
        ),
        (
            "wkb_nested",
            {
                "map_wkb": np.frombuffer(_NESTED * 2, np.uint8),
                "map_wkb_offsets": np.array([0, 1, 2]) * len(_NESTED),
            },
            "'map_wkb': polygon 0 \\(map id '7'\\): GeometryCollection",
        ),
    ],
)
def test_malformed_fields_are_named(tmp_path: Path, name, fields, match):
    path = _variant(tmp_path, name, **fields)
    with pytest.raises(MetricCacheError, match=match) as e:
        MetricCache.load(path)
    assert str(path) in str(e.value)


def test_zip_sizes_are_checked_before_inflating(tmp_path: Path, monkeypatch):
    from autovla.scoring import cache as C

    good = tmp_path / "good.npz"
    small_cache().save(good)
    bomb = tmp_path / "bomb.npz"  # the cache plus a member that inflates to 64 MiB of zeros
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
        zout.writestr("junk.npy", bytes(64 * 2**20))
    monkeypatch.setattr(C, "MAX_CACHE_BYTES", 32 * 2**20)
    with pytest.raises(MetricCacheError, match=r"bomb\.npz: \d+ bytes uncompressed, over"):
        MetricCache.load(bomb)
    # a header that understates a member's size: never inflated past it, a named error
    lying = tmp_path / "lying.npz"
    data = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as z:
        info = z.getinfo("boxes.npy")
    for at in (info.header_offset + 22, data.rindex(b"boxes.npy") - 46 + 24):  # local, central
        data[at : at + 4] = (100).to_bytes(4, "little")
    lying.write_bytes(bytes(data))
    with pytest.raises(MetricCacheError, match=r"lying\.npz"):
        MetricCache.load(lying)


def test_npy_headers_must_match_their_bytes(tmp_path: Path):
    import io

    arrays = small_cache().arrays()
    np.savez(tmp_path / "ok.npz", **arrays)
    path = tmp_path / "huge.npz"  # ego's header claims 2^40 floats over 56 bytes
    with zipfile.ZipFile(tmp_path / "ok.npz") as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            raw = zin.read(info.filename)
            if info.filename == "ego.npy":
                hdr = io.BytesIO()
                np.lib.format.write_array_header_1_0(
                    hdr, {"descr": "<f8", "fortran_order": False, "shape": (2**40,)}
                )
                raw = hdr.getvalue() + arrays["ego"].tobytes()
            zout.writestr(info.filename, raw)
    with pytest.raises(MetricCacheError, match=r"field 'ego': header says \(1099511627776,\)"):
        MetricCache.load(path)
    obj = tmp_path / "obj.npz"
    np.savez(obj, **{**arrays, "token": np.array(["a", 1], dtype=object)})
    with pytest.raises(MetricCacheError, match="field 'token': refusing dtype object"):
        MetricCache.load(obj)
