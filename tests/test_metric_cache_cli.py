"""`autovla data metric-cache navsim` on a converted fixture log: caches, `scoring` in the
manifests, resume, shards, scene filter, and bad input as one-line errors or counted skips."""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from autovla.cli import app
from autovla.data.manifest import load_samples
from autovla.data.scene_filter import read_scene_filter
from autovla.data.sources.navsim import NavsimConverter
from autovla.data.sources.runner import run_conversion
from autovla.scoring import load_cache, score_plans

sys.path.insert(0, str(Path(__file__).parent))
import _nuplan_fixtures as F

runner = CliRunner()
SPLIT = "test"


def make_world(root: Path, logs: list[list[dict]], maps: bool = True) -> Path:
    """Write logs + sensor blobs, convert them (stride 1), write the map; returns the data."""
    for frames in logs:
        F.write_log(root / "navsim_logs", frames, SPLIT)
    if maps:
        F.write_map(root / "maps")
    out = root / "data"
    conv = NavsimConverter(root / "navsim_logs", root / "sensor_blobs", out, split=SPLIT, stride=1)
    run_conversion(conv.units(), conv, out, progress=False)
    return out


def log(root: Path, n: int = 16, **kw) -> list[dict]:
    return F.make_log(n=n, blobs=root / "sensor_blobs" / SPLIT, **kw)


def has(output: str, *parts: str) -> bool:
    """All parts in the output, ignoring the line breaks rich puts anywhere."""
    flat = "".join(output.split())
    return all("".join(p.split()) in flat for p in parts)


def cli(root: Path, *extra: str):
    return runner.invoke(app, ["data", "metric-cache", "navsim", "--logs",
                               str(root / "navsim_logs"), "--maps", str(root / "maps"),
                               "--data", str(root / "data"), "--quiet", *extra])  # fmt: skip


def test_caches_scoring_field_resume_and_scores(tmp_path):
    data = make_world(tmp_path, [log(tmp_path)])
    samples = load_samples(data)
    assert len(samples) == 3 and all(s.scoring is None for s in samples)  # 16 frames, stride 1
    r = cli(tmp_path)
    assert r.exit_code == 0, r.output
    samples = load_samples(data)
    assert all(s.scoring == f"metric_cache/{F.LOG}/{s.meta['scene_token']}.npz" for s in samples)
    summary = json.loads((data / "metric_cache" / "summary-1-of-1.json").read_text())
    assert summary["samples_written"] == 3 and summary["units_converted"] == 1
    # the first scene's cache scores the straight plan as the hand-worked test does
    first = next(s for s in samples if s.meta["scene_token"] == F.make_log()[3]["token"])
    cache = load_cache(data, first)
    t = np.arange(1, 11) * 0.5
    plan = np.stack([10 * t, 0 * t, 0 * t], -1)
    assert score_plans(cache, plan[None]).pdms[0] == pytest.approx(1.0)
    # resume: nothing rebuilt, manifests unchanged
    before = {p.name: p.stat().st_mtime_ns for p in (data / "metric_cache" / F.LOG).iterdir()}
    r = cli(tmp_path)
    assert r.exit_code == 0 and "logs already done" in r.output
    after = {p.name: p.stat().st_mtime_ns for p in (data / "metric_cache" / F.LOG).iterdir()}
    assert before == after
    # a deleted cache is rebuilt alone
    (data / first.scoring).unlink()
    r = cli(tmp_path)
    assert r.exit_code == 0
    summary = json.loads((data / "metric_cache" / "summary-1-of-1.json").read_text())
    assert summary["samples_written"] == 1
    assert summary["samples_skipped"] == {"filtered: already cached": 2}


def test_shards_workers_and_scene_filter(tmp_path):
    other = "2021.06.09.17.23.18_veh-38_00773_09999"
    data = make_world(tmp_path, [log(tmp_path, n=14), log(tmp_path, n=14, log_name=other)])
    tokens = sorted(s.meta["scene_token"] for s in load_samples(data))
    (tmp_path / "filter.txt").write_text(f"# navtest-style\n{tokens[0]}\n\n")
    r = cli(tmp_path, "--scene-filter", str(tmp_path / "filter.txt"))
    assert r.exit_code == 0, r.output
    assert sorted(s.meta["scene_token"] for s in load_samples(data) if s.scoring) == tokens[:1]
    r = cli(tmp_path, "--shard", "2/2", "--workers", "2")
    assert r.exit_code == 0, r.output
    r = cli(tmp_path, "--shard", "1/2")
    assert r.exit_code == 0, r.output
    assert all(s.scoring for s in load_samples(data))
    (tmp_path / "f.yaml").write_text("tokens:\n  - a\n  - b\n")
    assert read_scene_filter(tmp_path / "f.yaml") == {"a", "b"}


def test_bad_input_is_one_line_or_a_counted_skip(tmp_path):
    good = log(tmp_path, n=15)  # 2 scenes
    for f in good[4:6]:
        f["roadblock_ids"] = ["11", "4242"]  # scene 2's current frame (index 4): unknown id
    good[3]["roadblock_ids"] = ["11", "21", "12"]
    data = make_world(tmp_path, [good])
    r = cli(tmp_path)
    assert r.exit_code == 1 and not isinstance(r.exception, ValueError)
    assert has(r.output, F.LOG, good[4]["token"], "'roadblock_ids'", "'4242' is neither")
    # the scene cached before the bad one is kept and referenced
    got = {s.meta["scene_token"]: s.scoring for s in load_samples(data)}
    assert got[good[3]["token"]] is not None and got[good[4]["token"]] is None
    r = cli(tmp_path, "--skip-bad")
    assert r.exit_code == 0, r.output
    assert has(r.output, "skipped: route id N is neither a roadblock nor a roadblock connector")
    got = {s.meta["scene_token"]: s.scoring for s in load_samples(data)}
    assert got[good[3]["token"]] is not None and got[good[4]["token"]] is None


def test_map_location_not_under_maps(tmp_path):
    make_world(tmp_path, [log(tmp_path, n=14, location="sg-one-north")])
    r = cli(tmp_path)
    assert r.exit_code == 1
    assert has(r.output, "'map_location'", "'sg-one-north' not found", F.LOG)


def test_broken_geopackage_and_missing_roadblocks(tmp_path):
    frames = log(tmp_path, n=14)
    data = make_world(tmp_path, [frames])
    gpkg = tmp_path / "maps" / F.LOCATION / F.VERSION / "map.gpkg"
    gpkg.write_bytes(b"")
    r = cli(tmp_path, "--skip-bad")
    assert r.exit_code == 0 and has(r.output, "skipped", "empty file (not a GeoPackage)")
    assert load_samples(data)[0].scoring is None
    F.write_map(tmp_path / "maps")
    # a log rewritten without roadblock ids after conversion
    for f in frames:
        f["roadblock_ids"] = []
    path = tmp_path / "navsim_logs" / SPLIT / f"{F.LOG}.pkl"
    path.write_bytes(pickle.dumps(frames, protocol=pickle.HIGHEST_PROTOCOL))
    r = cli(tmp_path)
    assert r.exit_code == 1
    assert has(r.output, str(path), frames[3]["token"], "'roadblock_ids'")


def test_missing_log_and_no_samples(tmp_path):
    data = make_world(tmp_path, [log(tmp_path, n=14)])
    (tmp_path / "navsim_logs" / SPLIT / f"{F.LOG}.pkl").unlink()
    r = cli(tmp_path)
    assert r.exit_code == 1 and "not found" in r.output
    (tmp_path / "f.txt").write_text("nothing-here\n")
    r = cli(tmp_path, "--scene-filter", str(tmp_path / "f.txt"))
    assert r.exit_code == 1 and has(r.output, "no NAVSIM samples")
    assert data.is_dir()


def test_scene_tokens_must_be_plain_file_names(tmp_path):
    from autovla.data.manifest import rewrite_manifest

    data = make_world(tmp_path, [log(tmp_path, n=14)])  # 1 scene
    rewrite_manifest(
        data, lambda s: s.model_copy(update={"meta": {**s.meta, "scene_token": "a/../x"}})
    )
    r = cli(tmp_path)
    assert r.exit_code == 1
    assert has(r.output, "'meta.scene_token'", "'a/../x' contains a path separator")
    r = cli(tmp_path, "--skip-bad")
    assert r.exit_code == 0, r.output
    assert load_samples(data)[0].scoring is None
    assert not list((data / "metric_cache").rglob("*.npz"))
