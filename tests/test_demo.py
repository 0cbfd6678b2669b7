"""`autovla demo --quick` end to end: every stage's output, the report, and resuming."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autovla.demo import PRESETS, build_stages
from autovla.demo_report import PLANNERS

ROOT = Path(__file__).resolve().parents[1]
# The whole demo runs once for the module (~2 minutes): `make test-slow`, not `make test`.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    env = {**os.environ, "AUTOVLA_CONFIGS": str(ROOT / "configs")}
    cmd = [sys.executable, "-m", "autovla", "demo", "--quick", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout, cmd, env


def test_every_stage_produced_its_output(quick_demo):
    out = quick_demo[0]
    for stage in build_stages(out, PRESETS["quick"]):
        for path in stage.outputs:
            assert path.exists(), f"stage {stage.name} did not write {path}"
    state = json.loads((out / "stages.json").read_text())
    assert all(s.name in state for s in build_stages(out, PRESETS["quick"]))


def test_headline_and_report_list_all_planners(quick_demo):
    out, stdout, _, _ = quick_demo
    tail = stdout.strip().splitlines()[-8:]
    assert tail[-1].startswith("report: ") and tail[-1].endswith("report.html")
    page = (out / "report.html").read_text()
    for name in PLANNERS:
        assert any(line.startswith(name) for line in tail), name
        assert f">{name}<" in page
    assert "smoke run" in stdout
    # how each training stage ended, from its checkpoint's metadata
    quick = PRESETS["quick"]
    assert f"sft: step {quick.sft_steps} of {quick.sft_steps}, all steps done" in stdout
    assert f"rft: step {quick.rft_steps} of {quick.rft_steps}, all steps done" in page
    # Every run directory has its own report, linked from the demo page.
    for run in (out / "runs").iterdir():
        assert (run / "report.html").is_file()
        assert f"runs/{run.name}/report.html" in page


def test_rerun_reuses_finished_stages(quick_demo):
    out, _, cmd, env = quick_demo
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("skipped") == len(build_stages(out, PRESETS["quick"]))
