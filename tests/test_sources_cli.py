"""`autovla data convert ...`: shards, workers, resume, summary, errors without tracebacks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from typer.testing import CliRunner

from autovla.cli import app
from autovla.data.manifest import load_samples
from autovla.data.sources.runner import parse_shard, parse_size
from autovla.data.sources.tfrecord import write_tfrecord

sys.path.insert(0, str(Path(__file__).parent))
from test_sources_waymo import make_frame, segment

runner = CliRunner()


def test_waymo_shards_workers_and_resume(tmp_path: Path) -> None:
    for k in range(3):  # a segment of 5 frames at 2 Hz per file: 2 with a full history
        write_tfrecord(
            tmp_path / f"training.tfrecord-{k:05d}", segment(5, f"seg{k}", step_us=500_000)
        )
    out = tmp_path / "out"
    glob = str(tmp_path / "training.tfrecord-*")
    base = ["data", "convert", "waymo", "--tfrecords", glob, "--out", str(out), "--quiet"]
    r1 = runner.invoke(app, [*base, "--shard", "1/2", "--workers", "2"])
    assert r1.exit_code == 0, r1.output
    assert json.loads((out / "summary-1-of-2.json").read_text())["samples_written"] == 4
    r2 = runner.invoke(app, [*base, "--shard", "2/2", "--size", "8x4"])
    assert r2.exit_code == 0, r2.output
    assert len(load_samples(out)) == 6
    r3 = runner.invoke(app, [*base, "--shard", "2/2"])
    assert r3.exit_code == 0
    assert json.loads((out / "summary-2-of-2.json").read_text())["units_already_done"] == 1


def test_bad_input_is_a_message(tmp_path: Path) -> None:
    path = tmp_path / "training.tfrecord"
    write_tfrecord(path, [make_frame(0)])
    path.write_bytes(path.read_bytes()[:-10])
    base = ["data", "convert", "waymo", "--tfrecords", str(path), "--quiet"]
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "a")])
    assert r.exit_code == 1 and r.exception is not None
    assert not isinstance(r.exception, ValueError)  # a typer.Exit, not a traceback
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "b"), "--skip-bad"])
    assert r.exit_code == 0 and "skipped: truncated record at byte N" in r.output
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "c"), "--shard", "3/2"])
    assert r.exit_code == 1


def test_parsers() -> None:
    assert parse_shard("2/5") == (2, 5) and parse_shard(None) == (1, 1)
    assert parse_size("640x360") == (640, 360)
    for bad in ("0/2", "3/2", "x"):
        try:
            parse_shard(bad)
        except ValueError:
            continue
        raise AssertionError(bad)


def test_navsim_and_nuscenes_commands(tmp_path: Path) -> None:
    from test_sources_navsim import make_frames, write_log
    from test_sources_nuscenes import build_tree

    r = runner.invoke(app, ["data", "convert", "navsim", "--help"])
    assert r.exit_code == 0 and "trusted source" in " ".join(r.output.split())
    write_log(tmp_path, make_frames(tmp_path))
    out = tmp_path / "navsim-out"
    logs = str(tmp_path / "navsim_logs" / "trainval")  # a split folder, not the root
    r = runner.invoke(app, ["data", "convert", "navsim", "--logs", logs,
                            "--sensor-blobs", str(tmp_path / "sensor_blobs"), "--out", str(out),
                            "--quiet", "--copy-images"])  # fmt: skip
    assert r.exit_code == 0, r.output
    (s,) = load_samples(out)
    assert s.cameras["front"][0].startswith("images/navsim/trainval/")
    build_tree(tmp_path / "nusc")
    out = tmp_path / "nusc-out"
    r = runner.invoke(app, ["data", "convert", "nuscenes", "--dataroot", str(tmp_path / "nusc"),
                            "--out", str(out), "--quiet", "--workers", "2"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert len(load_samples(out)) == 3
    r = runner.invoke(app, ["data", "validate", str(out)])
    assert r.exit_code == 0, r.output


def test_scene_lists_select_what_is_converted(tmp_path: Path) -> None:
    """NAVSIM --scene-filter (stride 1 by default with it, as NAVSIM's filters list scenes
    starting at any frame) and nuScenes --scenes with the split name they get."""
    from test_sources_navsim import make_frames, write_log
    from test_sources_nuscenes import build_tree

    write_log(tmp_path, make_frames(tmp_path))  # 16 frames: scenes tok03, tok04, tok05
    (tmp_path / "navtest.yaml").write_text("tokens:\n  - tok05\n  - tok99\n")
    out = tmp_path / "navsim-out"
    r = runner.invoke(app, ["data", "convert", "navsim", "--logs", str(tmp_path / "navsim_logs"),
                            "--sensor-blobs", str(tmp_path / "sensor_blobs"), "--out", str(out),
                            "--quiet", "--any-frame", "--scene-filter",
                            str(tmp_path / "navtest.yaml")])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert [s.id for s in load_samples(out)] == ["navsim-tok05"]
    summary = json.loads(next(out.glob("summary-*.json")).read_text())
    assert summary["samples_skipped"] == {"filtered: not in the scene filter": 2}

    build_tree(tmp_path / "nusc")  # one scene, scene-0061
    names = tmp_path / "val.txt"
    names.write_text("# the official val list, cut down\nscene-0061\n")
    base = ["data", "convert", "nuscenes", "--dataroot", str(tmp_path / "nusc"), "--quiet"]
    out = tmp_path / "nusc-out"
    r = runner.invoke(app, [*base, "--out", str(out), "--scenes", str(names), "--split", "val"])
    assert r.exit_code == 0, r.output
    assert {s.split for s in load_samples(out)} == {"val"} and len(load_samples(out)) == 3
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "o2"), "--scenes", str(names)])
    assert r.exit_code == 1 and "--scenes needs --split" in r.output
    names.write_text("scene-0061\nscene-9999\n")
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "o3"), "--scenes", str(names),
                            "--split", "val"])  # fmt: skip
    assert r.exit_code == 1 and "scene-9999" in r.output and "Traceback" not in r.output
