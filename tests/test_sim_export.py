"""Dataset export: schema, determinism, resume, splits, camera models, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autovla.data.manifest import load_samples
from autovla.data.schema import STANDARD_CAMERAS
from autovla.sim.export import generate_dataset, split_of
from autovla.sim.scenarios import SCENARIO_TYPES

SIZE = (112, 56)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sim") / "ds"
    return generate_dataset(
        root,
        scenes=len(SCENARIO_TYPES),
        seed=7,
        image_size=SIZE,
        progress=False,
        samples_per_scene=2,
    )


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_samples_follow_the_schema(dataset: Path):
    samples = load_samples(dataset)
    assert len(samples) == 2 * len(SCENARIO_TYPES)
    assert {s.scenario_type for s in samples} == set(SCENARIO_TYPES)
    for s in samples:
        assert set(s.cameras) == set(STANDARD_CAMERAS) and s.num_frames == 4
        assert all((dataset / p).is_file() for frames in s.cameras.values() for p in frames)
        assert s.history_array().shape == (4, 3) and np.allclose(s.history_array()[-1], 0)
        assert s.future_array().shape == (10, 3)
        assert s.meta_action and s.complex == SCENARIO_TYPES[s.scenario_type]
        assert s.scene is not None and s.scene.road in ("straight", "curve", "intersection")
        assert s.scene.lanes >= 1 and s.scene.lighting in ("day", "dusk")
        assert (dataset / s.scoring).is_file()
    # scene facts carry what reasoning needs
    lights = {s.scene.traffic_light for s in samples if s.scenario_type == "red_light"}
    assert lights & {"red", "yellow"}
    behaviours = {o.behaviour for s in samples for o in s.scene.objects}
    assert {"stopped", "moving"} <= behaviours
    kinds = {o.kind for s in samples for o in s.scene.objects}
    assert {"vehicle", "pedestrian", "traffic_cone"} <= kinds


def test_dataset_json_has_camera_models(dataset: Path):
    info = json.loads((dataset / "dataset.json").read_text())
    assert set(info["cameras"]) == set(STANDARD_CAMERAS)
    front = info["cameras"]["front"]
    assert (front["width"], front["height"]) == SIZE
    assert np.asarray(front["intrinsics"]).shape == (3, 3)
    assert np.asarray(front["extrinsics"]["sensor_to_ego"]).shape == (4, 4)


def test_splits_follow_the_scene_seed(dataset: Path):
    by_scene: dict[str, set[str]] = {}
    for s in load_samples(dataset):
        by_scene.setdefault(s.meta["scene"], set()).add(s.split)
        assert s.split == split_of(s.meta["seed"])
    assert all(len(v) == 1 for v in by_scene.values())
    counts = [split_of(seed) for seed in range(2000)]
    assert 0.75 < counts.count("train") / 2000 < 0.85 and counts.count("test") > 100


def test_same_seed_same_bytes_any_workers_and_resume(tmp_path: Path):
    kw = {
        "scenes": 2,
        "seed": 3,
        "types": ["cut_in", "red_light"],
        "image_size": SIZE,
        "progress": False,
        "samples_per_scene": 2,
        "shard_size": 1,
    }
    a = _tree(generate_dataset(tmp_path / "a", workers=1, **kw))
    b = _tree(generate_dataset(tmp_path / "b", workers=2, **kw))
    assert a == b
    # resume: drop a shard manifest and one of its images, run again, same bytes
    (tmp_path / "a" / "manifest-00001.jsonl").unlink()
    generate_dataset(tmp_path / "a", workers=1, **kw)
    assert _tree(tmp_path / "a") == b
    c = _tree(generate_dataset(tmp_path / "c", workers=1, **{**kw, "seed": 4}))
    assert c != a


def test_bad_input_is_rejected(tmp_path: Path):
    with pytest.raises(ValueError, match="valid: free_cruise"):
        generate_dataset(tmp_path / "x", 1, 0, types=["nope"], progress=False)
    with pytest.raises(ValueError, match="at least 28"):
        generate_dataset(tmp_path / "x", 1, 0, image_size=(10, 10), progress=False)
    generate_dataset(
        tmp_path / "y",
        1,
        0,
        types=["free_cruise"],
        image_size=SIZE,
        progress=False,
        samples_per_scene=1,
    )
    with pytest.raises(ValueError, match="other settings"):
        generate_dataset(
            tmp_path / "y",
            1,
            1,
            types=["free_cruise"],
            image_size=SIZE,
            progress=False,
            samples_per_scene=1,
        )


def test_cli_generate_and_errors(tmp_path: Path):
    from typer.testing import CliRunner

    from autovla.cli import app

    runner = CliRunner()
    out = tmp_path / "cli"
    args = ["sim", "generate", "--out", str(out), "--scenes", "1", "--types", "cut_in"]
    args += ["--image-size", "56x28", "--samples-per-scene", "1", "--no-progress"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert len(load_samples(out)) == 1
    r = runner.invoke(app, ["sim", "score", str(out)])
    assert r.exit_code == 0 and "cut_in" in r.output
    r = runner.invoke(app, [*args[:-1], "--types", "nope"])
    assert r.exit_code == 1 and "valid" in r.output
