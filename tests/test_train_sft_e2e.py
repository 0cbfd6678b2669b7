"""SFT end to end on the tiny model: training, logs, resume, Ctrl-C, variants, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from autovla.config import load_config
from autovla.train.config import SFTConfig
from tests.train_sft_fixtures import REASONING, workspace, write_config


def _cfg(tmp_path: Path, out: str = "run", overrides: list[str] | None = None, **sections):
    path = write_config(tmp_path / f"{out}.yaml", tmp_path / out, **sections)
    return load_config(SFTConfig, path, overrides or [])


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(ckpt.glob("*.safetensors")):
        if f.name != "codebook.safetensors":
            out.update(load_file(str(f)))
    return out


def test_sft_trains_logs_and_resumes_exactly(tmp_path):
    from autovla.model.checkpoint import AutoVLA
    from autovla.train.sft import train_sft

    ws = workspace()
    soft = {"sft": {"action_sigma": 0.4}}  # soft action targets (the tiny recipe's loss)
    straight = train_sft(_cfg(tmp_path, "a", train={"max_steps": 3}, **soft))
    assert straight.steps == 3 and straight.checkpoint.name == "step-00000003"
    first = train_sft(_cfg(tmp_path, "b", train={"max_steps": 2}, **soft))
    assert first.checkpoint.name == "step-00000002"
    resumed = train_sft(_cfg(tmp_path, "b", train={"max_steps": 3}, **soft))
    assert resumed.steps == 3
    a, b, init = _weights(straight.checkpoint), _weights(resumed.checkpoint), _weights(ws / "model")
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(a[key], init[key])  # trained
    vision = next(k for k in init if "visual" in k)
    assert torch.equal(a[vision], init[vision])  # frozen vision encoder
    # stopping at 2 and resuming gives the same weights as 3 steps straight, to the bit
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # The checkpoint is a self-contained model directory; logs and TensorBoard are written.
    vla = AutoVLA.from_pretrained(resumed.checkpoint)
    assert vla.codebook.size == 48
    records = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3]
    assert all(0 <= r["act_acc"] <= 1 and r["loss"] > 0 for r in train)
    assert list((tmp_path / "b" / "tensorboard").glob("events.out.tfevents.*"))


def test_ctrl_c_finishes_the_step_saves_and_resumes(tmp_path, monkeypatch):
    import os
    import signal

    from autovla.train import sft

    real = sft.SFT.step
    calls = {"n": 0}

    def interrupted(self, batch, step):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of step 2
        return real(self, batch, step)

    monkeypatch.setattr(sft.SFT, "step", interrupted)
    cfg = _cfg(tmp_path, train={"max_steps": 3})
    before = signal.getsignal(signal.SIGINT)
    result = sft.train_sft(cfg)
    # the step in progress is finished and saved, then the run returns
    assert result.interrupted and result.signal == "SIGINT" and result.steps == 2
    assert result.checkpoint.name == "step-00000002"
    state = json.loads((result.checkpoint / "trainer" / "state.json").read_text())
    assert state["stopped_by"] == "interrupt"
    assert signal.getsignal(signal.SIGINT) is before  # the run's handlers are gone
    monkeypatch.setattr(sft.SFT, "step", real)
    done = sft.train_sft(cfg)
    assert not done.interrupted and done.stopped_by == "steps" and done.steps == 3
    assert done.checkpoint.name == "step-00000003"


def test_dual_and_action_only_answers():
    from autovla.model.checkpoint import AutoVLA
    from autovla.train.collate import SFTCollator
    from autovla.train.data import Item

    ws = workspace()
    vla = AutoVLA.from_pretrained(ws / "model")
    from autovla.data.manifest import load_samples

    samples = load_samples(ws / "ds", "train")[:2]  # s0000 has reasoning, s0001 has not
    items = [Item(s, str(ws / "ds"), 0) for s in samples]
    tok = vla.tokenizer
    for variant in ("dual", "action_only"):
        col = SFTCollator(vla.processor, vla.fmt, vla.codebook, variant, lambda_cot=40.0)
        batch = col(items)
        answers = [tok.decode(row[row != -100].tolist()) for row in batch["labels"]]
        prompt = tok.decode(batch["input_ids"][0].tolist())
        if variant == "dual":
            assert batch["is_slow"].tolist() == [True, False]
            assert batch["sample_weight"].tolist() == [40.0, 1.0]
            assert vla.fmt.slow_line.strip() in answers[0] and "Intent: keep the lane" in answers[0]
            assert vla.fmt.fast_line.strip() in answers[1]
            assert vla.fmt.system_dual[:40] in prompt
        else:
            assert batch["is_slow"].tolist() == [False, False]
            assert batch["sample_weight"].tolist() == [1.0, 1.0]
            assert all(REASONING[:20] not in a for a in answers)
            assert vla.fmt.system_action_only[:40] in prompt
        # Ten action tokens per answer, all marked for the action-token term.
        assert batch["action_mask"].sum(1).tolist() == [10, 10]
        # Only the answer is supervised: the prompt tokens are masked.
        assert (batch["labels"] != -100).sum() < batch["attention_mask"].sum() / 3


def test_fast_share_trains_a_fixed_subset_of_reasoning_samples_fast():
    from types import SimpleNamespace

    from autovla.model.checkpoint import AutoVLA
    from autovla.train.collate import SFTCollator, trained_fast
    from autovla.train.data import Item

    # the subset: about the share, fixed per (seed, id), another seed picks another subset
    ids = [f"scene{i:04d}-t{i % 8:02d}" for i in range(4000)]
    picked = [trained_fast(i, 0.3, seed=0) for i in ids]
    assert 0.27 < sum(picked) / len(ids) < 0.33
    assert picked == [trained_fast(i, 0.3, seed=0) for i in ids]
    assert picked != [trained_fast(i, 0.3, seed=1) for i in ids]
    assert not any(trained_fast(i, 0.0, seed=0) for i in ids)
    # the same subset in every process (a per-process hash such as hash() would move it)
    fixed = [f"000{i}-cut_in-t0{i}" for i in range(3, 9)]
    assert [trained_fast(i, 0.5, seed=0) for i in fixed] == [True, True, False, True, False, True]

    ws = workspace()
    vla = AutoVLA.from_pretrained(ws / "model")
    from autovla.data.manifest import load_samples

    sample = load_samples(ws / "ds", "train")[0]  # has reasoning
    fast_seed = next(s for s in range(100) if trained_fast(sample.id, 0.5, s))
    slow_seed = next(s for s in range(100) if not trained_fast(sample.id, 0.5, s))
    tok = vla.tokenizer
    for seed, slow in ((fast_seed, False), (slow_seed, True)):
        col = SFTCollator(vla.processor, vla.fmt, vla.codebook, "dual", 40.0, 0.5, seed)
        batch = col([Item(sample, str(ws / "ds"), 0)])
        answer = tok.decode(batch["labels"][0][batch["labels"][0] != -100].tolist())
        assert batch["is_slow"].tolist() == [slow]
        assert batch["sample_weight"].tolist() == [40.0 if slow else 1.0]
        assert (REASONING[:20] in answer) is slow
        assert (vla.fmt.fast_line.strip() in answer) is not slow
    # action-only ignores the share; a share of 1 would leave no slow answer at all
    col = SFTCollator(vla.processor, vla.fmt, vla.codebook, "action_only", 1.0, 0.5, slow_seed)
    assert not col.is_slow(sample)
    with pytest.raises(ValueError, match="fast_share"):
        SFTCollator(vla.processor, vla.fmt, vla.codebook, "dual", 1.0, 1.0)
    assert not SFTCollator(None, None, None, "dual", 1.0).is_slow(
        SimpleNamespace(id="x", reasoning="  ")
    )


def test_fast_share_config_is_checked_and_reaches_the_collator(tmp_path, monkeypatch):
    from autovla.config import ConfigError
    from autovla.train import sft

    for bad in ("-0.1", "1.0", "nan"):
        with pytest.raises(ConfigError, match="fast_share"):
            _cfg(tmp_path, overrides=[f"sft.fast_share={bad}"])
    with pytest.raises(ConfigError, match="fast_share"):
        _cfg(tmp_path, sft={"variant": "action_only", "fast_share": 0.3})
    seen = []

    class Recording(sft.SFTCollator):
        def __init__(self, *args):
            super().__init__(*args)
            seen.append((self.fast_share, self.seed))

    monkeypatch.setattr(sft, "SFTCollator", Recording)
    sft.train_sft(_cfg(tmp_path, sft={"fast_share": 0.3}, train={"max_steps": 1, "seed": 7}))
    assert seen == [(0.3, 7)]


def test_validation_reports_l2_and_slow_share(tmp_path):
    from autovla.train.sft import train_sft

    ws = workspace()
    cfg = _cfg(
        tmp_path,
        train={"max_steps": 1},
        val={
            "datasets": [{"path": str(ws / "ds"), "split": "val"}],
            "max_samples": 2,
            "batch_size": 2,
        },
    )
    result = train_sft(cfg)
    v = result.val
    assert v["samples"] == 2 and v["l2_avg"] > 0 and v["cv_l2_avg"] >= 0
    assert 0 <= v["slow_share"] <= 1
    assert "slow_share_complex" in v and "slow_share_straightforward" in v
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "val" and "l2_avg" in r for r in records)


# --- bad input through the CLI ---------------------------------------------------------------
def _cli(args: list[str]):
    from autovla.cli import app

    return CliRunner().invoke(app, ["train", "sft", *args])


def test_cli_bad_inputs_give_clear_errors(tmp_path):
    ws = workspace()
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "out")
    r = _cli(["--config", str(cfg), "optim.learning_rate=1"])
    assert r.exit_code == 1 and "optim.learning_rate: unknown key" in r.output
    # Empty dataset (no train split).
    r = _cli(["--config", str(cfg), f"data.datasets=[{{path: {ws / 'ds'}, split: test}}]"])
    assert r.exit_code == 1 and "has no samples" in r.output
    # A codebook that does not match the model.
    r = _cli(["--config", str(cfg), f"model.codebook={ws / 'other-codebook.safetensors'}"])
    assert r.exit_code == 1 and "does not match" in r.output
    # A sample with a missing image: the error names the sample and the field.
    broken = tmp_path / "broken"
    shutil.copytree(ws / "ds", broken)
    (broken / "images" / "0000" / "front_2.png").unlink()
    r = _cli(
        [
            "--config",
            str(cfg),
            f"data.datasets=[{{path: {broken}}}]",
            "data.shuffle_buffer=1",
            "train.max_steps=1",
        ]
    )
    assert r.exit_code == 1 and "s0000" in r.output and "cameras.front" in r.output
    assert "Traceback" not in r.output


def test_cli_trains_with_overrides(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "out")
    r = _cli(["--config", str(cfg), "train.max_steps=1", "sft.variant=action_only"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "out" / "checkpoints" / "step-00000001" / "autovla.json").exists()
    saved = (tmp_path / "out" / "config.yaml").read_text()
    assert "variant: action_only" in saved
    info = json.loads(
        (tmp_path / "out" / "checkpoints" / "step-00000001" / "autovla.json").read_text()
    )
    assert info["system"] == "action_only"
    assert info["training"] == {"stage": "sft", "step": 1, "samples_seen": 2, "max_steps": 1,
                                "stopped_by": "steps"}  # fmt: skip


def test_lora_with_gradient_checkpointing_trains_and_saves_merged(tmp_path):
    from autovla.train.sft import train_sft

    lora = {"enabled": True, "r": 4, "alpha": 8}
    train = {"max_steps": 1, "lora": lora, "freeze_language": True, "gradient_checkpointing": True}
    result = train_sft(_cfg(tmp_path, train=train))
    w = _weights(result.checkpoint)
    init = _weights(workspace() / "model")
    assert set(w) == set(init)  # LoRA is merged: a plain model directory
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(w[key], init[key])
    mlp = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(w[mlp], init[mlp])  # only adapted projections changed
    assert (result.checkpoint / "trainer" / "adapter.safetensors").exists()
