"""RFT on scenes the scorer cannot score (NaN: left out and counted), and the 3B RFT recipe's
code path with the tiny model on converted NAVSIM data with its metric cache."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from autovla.train.rewards import ade
from autovla.train.rft_config import RFTConfig

from . import model_fixtures as mf

sys.path.insert(0, str(Path(__file__).parent))
import _nuplan_fixtures as F


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("rft-sft") / "model"
    mf.tiny_vla().save_pretrained(d)
    return d


def first_sample_unscored(samples, roots, completions) -> np.ndarray:
    """ADE reward, NaN for sample m000 (a scene that could not be scored)."""
    out = ade(samples, roots, completions)
    out[[s.id == "m000" for s in samples]] = np.nan
    return out


def test_unscored_completions_are_left_out_and_counted(sft_dir, tmp_path):
    from autovla.train.rft import RFT

    root, _ = mf.dataset()
    cfg = RFTConfig.model_validate(
        {
            "model": {"path": str(sft_dir)},
            "data": {"datasets": [{"path": str(root), "split": "train"}], "shuffle_buffer": 1},
            "grpo": {"group_size": 2, "max_reasoning_tokens": 4, "prompts_per_step": 3},
            "reward": {
                "functions": [{"name": "tests.test_navsim_rft:first_sample_unscored"}],
                "allow_code": True,
            },
            "train": {"max_steps": 1, "lora": {"enabled": True}},
            "output": {"dir": str(tmp_path / "out"), "tensorboard": False, "progress": False},
        }
    )
    run = RFT(cfg)
    items = next(run.batches(0))
    assert {it.sample.id for it in items} == {"m000", "m001", "m002"}
    s = run.step(items, 0)
    assert s["reward_unscored"] == 2  # both completions of m000, counted
    assert s["reward_total_n"] == s["reward_first_sample_unscored_n"] == 4
    assert np.isfinite([s["loss"], s["kl"], s["reward_total"]]).all()
    # an unscored completion leaves its group's statistics: its group-mate alone has nothing
    # to be compared with (advantage 0), the other groups are untouched
    adv, _, keep = run.advantages(np.array([1.0, np.nan, 2.0, 4.0, 3.0, 3.0]))
    assert keep.tolist() == [True, False, True, True, True, True]
    assert adv[:2].tolist() == [0.0, 0.0] and adv[2] < 0 < adv[3]


@pytest.mark.slow
def test_3b_rft_recipe_runs_on_navsim_with_its_metric_cache(sft_dir, tmp_path):
    """configs/qwen2.5-vl-3b-rft.yaml as written (pdms reward, G = 8, LoRA, bf16, gradient
    checkpointing), with the tiny model, the converted fixture and a CPU-sized run."""
    import json
    import subprocess

    from autovla.data.manifest import load_samples

    data = F.navsim_dataset(tmp_path, [F.make_log(n=16)], split="train")
    assert all(s.scoring for s in load_samples(data))
    recipe = Path(__file__).resolve().parents[1] / "configs" / "qwen2.5-vl-3b-rft.yaml"
    out = tmp_path / "rft"
    overrides = [
        f"model.path={sft_dir}",
        f"data.datasets=[{{path: {data}, weight: 1.0, split: train}}]",
        "train.max_steps=2",
        "grpo.max_reasoning_tokens=4",  # a random tiny model would ramble to the cap
        f"output.dir={out}",
        "output.log_every=1",
    ]
    # its own process: the recipe's bf16 accelerator cannot share one with other tests
    cmd = [sys.executable, "-m", "autovla", "train", "rft", "--config", str(recipe), *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert 0.0 <= row["reward_pdms"] <= 1.0  # real PDMS from the metric cache
        assert row["reward_unscored"] == 0
    assert (out / "checkpoints").is_dir()
