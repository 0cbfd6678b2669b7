"""RFT on scenes the scorer cannot score (NaN: left out and counted), and the 3B RFT recipe's
code path with the tiny model on converted NAVSIM data with its metric cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autovla.train.rewards import ade_reward
from autovla.train.rft_config import RFTConfig

from . import model_fixtures as mf


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("rft-sft") / "model"
    mf.tiny_vla().save_pretrained(d)
    return d


def first_sample_unscored(samples, roots, completions) -> np.ndarray:
    """ADE reward, NaN for sample m000 (a scene that could not be scored)."""
    out = ade_reward(samples, roots, completions)
    out[[s.id == "m000" for s in samples]] = np.nan
    return out


def test_unscored_groups_are_left_out_and_counted(sft_dir, tmp_path):
    from autovla.train.rft import _Run

    root, _ = mf.dataset()
    cfg = RFTConfig.model_validate(
        {
            "model": {"path": str(sft_dir)},
            "data": {"datasets": [{"path": str(root), "split": "train"}], "shuffle_buffer": 1},
            "grpo": {"group_size": 2, "max_reasoning_tokens": 4},
            "reward": {"driving_score": "tests.test_navsim_rft:first_sample_unscored"},
            "train": {"max_steps": 1, "prompts_per_step": 3, "lora": {"enabled": True}},
            "output": {"dir": str(tmp_path / "out"), "tensorboard": False, "progress": False},
        }
    )
    run = _Run(cfg)
    items = next(run.batches())
    assert {it.sample.id for it in items} == {"m000", "m001", "m002"}
    s = run.step(items, 0)
    assert s["unscored_groups"] == 1
    assert s["n"] == 4 and s["groups"] == 2  # the two scored groups only
    assert np.isfinite([s["loss"], s["kl"], s["reward_total"], s["reward_driving_score"]]).all()
    adv, _, keep = run.advantages(np.array([1.0, np.nan, 2.0, 4.0, 3.0, 3.0]))
    assert keep.tolist() == [False, False, True, True, True, True]
    assert adv[:2].tolist() == [0.0, 0.0] and adv[2] < 0 < adv[3]
