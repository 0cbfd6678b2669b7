"""`autovla model init/info` and `autovla plan` end to end on the tiny preset."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from autovla.cli import app
from tests.model_fixtures import (
    dataset,
    one_torch_thread,  # noqa: F401 (autouse fixture)
    tiny_codebook,
)

runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    cb = d / "codebook.safetensors"
    tiny_codebook().save(cb)
    out = d / "model"
    res = runner.invoke(app, ["model", "init", "--preset", "tiny", "--codebook", str(cb),
                              "--out", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "64 from id" in res.output
    return out


def test_info(model_dir):
    res = runner.invoke(app, ["model", "info", str(model_dir)])
    assert res.exit_code == 0, res.output
    assert "autovla-v1" in res.output and "random:tiny" in res.output


def test_plan_prints_and_saves(model_dir, tmp_path):
    root, samples = dataset()
    out = tmp_path / "out"
    args = ["--id", samples[1].id, "--mode", "fast", "--out", str(out)]
    res = runner.invoke(app, ["plan", "--model", str(model_dir), "--data", str(root), *args])
    assert res.exit_code == 0, res.output
    assert "mode fast" in res.output and "error (m)" in res.output
    saved = json.loads((out / f"plan_{samples[1].id}.json").read_text())
    assert saved["mode"] == "fast" and len(saved["trajectory"]) == 10
    assert (out / f"plan_{samples[1].id}.png").read_bytes()[:4] == b"\x89PNG"


def test_plan_decoding_paths_agree(model_dir, tmp_path):
    root, samples = dataset()
    saved = {}
    for decoding in ("reference", "fast"):
        out = tmp_path / decoding
        args = ["--id", samples[2].id, "--mode", "slow", "--decoding", decoding, "--out", str(out)]
        res = runner.invoke(app, ["plan", "--model", str(model_dir), "--data", str(root), *args])
        assert res.exit_code == 0, res.output
        saved[decoding] = json.loads((out / f"plan_{samples[2].id}.json").read_text())
    for key in ("text", "action_ids", "trajectory", "reasoning"):
        assert saved["fast"][key] == saved["reference"][key]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--id", "nope"], "no sample with id 'nope'"),
        (["--mode", "medium"], "--mode must be"),
        (["--decoding", "static"], "--decoding must be"),
        (["--index", "0", "--id", "m000"], "not both"),
    ],
)
def test_plan_bad_input(model_dir, args, message):
    root, _ = dataset()
    res = runner.invoke(app, ["plan", "--model", str(model_dir), "--data", str(root), *args])
    assert res.exit_code == 1
    assert message in res.output


def test_init_refuses_bad_codebook(tmp_path):
    bad = tmp_path / "cb.safetensors"
    bad.write_bytes(b"not a codebook")
    res = runner.invoke(
        app, ["model", "init", "--codebook", str(bad), "--out", str(tmp_path / "m")]
    )
    assert res.exit_code == 1 and "cb.safetensors" in res.output


def test_plan_projection_uses_dataset_cameras(tmp_path):
    """With camera models in dataset.json the plan is projected onto the front image."""
    import numpy as np

    from autovla.io import write_json
    from autovla.model.visualize import front_calibration
    from autovla.sim.render import ground_pixels, make_cameras
    from tests.model_fixtures import sample

    root = tmp_path / "ds"
    s = sample(0, root)
    assert front_calibration(s, root) is None
    (front,) = make_cameras(("front",), (224, 112))
    write_json(root / "dataset.json", {"cameras": {"front": front.to_dict()}})
    calib = front_calibration(s, root)
    uv = ground_pixels(np.array([[10.0, 0.0, 0.0], [-5.0, 0.0, 0.0]]), calib)
    assert abs(uv[0, 0] - 112) < 1.0 and 56 < uv[0, 1] < 112  # ahead: centre column, below horizon
    assert np.isnan(uv[1]).all()  # behind the camera


def test_plan_out_stays_in_its_folder(model_dir, tmp_path, monkeypatch):
    """Ids are plain names by the schema; the writer does not rely on it: an id that is a
    path (a sample built without validation) still writes only inside --out."""
    import autovla.cli.plan as plan_cli

    root, samples = dataset()
    hostile = samples[0].model_copy(update={"id": "a/../../x[red]"})  # no validation
    monkeypatch.setattr(plan_cli, "_pick", lambda *a, **k: hostile)
    out = tmp_path / "deep" / "out"
    res = runner.invoke(app, ["plan", "--model", str(model_dir), "--data", str(root),
                              "--mode", "fast", "--out", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "a/../../x[red]" in res.output  # printed as written, not read as markup
    written = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert len(written) == 2 and all(p.parent == out for p in written)
    assert {p.suffix for p in written} == {".png", ".json"}
