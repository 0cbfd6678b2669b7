"""benchmarks/reproduce.py: the experiments' stages, data subsets, best-of-N, and a smoke run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autovla.data.manifest import iter_samples, write_manifest
from autovla.eval.best_of_n import best_of_n
from tests.conftest import make_sample

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import reproduce as R  # noqa: E402


def test_best_of_n_hand_computed():
    def row(pdms, ade, valid=True):
        return {"valid": valid, "candidate_pdms": pdms, "candidate_ade": ade}

    rows = [
        row([0.2, 0.9, 0.5, 0.1], [3.0, 1.0, 2.0, 0.5]),
        row([0.6, None, 0.7, 0.8], [1.0, 4.0, 2.0, 3.0]),
        row([1.0] * 4, [0.0] * 4, valid=False),  # not counted
        {"valid": True},  # a plan without candidates (planned but not sampled)
    ]
    out = best_of_n(rows, (1, 2, 4))
    assert out[1] == {"pdms": pytest.approx(0.4), "n_pdms": 2, "ade": 2.0, "n_ade": 2}
    assert out[2]["pdms"] == pytest.approx((0.9 + 0.6) / 2)  # an unscored candidate is skipped
    assert out[2]["ade"] == pytest.approx((1.0 + 1.0) / 2)
    assert out[4]["pdms"] == pytest.approx((0.9 + 0.8) / 2)
    assert out[4]["ade"] == pytest.approx((0.5 + 1.0) / 2)
    with pytest.raises(ValueError, match="no scene has 6 scored candidates"):
        best_of_n(rows, (6,))


def test_every_experiment_shares_the_data_and_the_sft_model(tmp_path):
    from autovla.config import load_config
    from autovla.train.config import SFTConfig
    from autovla.train.rft_config import RFTConfig

    plan = R.build_plan(tmp_path, R.QUICK, "test", list(R.EXPERIMENTS))
    assert list(plan.experiments) == list(R.EXPERIMENTS)
    for exp, names in plan.experiments.items():
        assert names[:6] == ["data", "codebook", "reasoning", "init-tokens", "sft", "eval-sft"]
        assert len(names) == len(set(names)), exp
    # one stage per name; best-of-n reuses the rft experiment's seed-0 model and evaluation
    assert {"rft-s0", "eval-rft-s0"} <= set(plan.experiments["best-of-n"])
    assert all(st.meta["estimate"] > 0 for st in plan.stages.values())
    # every evaluation is on the chosen split; training by step counts, never by time
    for st in plan.stages.values():
        if st.args[:2] == ["eval", "open-loop"]:
            assert st.args[st.args.index("--split") + 1] == "test"
    data = tmp_path / "data"
    write_manifest(data, [make_sample(i, split="train") for i in range(4)])
    for name, cls, steps in (("sft", SFTConfig, R.QUICK.sft_steps),
                             ("rft-s1", RFTConfig, R.QUICK.rft_steps)):  # fmt: skip
        plan.stages[name].prepare()
        cfg = load_config(cls, tmp_path / "configs" / f"{name}.yaml")
        assert cfg.train.max_steps == steps and cfg.train.max_minutes is None
    rft = load_config(RFTConfig, tmp_path / "configs" / "rft-s1.yaml")
    assert rft.train.seed == 1 and rft.model.path == str(tmp_path / "models" / "sft")
    wp = plan.stages["init-waypoints"].args
    assert wp[wp.index("--prompt-format") + 1] == "autovla-waypoints-v1"
    lines, total = R.expected(plan, {})
    assert len(lines) == len(R.EXPERIMENTS) and total > 0


def test_scaling_subsets_are_nested_whole_training_scenes(tmp_path):
    samples = []
    for i in range(24):  # 12 training scenes of 2 samples, plus val samples
        s = make_sample(i, split="train" if i < 20 else "val")
        samples.append(s.model_copy(update={"meta": {"scene": f"scene-{i // 2}"}}))
    plan = R.Plan(tmp_path, R.QUICK, "test")
    write_manifest(plan.data, samples)
    kept = {}
    for frac in (0.25, 0.5):
        R.write_subset(plan, frac)()
        subset = list(iter_samples(R.scaling_subset(plan, frac)))
        scenes = {s.meta["scene"] for s in subset}
        assert len(scenes) == round(frac * 10) and all(s.split == "train" for s in subset)
        assert len(subset) == 2 * len(scenes)  # whole scenes
        kept[frac] = scenes
    assert kept[0.25] < kept[0.5]
    # the subset files sit beside the data (image paths resolve) without joining it
    assert len(list(iter_samples(plan.data))) == 24


@pytest.mark.slow
def test_quick_run_of_one_experiment_and_resume(tmp_path):
    """`--quick --only rft` end to end (~2 minutes on 2 loaded cores), then a rerun that skips
    every stage."""
    out = tmp_path / "rq"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "reproduce.py"), "--quick", "--only", "rft",
           "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "expected wall time on the 2-core machine" in proc.stdout
    state = json.loads((out / "stages.json").read_text())
    names = R.build_plan(out, R.QUICK, "test", ["rft"]).experiments["rft"]
    assert all(n in state for n in names)
    md = (out / "results-test.md").read_text()
    assert "python benchmarks/reproduce.py --quick --only rft" in md and "commit:" in md
    table = md[md.index("## RFT over SFT") : md.index("## Action tokens")]
    for label in ("constant velocity", "SFT", "RFT seed 0", "RFT seed 1", "RFT seed 2"):
        assert f"| {label} | " in table
    assert table.count(" .. ") == 3  # a paired interval per seed
    assert "Not run in this invocation" in md  # the other experiments
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("skipped") == len(names)
