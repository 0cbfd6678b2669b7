"""`autovla codebook fit | import | report` end to end on a small synthetic dataset."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from autovla.cli import app
from autovla.data.manifest import write_manifest
from autovla.geometry import to_local
from autovla.tokenizer import Codebook
from autovla.tokenizer.synthetic import bicycle_trajectories
from tests.conftest import make_sample

runner = CliRunner()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """60 samples whose 4 history + 10 future poses come from bicycle-model drives."""
    root = tmp_path_factory.mktemp("tok") / "ds"
    drives = bicycle_trajectories(60, steps=13, seed=4)
    drives = np.concatenate([np.zeros((60, 1, 3)), drives], 1)  # 14 poses, current = index 3
    samples = []
    for i, d in enumerate(drives):
        local = to_local(d, d[3])
        s = make_sample(i)
        samples.append(
            s.model_copy(
                update={
                    "history": [tuple(p) for p in local[:4]],  # ends at now, (0, 0, 0)
                    "future": [tuple(p) for p in local[4:]],
                }
            )
        )
    write_manifest(root, samples)
    return root


def test_fit_report_and_errors(dataset, tmp_path):
    out = tmp_path / "cb.safetensors"
    r = runner.invoke(
        app, ["codebook", "fit", "--data", str(dataset), "--size", "64", "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    cb = Codebook.load(out)
    assert cb.size == 64 and cb.meta["segments"] == 60 * 13  # 3 history + 10 future segments
    assert cb.meta["sources"] == [str(dataset)]

    r = runner.invoke(
        app,
        [
            "codebook",
            "fit",
            "--data",
            str(dataset),
            "--size",
            "100000",
            "--out",
            str(tmp_path / "x.safetensors"),
        ],
    )
    assert r.exit_code == 1 and "ran out after" in r.output
    assert not (tmp_path / "x.safetensors").exists()

    rep_dir = tmp_path / "rep"
    r = runner.invoke(
        app, ["codebook", "report", str(out), "--data", str(dataset), "--out", str(rep_dir)]
    )
    assert r.exit_code == 0, r.output
    rep = json.loads((rep_dir / "report.json").read_text())
    rec = rep["reconstruction"]
    assert rec["count"] == 60 and len(rec["per_step_ade"]) == 10
    assert sum(s["count"] for s in rec["by_speed"].values()) == 60
    assert rec["fde"] >= 0 and 0 < rep["usage"] <= 1
    assert (rep_dir / "token_ends.png").stat().st_size > 1000
    assert (rep_dir / "reconstructions.png").stat().st_size > 1000


def test_import_refuses_hostile_pickle(tmp_path):
    class Hostile:
        def __reduce__(self):
            return (eval, ("1 + 1",))

    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"token_all": {"veh": Hostile()}}))
    r = runner.invoke(app, ["codebook", "import", str(evil), "--out", str(tmp_path / "o.st")])
    assert r.exit_code == 1 and "refusing to load builtins.eval" in r.output
    assert "Traceback" not in r.output
    ok = tmp_path / "ok.pkl"
    veh = np.zeros((2, 6, 4, 2), np.float32)
    ok.write_bytes(pickle.dumps({"token_all": {"veh": veh}}))
    r = runner.invoke(app, ["codebook", "import", str(ok), "--out", str(tmp_path / "o.st")])
    assert r.exit_code == 0, r.output
    assert Codebook.load(tmp_path / "o.st").size == 2


def test_missing_data_is_a_clean_error(tmp_path):
    r = runner.invoke(
        app, ["codebook", "fit", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "c.st")]
    )
    assert r.exit_code == 1 and "dataset not found" in r.output
