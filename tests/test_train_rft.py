"""RFT (GRPO) loop on the tiny model: a few steps move the policy, never the reference."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from autovla.config import ConfigError, load_config
from autovla.train.rewards import REWARDS, Completion
from autovla.train.rft_config import RewardFunctionConfig, RFTConfig

from . import model_fixtures as mf
from .conftest import free_port

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("rft-sft") / "model"
    mf.tiny_vla().save_pretrained(d)
    return d


def make_cfg(sft_dir: Path, out: Path, lora: bool = True, forward_prompts: int | None = 1,
             **train) -> RFTConfig:  # fmt: skip
    root, _ = mf.dataset()
    return RFTConfig.model_validate(
        {
            "model": {"path": str(sft_dir)},
            "data": {"datasets": [{"path": str(root), "split": "train"}], "shuffle_buffer": 4},
            # Short reasoning cap: a random model would ramble to the format's 256 tokens.
            "grpo": {"group_size": 3, "temperature": 1.0, "max_reasoning_tokens": 4,
                     "prompts_per_step": 2, "forward_prompts": forward_prompts},
            "reward": {"functions": [{"name": "ade"}]},
            "optim": {"lr": 5e-3},
            "train": {"max_steps": 2, "lora": {"enabled": lora}, **train},
            "output": {"dir": str(out), "log_every": 1, "tensorboard": False, "progress": False},
        }
    )  # fmt: skip


def snapshot(model: torch.nn.Module, lora: bool | None = None) -> dict[str, torch.Tensor]:
    """Parameters (LoRA ones only / all but LoRA / all) as detached copies."""
    out = {}
    for name, p in model.named_parameters():
        is_lora = "lora_" in name
        if lora is None or lora == is_lora:
            out[name] = p.detach().clone()
    return out


def changed(before: dict[str, torch.Tensor], model: torch.nn.Module) -> list[str]:
    now = dict(model.named_parameters())
    return [n for n, t in before.items() if not torch.equal(t, now[n].detach())]


def test_lora_steps_move_adapters_and_keep_reference(sft_dir, tmp_path):
    from autovla.train.rft import RFT

    run = RFT(make_cfg(sft_dir, tmp_path / "out"))
    adapters, base = snapshot(run.raw, lora=True), snapshot(run.raw, lora=False)
    assert adapters and base
    batches = run.batches(0)
    stats = [run.step(next(batches), s) for s in range(2)]
    assert changed(adapters, run.raw), "GRPO steps did not change the LoRA weights"
    assert not changed(base, run.raw), "the reference (the base weights) moved"
    for s in stats:
        assert s["n"] == 6 and s["groups"] == 2 and s["tokens"] > 0
        assert np.isfinite([s["loss"], s["kl"], s["entropy"]]).all()
    # The step-0 policy is the reference (LoRA B starts at zero), so its KL is exactly 0.
    assert stats[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert stats[1]["kl"] > 0


def test_constrained_logprobs_renormalise_over_allowed_ids(sft_dir):
    from autovla.model.checkpoint import AutoVLA
    from autovla.model.inputs import encode_batch
    from autovla.model.planner import Planner
    from autovla.train.rft_policy import (
        ACTIONS,
        CHOOSE,
        PolicyLogprobs,
        padded,
        phase_table,
        sampled_phases,
    )  # fmt: skip

    root, samples = mf.dataset()
    vla = AutoVLA.from_pretrained(sft_dir)
    planner = Planner(vla, max_reasoning_tokens=3)
    plans = planner.plan(samples[:1], root, num_samples=2, temperature=1.0, seed=0)
    table = phase_table(planner)
    phases = padded([sampled_phases(p.sampled_mask) for p in plans], torch.long, "cpu")
    mask = padded([p.sampled_mask for p in plans], torch.float32, "cpu").bool()
    batch = encode_batch(vla.processor, [samples[0].without_answer()], root, vla.fmt,
                         system=planner.system, padding_side="left")  # fmt: skip
    fwd = PolicyLogprobs(vla.model)
    ids = [p.completion_ids for p in plans]
    with torch.no_grad():
        free, _ = fwd(batch, ids, 0)
        cons, ent = fwd(batch, ids, 0, phases, table)
    # Renormalising over fewer ids can only raise a sampled token's probability.
    assert (cons[mask] >= free[mask] - 1e-5).all() and (cons[mask] > free[mask] + 1e-4).any()
    assert torch.equal(cons[~mask], free[~mask])  # forced text: the whole vocabulary
    assert torch.isfinite(ent).all()
    # The mode choice is between two tokens: its entropy is at most log 2.
    assert float(ent[phases == CHOOSE].max()) <= np.log(2) + 1e-5
    assert int((phases == ACTIONS).sum()) == 2 * 10


def test_sampled_phases():
    from autovla.train.rft_policy import ACTIONS, CHOOSE, FREE, REASON, sampled_phases

    mask = [False, True, False, True, True, False] + [True] * 10 + [False, False]
    ph = sampled_phases(mask)
    assert ph[:6] == [FREE, CHOOSE, FREE, REASON, REASON, FREE]
    assert ph[6:16] == [ACTIONS] * 10 and ph[16:] == [FREE, FREE]
    with pytest.raises(ValueError, match="expected the mode choice"):
        sampled_phases([True] * 5)


def test_full_finetune_keeps_reference_copy_fixed_and_clips(sft_dir, tmp_path):
    from autovla.train.rft import RFT

    cfg = make_cfg(sft_dir, tmp_path / "out", lora=False, forward_prompts=None)
    cfg.grpo.num_epochs, cfg.grpo.clip_eps = 2, 1e-3
    cfg.grpo.constrained_logprobs = False
    cfg.optim.lr = 1e-4  # a whole model at the LoRA lr (5e-3) diverges in its second update
    run = RFT(cfg)
    assert run.ref is not None and run.ref is not run.raw
    policy, ref = snapshot(run.raw), snapshot(run.ref)
    s = run.step(next(run.batches(0)), 0)
    assert changed(policy, run.raw)
    assert not changed(ref, run.ref)
    assert not any(p.requires_grad for p in run.ref.parameters())
    # Epoch 1 has ratio 1 everywhere; epoch 2 starts past the tiny clip range.
    assert 0 < s["clip_fraction"] / s["tokens"] < 1


def test_train_rft_checkpoint_loads_and_resumes(sft_dir, tmp_path):
    from autovla.model.checkpoint import AutoVLA
    from autovla.train.checkpointing import load_adapter, load_trainer_state
    from autovla.train.rft import train_rft

    out = tmp_path / "out"
    res = train_rft(make_cfg(sft_dir, out, max_steps=1, forward_prompts=None))
    assert res.steps == 1 and res.checkpoint is not None
    assert load_adapter(res.checkpoint), "the LoRA adapter is kept for resuming"
    merged = AutoVLA.from_pretrained(res.checkpoint)
    assert merged.info["training"]["stage"] == "rft" and merged.info["system"] == "dual"
    sft = AutoVLA.from_pretrained(sft_dir)
    q = "model.language_model.layers.0.self_attn.q_proj.weight"
    w_sft, w_rft = dict(sft.model.named_parameters())[q], dict(merged.model.named_parameters())[q]
    assert not torch.equal(w_sft, w_rft), "adapters were not merged into the saved weights"
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    for key in ("reward", "reward_ade", "reward_unscored", "kl", "entropy",
                "clip_fraction", "slow_share_straightforward", "reasoning_chars"):  # fmt: skip
        assert key in rows[-1]

    res2 = train_rft(make_cfg(sft_dir, out, max_steps=2, forward_prompts=None))
    assert res2.steps == 2 and len(res2.history) == 1  # one new step, not two
    assert load_trainer_state(res2.checkpoint)["step"] == 2
    # a spent wall-clock budget stops before sampling and keeps the last checkpoint, which
    # now says how the run ended
    res3 = train_rft(make_cfg(sft_dir, out, max_steps=5, max_minutes=1e-9, forward_prompts=None))
    assert res3.steps == 2 and not res3.history and res3.stopped_by == "time"
    state = load_trainer_state(res3.checkpoint)
    assert state["step"] == 2 and state["stopped_by"] == "time"
    assert AutoVLA.from_pretrained(res3.checkpoint).info["training"]["stopped_by"] == "time"


def test_config_errors_and_defaults(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("model: {path: m}\ndata: {datasets: [{path: d}]}\ngrpo: {group_size: 1}\n")
    with pytest.raises(ConfigError, match="group_size"):
        load_config(RFTConfig, y)
    y.write_text("model: {path: m}\ndata: {datasets: [{path: d}]}\n")
    cfg = load_config(RFTConfig, y, ["optim.weight_decay=0.1"])
    assert cfg.optim.lr == 3e-5 and cfg.optim.warmup_steps == 0 and cfg.train.lora.enabled
    assert (cfg.train.lora.r, cfg.train.lora.alpha, cfg.grpo.beta) == (8, 8, 0.04)
    for name in ("tiny-rft.yaml", "qwen2.5-vl-3b-rft.yaml"):
        c = load_config(RFTConfig, REPO / "configs" / name)
        assert c.reward.functions[0].name == "pdms"


def test_closed_loop_reward_replays_embedded_world_samples():
    from autovla.geometry import to_local
    from autovla.sim.rollout import simulate
    from autovla.sim.scenarios import make_scenario

    log = simulate(make_scenario("stopped_queue", 0), 7.0)
    expert = to_local(log.ego[25:71:5, :3], log.ego[20, :3])
    s = mf.sample(0, None).model_copy(
        update={"scenario_type": "stopped_queue", "meta": {"seed": 0, "t": 2.0}}
    )
    comps = [Completion(expert, "", "fast"), Completion(np.zeros((10, 3)), "", "fast")]
    r = REWARDS["closed_loop"]([s, s], [Path("."), Path(".")], comps)
    assert r[0] >= 0.97 and r[1] < 0.45  # standing still: the LQR tracker brakes smoothly


def test_sharded_launch_is_refused_before_loading(sft_dir, tmp_path, monkeypatch):
    import autovla.train.loop as loop
    import autovla.train.rft as rft

    monkeypatch.setattr(loop, "is_sharded", lambda acc: True)  # as under an FSDP config
    with pytest.raises(ValueError, match="runs on DDP"):
        rft.RFT(make_cfg(sft_dir, tmp_path / "out"))


def test_unscorable_samples_do_not_stop_training(sft_dir, tmp_path):
    """PDMS on samples without scoring data: every completion is unscored, counted, and gets
    advantage 0; the step runs (only the KL term moves nothing at step 0)."""
    from autovla.train.rft import RFT

    cfg = make_cfg(sft_dir, tmp_path / "out")
    cfg.reward.functions = [RewardFunctionConfig(name="pdms")]
    run = RFT(cfg)
    s = run.step(next(run.batches(0)), 0)
    assert s["reward_unscored"] == s["n"] == 6 and s["reward_pdms_n"] == 0
    assert s["loss"] == pytest.approx(0.0, abs=1e-7)  # zero advantages, zero KL at step 0


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("accelerate") is None
    and not (Path(sys.executable).parent / "accelerate").exists(),
    reason="accelerate CLI not installed",
)
@pytest.mark.parametrize("span", [False, True], ids=["own-groups", "spanning-groups"])
def test_two_processes_stay_in_sync(sft_dir, tmp_path, span):
    """DDP on CPU (gloo): both ranks end with identical weights. Own groups: each rank trains
    its own prompts. Spanning groups: both ranks sample halves of the same groups and
    normalise over the gathered whole."""
    script = tmp_path / "run2.py"
    cfg = make_cfg(sft_dir, tmp_path / "out", max_steps=1)
    if span:
        cfg.grpo.group_size, cfg.grpo.groups_span_processes = 4, True
    (tmp_path / "cfg.json").write_text(cfg.model_dump_json())
    script.write_text(
        textwrap.dedent(f"""
        import json
        import numpy as np
        from autovla.train.rft import RFT
        from autovla.train.rft_config import RFTConfig
        cfg = RFTConfig.model_validate_json(open({str(tmp_path / "cfg.json")!r}).read())
        run = RFT(cfg)
        rank = run.acc.process_index
        batches = run.batches(0)
        s = run.step(next(batches), 0)
        lora = [p for n, p in run.raw.named_parameters() if "lora_" in n]
        total = sum(float(p.double().sum()) for p in lora)
        ids = [it.sample.id for it in next(run.batches(0))]
        # made-up rewards: prompt j, completion k of rank r -> 10 j + 2 k + r
        G = run.local_group
        totals = np.array([10.0 * j + 2 * k + rank for j in range(2) for k in range(G)])
        adv, std, _keep = run.advantages(totals)
        run.cfg.grpo.advantage_scaling = "batch"  # one std over both processes' rewards
        adv_batch, _, _ = run.advantages(totals)
        out = {{"sum": total, "n": s["n"], "world": run.acc.num_processes, "ids": ids,
               "adv": adv.cpu().tolist(), "std": std, "adv_batch": adv_batch.cpu().tolist()}}
        path = {str(tmp_path)!r} + "/rank" + str(rank) + ".json"
        open(path, "w").write(json.dumps(out))
        """)
    )
    exe = Path(sys.executable).parent / "accelerate"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    # --multi_gpu with Accelerator(cpu=True) in the run: two CPU processes over gloo.
    cmd = [str(exe) if exe.exists() else "accelerate", "launch", "--multi_gpu",
           "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--main_process_port", str(free_port()),
           "--dynamo_backend", "no", str(script)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert r0["sum"] == pytest.approx(r1["sum"], rel=1e-9, abs=1e-12)
    if not span:
        assert r0["n"] == r1["n"] == 6
        assert r0["ids"] != r1["ids"], "both ranks trained on the same prompts"
        # batch scaling: the std of all 12 rewards 10 j + 2 k + rank of both ranks
        sd = float(np.std([10 * j + 2 * k + r for j in range(2) for k in range(3) for r in (0, 1)],
                          ddof=1))  # fmt: skip
        assert r0["adv_batch"] == pytest.approx([x / (sd + 1e-4) for x in (-2, 0, 2) * 2], rel=1e-4)
        assert r1["adv_batch"] == pytest.approx(r0["adv_batch"], rel=1e-6)
        return
    assert r0["n"] == r1["n"] == 4  # 2 prompts x 2 of the 4 completions
    assert r0["ids"] == r1["ids"], "spanning groups need the same prompts on every rank"
    # group of prompt 0: rank 0 holds 0, 2; rank 1 holds 1, 3 -> mean 1.5, std of 0..3
    sd = float(np.std([0, 1, 2, 3], ddof=1))
    expect0 = [(x - 1.5) / (sd + 1e-4) for x in (0, 2)]
    expect1 = [(x - 1.5) / (sd + 1e-4) for x in (1, 3)]
    assert r0["adv"][:2] == pytest.approx(expect0, rel=1e-4)
    assert r1["adv"][:2] == pytest.approx(expect1, rel=1e-4)
    assert r0["std"] == pytest.approx(2 * sd)  # two groups of the same spread


def test_stats_by_complexity_add_up_over_steps():
    from types import SimpleNamespace as NS

    from autovla.train.rft_metrics import step_stats, summarise

    samples = [NS(complex=True), NS(complex=None)]

    def plan(mode: str, text: int, reasoning: int) -> NS:
        return NS(mode=mode, text="x" * text, reasoning="r" * reasoning if reasoning else None)

    plans = [plan("slow", 10, 4), plan("fast", 2, 0), plan("slow", 6, 2), plan("slow", 6, 1)]
    terms = {"total": np.array([1.0, 3.0, 2.0, 2.0]), "pdms": np.full(4, 0.5),
             "reasoning_length": np.array([0.1, 0.0, 0.2, 0.3])}  # fmt: skip
    extra = {"loss": 0.5, "kl": 2.0, "clip_fraction": 0.0, "entropy": 4.0, "tokens": 8.0,
             "grad_norm": 1.0, "lr": 1e-4, "gen_s": 1.0, "step_s": 2.0}  # fmt: skip
    s = step_stats(samples, plans, terms, 2, extra)
    m = summarise([s, s])  # two identical steps: the means do not change
    assert m["slow_share_complex"] == 0.5 and m["slow_share_straightforward"] == 1.0
    assert m["chars_complex"] == 6.0 and m["chars_straightforward"] == 6.0
    assert m["reasoning_chars"] == pytest.approx(7 / 4)
    assert m["reward"] == 2.0 and m["reward_reasoning_length"] == pytest.approx(0.15)
    assert m["reward_pdms"] == 0.5 and m["reward_unscored"] == 0.0
    assert m["kl"] == 0.25 and m["entropy"] == 0.5 and m["loss"] == 0.5
    assert m["reward_group_std"] == pytest.approx(np.sqrt(2) / 2)  # groups: std sqrt(2), 0


def test_cli_reports_missing_dataset(sft_dir, tmp_path):
    from typer.testing import CliRunner

    from autovla.cli import app

    y = tmp_path / "c.yaml"
    y.write_text(f"model: {{path: {sft_dir}}}\ndata: {{datasets: [{{path: {tmp_path}/nope}}]}}\n")
    res = CliRunner().invoke(app, ["train", "rft", "--config", str(y), f"output.dir={tmp_path}/o"])
    assert res.exit_code != 0 and "dataset not found" in res.output


def _tensors(ckpt: Path) -> dict[str, torch.Tensor]:
    """Model weights, LoRA adapter and AdamW moments of a checkpoint."""
    from safetensors.torch import load_file

    out = {}
    for f in [*ckpt.glob("model*.safetensors"), *(ckpt / "trainer").glob("*.safetensors")]:
        if f.name != "rng.safetensors":
            out.update({f"{f.name}:{k}": v for k, v in load_file(str(f)).items()})
    return out


@pytest.mark.slow
@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_resume_gives_the_weights_of_an_uninterrupted_run(sft_dir, tmp_path, lora):
    """1 step, then resume for the 2nd = 2 steps straight, to the bit: sampling seeds, LoRA
    dropout (the restored RNG), the data position and the AdamW moments all carry over."""
    from autovla.train.rft import train_rft

    cfgs = [make_cfg(sft_dir, tmp_path / name, max_steps=n, lora=lora, forward_prompts=None)
            for name, n in (("straight", 2), ("split", 1), ("split", 2))]  # fmt: skip
    for c in cfgs:
        c.optim.lr = 5e-3 if lora else 1e-4  # a whole model diverges at the LoRA lr
        c.train.lora.dropout = 0.5 if lora else 0.1  # dropout draws from the restored RNG
    straight = train_rft(cfgs[0])
    first = train_rft(cfgs[1])
    assert first.checkpoint.name == "step-00000001"
    resumed = train_rft(cfgs[2])
    assert resumed.steps == straight.steps == 2
    a, b = _tensors(straight.checkpoint), _tensors(resumed.checkpoint)
    assert a.keys() == b.keys() and any("exp_avg" in k for k in a)
    assert any("adapter" in k for k in a) == lora
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, differ[:5]
    moved = _tensors(first.checkpoint)
    assert any(not torch.equal(moved[k], a[k]) for k in a if "exp_avg" in k)  # step 2 counted
