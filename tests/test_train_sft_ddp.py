"""Two processes on the CPU (DDP over gloo) via `accelerate launch`: replicas stay identical."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.train_sft_fixtures import write_config

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # starts two processes (~8 s)


def test_two_process_ddp_keeps_replicas_identical(tmp_path):
    bindir = Path(sys.executable).parent
    launcher, script = bindir / "accelerate", bindir / "autovla"
    if not launcher.exists() or not script.exists():
        pytest.skip("accelerate / autovla scripts not installed in this environment")
    out = tmp_path / "ddp"
    cfg = write_config(
        tmp_path / "ddp.yaml",
        out,
        train={"max_steps": 2, "torch_threads": 1},
        sft={"grad_accum": 2},
    )
    cmd = [
        str(launcher),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        str(script),
        "train",
        "sft",
        "--config",
        str(cfg),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout + proc.stderr
    replicas = json.loads((out / "replicas.json").read_text())
    assert len(replicas["checksums"]) == 2 and replicas["identical"]
    ckpt = out / "checkpoints" / "step-00000002"
    state = json.loads((ckpt / "trainer" / "state.json").read_text())
    assert state["world_size"] == 2 and state["samples_seen"] == 2 * 2 * 2 * 2
