"""The accelerate launch configs of configs/accelerate/, started on the CPU (two processes,
gloo) as far as the libraries allow; docs/distributed.md says what starts where.

* cpu-2proc.yaml and ddp.yaml (with --num_processes 2, train.device=cpu): DDP over gloo.
* fsdp.yaml and deepspeed.yaml: accelerate selects FSDP and DeepSpeed on GPUs only, so
  `autovla` refuses them on the CPU (it would silently be DDP); `tests/_forced_launch.py` gives
  accelerate's state the launch config's plugin, so the training loop's own FSDP2 and
  DeepSpeed code runs over gloo: sharded steps, checkpoints, resuming, LoRA, RFT's refusal.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from autovla.train import checkpointing as ckpt
from tests.train_sft_fixtures import workspace, write_config

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FORCED = REPO / "tests" / "_forced_launch.py"
LORA = {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.3}  # dropout: per-process RNG


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config: str, args: list[str], forced: bool = False) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file configs/accelerate/<config> --num_processes 2 ...`."""
    if not (BIN / "accelerate").exists() or not (BIN / "autovla").exists():
        pytest.skip("accelerate / autovla scripts not installed in this environment")
    program = [str(FORCED)] if forced else [str(BIN / "autovla")]
    cmd = [str(BIN / "accelerate"), "launch", "--config_file",
           str(REPO / "configs" / "accelerate" / config), "--num_processes", "2",
           "--main_process_port", str(_port()), *program, *args]  # fmt: skip
    pythonpath = os.pathsep.join(filter(None, [str(REPO / "src"), str(REPO),
                                               os.environ.get("PYTHONPATH")]))  # fmt: skip
    env = {**os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def sft(tmp_path: Path, out: str, steps: int, **train) -> list[str]:
    cfg = write_config(tmp_path / f"{out}-{steps}.yaml", tmp_path / out,
                       train={"max_steps": steps, "torch_threads": 1, **train},
                       sft={"grad_accum": 2})  # fmt: skip
    return ["train", "sft", "--config", str(cfg)]


def ok(proc: subprocess.CompletedProcess) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def _files(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _equal(a: Path, b: Path) -> bool:
    x, y = _files(a), _files(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _last(out: Path) -> Path:
    last = ckpt.latest_checkpoint(out / "checkpoints")
    assert last is not None
    return last


# --- DDP -----------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("config", ["cpu-2proc.yaml", "ddp.yaml"])
def test_ddp_configs_train_two_processes_on_the_cpu(config, tmp_path):
    """The shipped files as they are (ddp.yaml's 8 processes overridden to 2): DDP over gloo,
    identical replicas, a checkpoint of the global batch."""
    out = ok(launch(config, sft(tmp_path, "run", 1)))
    assert "2 process(es) on cpu" in out
    replicas = json.loads((tmp_path / "run" / "replicas.json").read_text())
    assert len(replicas["checksums"]) == 2 and replicas["identical"]
    state = json.loads((_last(tmp_path / "run") / "trainer" / "state.json").read_text())
    assert state["world_size"] == 2 and state["samples_seen"] == 2 * 2 * 2  # batch x accum x 2


# --- FSDP ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_fsdp_lora_run_saves_slices_and_resumes_to_the_bit(tmp_path):
    """fsdp.yaml's FSDP2 path, LoRA with dropout: 2 steps, then resumed to 3 = 3 straight, to
    the bit (merged weights, adapter, optimiser slices); every process wrote its own slice
    of the AdamW moments and its own RNG state."""
    ok(launch("fsdp.yaml", sft(tmp_path, "b", 2, lora=LORA), forced=True))
    step2 = _last(tmp_path / "b")
    resumed = ok(launch("fsdp.yaml", sft(tmp_path, "b", 3, lora=LORA), forced=True))
    assert f"resumed from {step2}" in resumed
    ok(launch("fsdp.yaml", sft(tmp_path, "a", 3, lora=LORA), forced=True))
    a, b = _last(tmp_path / "a"), _last(tmp_path / "b")
    assert a.name == b.name == "step-00000003"
    trainer = b / ckpt.TRAINER_DIR
    shards = sorted(p.name for p in (trainer / "optimizer").iterdir())
    assert len(shards) == 2 and not (trainer / "optimizer.safetensors").exists()
    assert json.loads((trainer / "optimizer.json").read_text())["format"] == 3
    assert set(_files(trainer / "rng.safetensors")) == {"torch_cpu", "torch_cpu.rank1"}
    for f in ["model.safetensors", "trainer/adapter.safetensors"]:
        assert _equal(a / f, b / f), f
    for name in shards:
        assert _equal(a / "trainer" / "optimizer" / name, trainer / "optimizer" / name), name
    merged, base = _files(b / "model.safetensors"), _files(workspace() / "model/model.safetensors")
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[key], base[key])  # the adapters are merged into the weights
    vision = next(k for k in base if k.startswith("visual."))
    assert torch.equal(merged[vision], base[vision])


@pytest.mark.slow
def test_fsdp_checkpoint_resumes_in_one_process(tmp_path):
    """A full fine-tuning FSDP checkpoint (2 processes) resumes on one: the process reads
    both processes' slices of the moments back into whole tensors."""
    from autovla.config import load_config
    from autovla.train.config import SFTConfig
    from autovla.train.loop import Run

    args = sft(tmp_path, "run", 1)
    ok(launch("fsdp.yaml", args, forced=True))
    cfg = load_config(SFTConfig, Path(args[-1]), ["train.max_steps=2"])
    run = Run(cfg)
    try:
        assert run.start_step == 1
        state = run.optimizer.optimizer.state
        names = {id(p): n for n, p in run.raw.named_parameters()}
        moments = {names[id(p)]: s["exp_avg"] for p, s in state.items()}
        assert len(moments) == sum(p.requires_grad for p in run.raw.parameters())
        assert all(m.abs().sum() > 0 for m in moments.values())
        key = "model.language_model.layers.0.self_attn.q_proj.weight"
        assert moments[key].shape == run.raw.get_parameter(key).shape
    finally:
        run.close()


@pytest.mark.slow
def test_rft_refuses_fsdp_and_fsdp_on_the_cpu_is_refused(tmp_path):
    """RFT samples with whole weights: an FSDP launch is refused by design, with the reason.
    And without the forcing helper, accelerate would quietly run fsdp.yaml as DDP on the CPU:
    autovla says so and stops."""
    ws = workspace()
    cfg = tmp_path / "rft.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": {"path": str(ws / "model")},
        "data": {"datasets": [{"path": str(ws / "ds")}]},
        "output": {"dir": str(tmp_path / "rft"), "progress": False},
    }))  # fmt: skip
    proc = launch("fsdp.yaml", ["train", "rft", "--config", str(cfg)], forced=True)
    assert proc.returncode == 1
    assert "error: train rft runs on DDP: FSDP / DeepSpeed shard the weights that sampling " in (
        proc.stdout + proc.stderr
    )
    proc = launch("fsdp.yaml", sft(tmp_path, "plain", 1))
    assert proc.returncode == 1
    assert "error: launched with an accelerate FSDP config, but accelerate runs FSDP on GPUs" in (
        proc.stdout + proc.stderr
    )
    assert not (tmp_path / "plain" / "checkpoints").exists()


# --- DeepSpeed -----------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="needs deepspeed")
def test_deepspeed_zero2_accumulates_like_ddp(tmp_path):
    """deepspeed.yaml's ZeRO-2 path: with 2 micro-batches per step DeepSpeed steps once per
    step (as DDP does: the same weights up to float rounding), and says its checkpoints keep
    no optimiser state."""
    out = ok(launch("deepspeed.yaml", sft(tmp_path, "ds", 2), forced=True))
    assert "DeepSpeed: checkpoints hold the weights but not the AdamW moments" in out
    ok(launch("cpu-2proc.yaml", sft(tmp_path, "ddp", 2)))
    ds, ddp = (_files(_last(tmp_path / d) / "model.safetensors") for d in ("ds", "ddp"))
    base = _files(workspace() / "model/model.safetensors")
    key = "model.layers.0.self_attn.q_proj.weight"
    assert (ddp[key] - base[key]).abs().max() > 1e-4  # trained
    assert all(torch.allclose(ds[k], ddp[k], rtol=0, atol=1e-6) for k in ddp)
