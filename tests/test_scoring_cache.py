"""Metric cache: save/load round trip, byte-stable files, clear errors on bad files."""

from __future__ import annotations

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
