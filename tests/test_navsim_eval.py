"""`autovla eval open-loop` / `eval compare` on converted NAVSIM data with its metric cache:
PDMS of baselines, navtest-style scene filtering, failed scenes counted, never dropped."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autovla.cli import app
from autovla.data.manifest import load_samples

sys.path.insert(0, str(Path(__file__).parent))
import _nuplan_fixtures as F

runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return F.navsim_dataset(tmp_path_factory.mktemp("navsim"))  # 3 scenes, split test


def evaluate(data: Path, out: Path, *extra: str) -> dict:
    r = runner.invoke(app, ["eval", "open-loop", "--data", str(data), "--split", "test",
                            "--out", str(out), "--no-report", *extra])  # fmt: skip
    assert r.exit_code == 0, r.output
    return json.loads((out / "results.json").read_text()) | {"_output": r.output}


def test_baselines_pdms_and_compare(data, tmp_path):
    # the logged ego drives straight on at 10 m/s: constant velocity and the expert plan the
    # hand-worked straight plan of tests/test_navsim_cache.py in every scene -> PDMS 1
    cv = evaluate(data, tmp_path / "cv", "--baseline", "constant-velocity")
    expert = evaluate(data, tmp_path / "expert", "--baseline", "expert")
    for res in (cv, expert):
        o = res["overall"]
        assert o["n"] == o["n_pdms"] == 3 and "n_scoring_errors" not in o
        assert o["pdms"] == pytest.approx(1.0)
    pdm = evaluate(data, tmp_path / "pdm", "--baseline", "pdm-closed")["overall"]
    assert pdm["n_pdms"] == 3 and 0 < pdm["pdms"] <= 1 and pdm["nc"] == 1 and pdm["dac"] == 1
    r = runner.invoke(app, ["eval", "compare", str(tmp_path / "pdm"), str(tmp_path / "cv"),
                            "--out", str(tmp_path / "cmp.json")])  # fmt: skip
    assert r.exit_code == 0, r.output
    cmp = json.loads((tmp_path / "cmp.json").read_text())
    assert cmp["diffs"]["pdms"][0]["n"] == 3
    assert cmp["diffs"]["pdms"][0]["diff"] == pytest.approx(1.0 - pdm["pdms"])


def test_scene_filter_and_failed_scenes_are_counted(data, tmp_path):
    samples = load_samples(data)
    tokens = sorted(s.meta["scene_token"] for s in samples)
    (tmp_path / "navtest.txt").write_text("\n".join([*tokens[:2], "not-converted"]) + "\n")
    res = evaluate(data, tmp_path / "f", "--baseline", "constant-velocity",
                   "--scene-filter", str(tmp_path / "navtest.txt"))  # fmt: skip
    assert res["overall"]["n"] == 2
    assert res["scene_filter"] == {"tokens": 3, "matched": 2, "missing": 1,
                                   "missing_examples": ["not-converted"]}  # fmt: skip
    assert "1 of the 3 scenes of the filter" in " ".join(res["_output"].split())

    # a broken cache and a scene without one: counted as failed, PDMS over the others
    broken = data.parent / "broken"
    import shutil

    shutil.copytree(data, broken)
    by_token = {s.meta["scene_token"]: s for s in load_samples(broken)}
    (broken / by_token[tokens[0]].scoring).write_bytes(b"not an npz")
    from autovla.data.manifest import rewrite_manifest

    rewrite_manifest(broken, lambda s: s.model_copy(update={"scoring": None})
                     if s.meta["scene_token"] == tokens[1] else s)  # fmt: skip
    res = evaluate(broken, tmp_path / "b", "--baseline", "constant-velocity")
    o = res["overall"]
    assert o["n"] == o["n_valid"] == 3 and o["n_scoring_errors"] == 2 and o["n_pdms"] == 1
    assert o["pdms"] == pytest.approx(1.0)
    flat = "".join(res["_output"].split())
    assert "2samplescouldnotbescored" in flat and "1/2" in flat
    rows = {json.loads(x)["id"]: json.loads(x)
            for x in (tmp_path / "b" / "samples.jsonl").read_text().splitlines()}  # fmt: skip
    errors = sorted(r.get("scoring_error", "") for r in rows.values())
    assert errors[0] == "" and "not a readable metric cache" in errors[1] + errors[2]
    assert any("no metric cache" in e for e in errors)
