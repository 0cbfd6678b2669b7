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
    assert R.NO_RUNS in md  # the other experiments
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("skipped") == len(names)


def test_a_rewritten_page_keeps_the_tables_it_cannot_regenerate(tmp_path):
    """Another output folder (a new machine, a fresh --out) must not turn an earlier page's
    measured tables into "not run": they are carried with the command and commit they came
    from, once, and only while this folder has no runs of that experiment's own."""
    page = tmp_path / "results.md"
    page.write_text(
        "# Reproducing\n\n* command: `python benchmarks/reproduce.py --only rft`\n"
        "* commit: abc1234\n* wall time of this invocation: 3 h\n\n"
        "## RFT over SFT (`--only rft`)\n\n| model | PDMS |\n|---|---|\n| SFT | 75.4 |\n\n"
        "## Notes added by hand\n\n* not a table\n\n"
        "## Action tokens vs text waypoints (`--only waypoints`)\n\n"
        "Not run in this invocation (tables below come from earlier runs in the same output "
        "folder, if any).\n\n| text waypoints | not run |\n"
    )
    plan = R.build_plan(tmp_path / "out", R.QUICK, "test", ["reasoning"])
    for _ in range(2):  # a second rewrite carries the carried section as it is
        R.write_results(plan, page, "python benchmarks/reproduce.py --only reasoning", {}, "1 s")
        md = page.read_text()
        rft = md[md.index("## RFT over SFT") : md.index("## Action tokens")]
        assert "| SFT | 75.4 |" in rft and rft.count(R.CARRIED) == 1
        assert "  * commit: abc1234" in rft and "wall time" not in rft
        assert "Notes added by hand" not in md and "not a table" not in md
        waypoints = md[md.index("## Action tokens") : md.index("## Reasoning")]
        assert R.CARRIED not in waypoints and R.NO_RUNS in waypoints
        assert "* command: `python benchmarks/reproduce.py --only reasoning`" in md

    def finish(name: str) -> None:  # an evaluation of this folder, as its stage leaves it
        run = plan.run(name) / "results.json"
        run.parent.mkdir(parents=True, exist_ok=True)
        run.write_text("{}")

    # evaluations other experiments share are not this experiment's runs
    finish("eval-sft")
    finish("time-sft")  # waypoints and best-of-n both time the SFT model
    finish("eval-rft-s0")  # rft's seed 0, which best-of-n borrows
    assert not any(R._has_results(plan, e) for e in ("rft", "waypoints", "best-of-n"))
    finish("eval-rft-s1")
    assert R._has_results(plan, "rft")  # this folder's own runs win over the carried table
    finish("eval-sft-n6")
    assert R._has_results(plan, "best-of-n") and not R._has_results(plan, "waypoints")


def test_threads_reach_every_training_config(tmp_path):
    from dataclasses import replace

    from autovla.config import load_config
    from autovla.train.config import SFTConfig
    from autovla.train.rft_config import RFTConfig

    write_manifest(tmp_path / "data", [make_sample(i, split="train") for i in range(4)])
    for threads, want_sft, want_rft in ((None, 2, 1), (1, 1, 1)):  # None: the recipes' own
        cfg = replace(R.QUICK, train_threads=threads)
        plan = R.build_plan(tmp_path, cfg, "test", ["rft"])
        for name, cls, want in (("sft", SFTConfig, want_sft), ("rft-s0", RFTConfig, want_rft)):
            plan.stages[name].prepare()
            assert (
                load_config(cls, tmp_path / "configs" / f"{name}.yaml").train.torch_threads == want
            )
    with pytest.raises(SystemExit):
        R.main(["--threads", "0", "--dry-run", "--out", str(tmp_path / "x")])


def test_a_folder_keeps_its_thread_count(tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    (out / "stages.json").write_text(json.dumps({"_settings": "full", "_threads": 1, "data": {}}))
    assert R.main(["--out", str(out), "--dry-run"]) == 1
    assert "ran with --threads 1; rerun the same way" in capsys.readouterr().err
    assert R.main(["--out", str(out), "--dry-run", "--threads", "1"]) == 0
