"""The shared training loop (autovla.train.loop) on the tiny model: how runs stop (steps, time
budget, signals), the guards against diverging runs, the output folder, and every shipped
recipe reaching its first step."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from autovla.config import ConfigError, load_config
from autovla.train import checkpointing as ckpt
from autovla.train.config import SFTConfig
from autovla.train.rft_config import RFTConfig
from tests.train_sft_fixtures import workspace, write_config

REPO = Path(__file__).resolve().parents[1]


def _cfg(tmp_path: Path, overrides: list[str] | None = None, **sections) -> SFTConfig:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = write_config(tmp_path / "run.yaml", tmp_path / "run", **sections)
    return load_config(SFTConfig, path, overrides or [])


def _state(path: Path) -> dict:
    return json.loads((path / "trainer" / "state.json").read_text())


def _records(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


# --- how a run stops ---------------------------------------------------------------------------
def test_sigterm_finishes_the_step_saves_and_exits_143(tmp_path, monkeypatch):
    """What SLURM sends: the step in progress ends, is saved, and the command exits 128 + 15."""
    from autovla.cli import app
    from autovla.train import sft

    real = sft.SFT.step

    def terminated(self, batch, step):
        if step == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives in the middle of step 2
        return real(self, batch, step)

    monkeypatch.setattr(sft.SFT, "step", terminated)
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "out", train={"max_steps": 5})
    before = signal.getsignal(signal.SIGTERM)
    r = CliRunner().invoke(app, ["train", "sft", "--config", str(cfg)])
    assert r.exit_code == 143, r.output
    assert "SIGTERM at step 2" in r.output and "resume with the same command" in r.output
    assert signal.getsignal(signal.SIGTERM) is before
    last = ckpt.latest_checkpoint(tmp_path / "out" / "checkpoints")
    assert last.name == "step-00000002" and _state(last)["stopped_by"] == "interrupt"
    info = json.loads((last / "autovla.json").read_text())
    assert info["training"]["stopped_by"] == "interrupt" and info["training"]["step"] == 2


@pytest.mark.slow
def test_sigterm_to_a_training_process(tmp_path):
    """The real thing: `kill -TERM` on a running `autovla train sft` process."""
    cfg = write_config(
        tmp_path / "c.yaml", tmp_path / "out", train={"max_steps": 10_000, "torch_threads": 1}
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "autovla.cli", "train", "sft", "--config", str(cfg)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    metrics = tmp_path / "out" / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while not (metrics.is_file() and metrics.read_text().strip()):  # the first step is done
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out.decode()[-2000:]
    last = ckpt.latest_checkpoint(tmp_path / "out" / "checkpoints")
    state = _state(last)
    assert state["stopped_by"] == "interrupt" and state["step"] >= 1
    assert [r["step"] for r in _records(tmp_path / "out")] == list(range(1, state["step"] + 1))


def test_time_budget_is_reported_and_never_saves_a_step_twice(tmp_path, monkeypatch, capsys):
    """The budget runs out right after the periodic save of step 2: that checkpoint is kept
    (no delete-and-rewrite window) and records how the run ended."""
    from autovla.train import loop
    from autovla.train.sft import train_sft

    saved = []
    monkeypatch.setattr(loop, "out_of_time", lambda t0, minutes: bool(saved))
    real_save = loop.Run.save

    def counting_save(self, record):
        saved.append(record["step"])
        return real_save(self, record)

    monkeypatch.setattr(loop.Run, "save", counting_save)
    cfg = _cfg(tmp_path, train={"max_steps": 5, "max_minutes": 30}, output={"save_every": 2})
    result = train_sft(cfg)
    assert result.stopped_by == "time" and result.steps == 2 and not result.interrupted
    assert saved == [2]  # saved once
    assert _state(result.checkpoint)["stopped_by"] == "time"
    info = json.loads((result.checkpoint / "autovla.json").read_text())
    assert info["training"] == {"stage": "sft", "step": 2, "samples_seen": 4, "max_steps": 5,
                                "stopped_by": "time"}  # fmt: skip
    assert "stopped by the time budget (train.max_minutes=30.0) at step 2 of 5" in (
        capsys.readouterr().out
    )


def test_metrics_do_not_repeat_steps_after_a_resume(tmp_path):
    from autovla.train.sft import train_sft

    train_sft(_cfg(tmp_path, train={"max_steps": 2}))
    out = tmp_path / "run"
    # a run killed after logging step 3, before saving it, and in the middle of a line
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"kind": "train", "step": 3, "loss": 1.0}) + '\n{"kind": "tr')
    train_sft(_cfg(tmp_path, train={"max_steps": 3}))
    assert [r["step"] for r in _records(out)] == [1, 2, 3]


def test_final_links_the_last_checkpoint_and_a_foreign_final_is_refused(tmp_path):
    """run_dir/final (what the next stage and the docs read) follows every save, relative so
    the run folder can move; a `final` the trainer did not make stops the run before it trains."""
    from autovla.train.sft import train_sft

    train_sft(_cfg(tmp_path, train={"max_steps": 2}, output={"save_every": 1}))
    link = tmp_path / "run" / "final"
    assert link.is_symlink() and os.readlink(link) == os.path.join("checkpoints", "step-00000002")
    assert (link / "autovla.json").is_file()
    train_sft(_cfg(tmp_path, train={"max_steps": 3}))  # resumed: the link moves on
    assert os.readlink(link) == os.path.join("checkpoints", "step-00000003")
    assert not [p for p in link.parent.iterdir() if p.name.startswith(".final")]  # no temp left

    (tmp_path / "b" / "run" / "final").mkdir(parents=True)
    with pytest.raises(ckpt.OutputDirError, match="final is not a link"):
        train_sft(_cfg(tmp_path / "b", train={"max_steps": 1}))
    assert not (tmp_path / "b" / "run" / "checkpoints").exists() or not any(
        (tmp_path / "b" / "run" / "checkpoints").iterdir()
    )


# --- guards ------------------------------------------------------------------------------------
def test_diverging_lr_stops_with_a_named_error_and_keeps_the_good_checkpoint(tmp_path):
    """lr 1e8: step 1 is still finite (saved), step 2 is not: the run stops with the error,
    writes nothing non-finite, and keep_last=1 does not rotate step 1 away."""
    from autovla.train.loop import TrainingDivergedError
    from autovla.train.sft import train_sft

    cfg = _cfg(
        tmp_path,
        optim={"lr": 1e8, "warmup_steps": 0},
        train={"max_steps": 6},
        output={"save_every": 1, "keep_last": 1},
    )
    with pytest.raises(TrainingDivergedError, match=r"non-finite loss or gradient at step 2"):
        train_sft(cfg)
    found = ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [s for s, _ in found] == [1]
    weights = _weights(found[0][1])
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith(".")]


def test_bad_updates_are_skipped_up_to_max_bad_steps(tmp_path, monkeypatch):
    from autovla.train import sft
    from autovla.train.loop import TrainingDivergedError

    real_loss = sft.sft_loss
    calls = {"n": 0}

    def nan_on_second_step(*args, **kwargs):
        out = real_loss(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(sft, "sft_loss", nan_on_second_step)
    with pytest.raises(TrainingDivergedError, match="max_bad_steps=0"):
        sft.train_sft(_cfg(tmp_path / "a", train={"max_steps": 3}))
    calls["n"] = 0
    result = sft.train_sft(_cfg(tmp_path / "b", train={"max_steps": 3, "max_bad_steps": 1}))
    assert result.steps == 3 and result.train["bad_steps"] == 1
    steps = {r["step"]: r for r in _records(tmp_path / "b" / "run")}
    assert steps[2]["loss"] is None and steps[2]["grad_norm"] is None and steps[3]["loss"] > 0
    assert all(torch.isfinite(w).all() for w in _weights(result.checkpoint).values())


def test_non_finite_weights_are_never_saved(tmp_path):
    from autovla.train.loop import TrainingDivergedError
    from autovla.train.sft import SFT

    stage = SFT(_cfg(tmp_path))
    try:
        with torch.no_grad():
            next(p for p in stage.run.raw.parameters() if p.requires_grad)[0] = float("inf")
        record = {"stage": "sft", "step": 1, "samples_seen": 2, "max_steps": 2, "stopped_by": None}
        with pytest.raises(TrainingDivergedError, match="weights are not finite at step 1"):
            stage.run.save(record)
        assert not (tmp_path / "run" / "checkpoints").exists() or not any(
            (tmp_path / "run" / "checkpoints").iterdir()
        )
    finally:
        stage.run.close()


# --- the output folder -------------------------------------------------------------------------
def test_stale_temporary_checkpoints_are_removed_and_busy_folders_refused(tmp_path):
    from autovla.train.sft import train_sft

    root = tmp_path / "run" / "checkpoints"
    for name in (".step-00000007.tmp-4194000", ".step-00000003.old-12", "step-00000001x"):
        (root / name / "trainer").mkdir(parents=True)
    with ckpt.lock_output_dir(tmp_path / "run"):  # another run holds the folder
        with pytest.raises(ckpt.OutputDirError, match="another run is using"):
            train_sft(_cfg(tmp_path, train={"max_steps": 1}))
        assert (root / ".step-00000007.tmp-4194000").is_dir()  # left alone while busy
    result = train_sft(_cfg(tmp_path, train={"max_steps": 1}))
    assert result.checkpoint.name == "step-00000001"
    assert sorted(p.name for p in root.iterdir()) == ["step-00000001", "step-00000001x"]


def test_remove_stale_temps_without_a_lock_keeps_live_processes(tmp_path):
    mine = tmp_path / f".step-00000002.tmp-{os.getpid()}"
    gone = tmp_path / ".step-00000002.tmp-4194000"  # above the usual pid_max
    mine.mkdir()
    gone.mkdir()
    assert ckpt.remove_stale_temps(tmp_path, every=False) == [gone]
    assert mine.is_dir() and not gone.exists()


def test_output_dir_with_checkpoints_and_resume_off_is_refused(tmp_path):
    from autovla.train.sft import train_sft

    train_sft(_cfg(tmp_path, train={"max_steps": 1}))
    with pytest.raises(ckpt.OutputDirError, match="already holds checkpoints"):
        train_sft(_cfg(tmp_path, train={"max_steps": 2}, output={"resume": False}))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_checkpoints_are_fsynced_before_and_after_the_rename(tmp_path, monkeypatch):
    synced: list[str] = []
    real = os.fsync

    def record(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", record)

    def save_model(d: Path) -> None:
        d.mkdir(parents=True, exist_ok=True)
        (d / "model.safetensors").write_bytes(b"weights")

    final = ckpt.save_checkpoint(tmp_path, 4, save_model, None, {"stage": "sft"})
    tmp = f".{final.name}.tmp-{os.getpid()}"
    for f in ("model.safetensors", "trainer/rng.safetensors", "trainer/state.json"):
        assert str(tmp_path / tmp / f) in synced, f
    assert synced[-1] == str(tmp_path)  # the folder, after the rename
    # the same step again replaces it in place, leaving nothing aside
    ckpt.save_checkpoint(tmp_path, 4, save_model, None, {"stage": "sft"}, keep_last=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [final.name]


def test_a_failed_save_leaves_nothing_behind(tmp_path):
    def broken(d: Path) -> None:
        d.mkdir(parents=True)
        (d / "half.bin").write_bytes(b"x")
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space"):
        ckpt.save_checkpoint(tmp_path, 1, broken, None, {})
    assert list(tmp_path.iterdir()) == []


# --- config errors name the field --------------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("optim.betas=[0.9, 1.0]", "optim.betas.1"),
        ("optim.betas=[-0.1, 0.9]", "optim.betas.0"),
        ("train.seed=-1", "train.seed"),
        ("train.seed=4294967296", "train.seed"),
        ("optim.lr=.inf", "optim.lr"),
        ("optim.lr=.nan", "optim.lr"),
        ("optim.eps=.nan", "optim.eps"),
        ("output.dir=''", "output.dir"),
        ("output.dir=' '", "output.dir"),
    ],
)
def test_out_of_range_settings_are_config_errors(override, field):
    base = ["model.path=m", "data.datasets=[{path: d}]"]
    for cls in (SFTConfig, RFTConfig):
        with pytest.raises(ConfigError, match=re.escape(f"{field}:")):
            load_config(cls, None, [*base, override])


def test_rft_defaults_come_from_its_stage_section_not_a_parallel_class():
    base = ["model.path=m", "data.datasets=[{path: d}]"]
    rft = load_config(RFTConfig, None, [*base, "optim.weight_decay=0.1", "train.lora.r=4"])
    assert (rft.optim.lr, rft.optim.warmup_steps, rft.optim.weight_decay) == (3e-5, 0, 0.1)
    assert rft.train.lora.enabled and rft.train.lora.r == 4 and rft.output.dir == "runs/rft"
    sft = load_config(SFTConfig, None, base)
    assert (sft.optim.lr, sft.optim.warmup_steps, sft.train.lora.enabled) == (2e-5, 500, False)
    assert type(rft.optim) is type(sft.optim) and type(rft.train) is type(sft.train)
    with pytest.raises(ConfigError, match="grpo: unknown key"):
        load_config(SFTConfig, None, [*base, "grpo.group_size=4"])
    with pytest.raises(ConfigError, match="generator: unknown key"):
        load_config(RFTConfig, None, [*base, "grpo.generator=planner"])


# --- every shipped recipe reaches its first step -----------------------------------------------
@pytest.fixture(scope="module")
def sim_data(tmp_path_factory) -> Path:
    """A few embedded-world scenes with the scoring data the pdms reward needs."""
    from autovla.sim.export import generate_dataset

    out = tmp_path_factory.mktemp("sim") / "data"
    return generate_dataset(out, 2, seed=0, progress=False, samples_per_scene=3)


RECIPES = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))


def test_every_recipe_is_covered():
    assert RECIPES == [
        "qwen2.5-vl-3b-rft.yaml",
        "qwen2.5-vl-3b-sft.yaml",
        "tiny-rft.yaml",
        "tiny-sft.yaml",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_shipped_recipe_reaches_its_first_step(recipe, sim_data, tmp_path):
    """The recipe as shipped, with the tiny backbone, the test data and one step swapped in
    (and the sampled reasoning capped: a random model would ramble to the format's limit)."""
    from autovla.train.rft import train_rft
    from autovla.train.sft import train_sft

    ws = workspace()
    swap = [
        f"data.datasets=[{{path: {sim_data}}}]",
        "train.max_steps=1",
        "train.device=cpu",
        f"output.dir={tmp_path / 'out'}",
        "output.progress=false",
    ]
    if recipe.endswith("-sft.yaml"):
        cls, train = SFTConfig, train_sft
        swap += ["model.preset=tiny", f"model.codebook={ws / 'codebook.safetensors'}",
                 "sft.epochs=null", "val.datasets=[]"]  # fmt: skip
    else:
        cls, train = RFTConfig, train_rft
        swap += [f"model.path={ws / 'model'}", "grpo.max_reasoning_tokens=4"]
    cfg = load_config(cls, REPO / "configs" / recipe, swap)
    result = train(cfg)
    assert result.steps == 1 and result.stopped_by == "steps"
    assert _state(result.checkpoint)["stage"] == cls.stage
    assert _records(tmp_path / "out")[0]["step"] == 1


def _weights(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v for f in ckpt_dir.glob("model*.safetensors") for k, v in load_file(str(f)).items()}


_FSDP_SCRIPT = """
import sys, torch, torch.distributed as dist
from pathlib import Path
from autovla.train import checkpointing as ckpt

dist.init_process_group("gloo")
rank, out, version = dist.get_rank(), Path(sys.argv[1]), sys.argv[2]

def plain():
    torch.manual_seed(0)  # 5 output rows: uneven shards (3 + 2) over two processes
    return torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Linear(5, 2))

def build():
    m = plain()
    if version == "1":
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        m = FSDP(m, device_id=torch.device("cpu"), use_orig_params=True)
    else:  # FSDP2, what configs/accelerate/fsdp.yaml asks for
        from torch.distributed.fsdp import fully_shard
        for layer in m:
            fully_shard(layer)
        fully_shard(m)
    return m, torch.optim.AdamW(m.parameters(), lr=0.1)

def same(a, b):
    assert set(a["state"]) == {"0.weight", "0.bias", "1.weight", "1.bias"}, a["state"]
    for name, entry in a["state"].items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(entry[key], b["state"][name][key].cpu()), (name, key)
        assert entry["exp_avg"].abs().sum() > 0

model, opt = build()
torch.manual_seed(rank)
model(torch.randn(3, 4)).sum().backward()
opt.step()
state = ckpt.gather_optimizer_state(model, opt, sharded=True)  # a collective
# gathered on the main process (format 2) ...
if rank == 0:
    ckpt.save_checkpoint(out, 1, lambda d: d.mkdir(parents=True, exist_ok=True), state, {})
# ... and every process writing its own slices (format 3, what FSDP2 runs save)
paths = [out / ckpt.checkpoint_name(1)]
if version == "2":
    ckpt.save_sharded_optimizer(model, opt, out / "sharded" / ckpt.TRAINER_DIR, rank == 0)
    paths.append(out / "sharded")
dist.barrier()  # written before anyone reads them
for path in paths:
    model2, opt2 = build()
    assert ckpt.restore_optimizer(path, model2, opt2, sharded=True, is_main=rank == 0)
    again = ckpt.gather_optimizer_state(model2, opt2, sharded=True)
    if rank == 0:
        same(state, again)
dist.destroy_process_group()
if rank == 0 and version == "1":
    print("moments kept")
if rank == 0 and version == "2":  # the slices of two processes read back by one, unsharded
    shards = sorted(p.name for p in (paths[1] / ckpt.TRAINER_DIR / "optimizer").iterdir())
    m3 = plain()
    opt3 = torch.optim.AdamW(m3.parameters(), lr=0.1)
    assert ckpt.restore_optimizer(out / "sharded", m3, opt3, sharded=False, is_main=True)
    same(state, ckpt.gather_optimizer_state(m3, opt3, sharded=False))
    print("moments kept", shards)
"""


@pytest.mark.slow
@pytest.mark.parametrize("version", ["1", "2"], ids=["fsdp1", "fsdp2"])
def test_fsdp_optimiser_state_survives_a_checkpoint(tmp_path, version):
    """Two CPU processes shard a model with FSDP: the AdamW moments, gathered into a checkpoint
    (FSDP1) or written as each process's own slices (FSDP2, torch.distributed.checkpoint), come
    back into the shards of a fresh model (what resuming an FSDP run does), and the slices also
    into one unsharded process (resuming on another number of processes)."""
    script = tmp_path / "fsdp.py"
    script.write_text(_FSDP_SCRIPT)
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun not installed")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", str(port), str(script),
           str(tmp_path / "ck"), version]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "moments kept" in proc.stdout
    if version == "2":
        assert "shard-00001" in proc.stdout and "shard-00002" in proc.stdout  # one file each
