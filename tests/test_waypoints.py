"""Text waypoints instead of action tokens (the `autovla-waypoints-v1` prompt format): the
answer text, its tokens, SFT targets, constrained decoding on both paths, parse failures in
evaluation, and the commands that build or refuse such a model."""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from autovla.cli import app
from autovla.model.planner import Planner, waypoint_trajectory
from autovla.model.prompts import (
    PromptFormat,
    PromptFormatError,
    parse_answer,
    parse_waypoints,
    render_answer,
    render_waypoint_answer,
    render_waypoints,
)
from tests.model_fixtures import one_torch_thread  # noqa: F401 (autouse fixture)
from tests.train_sft_fixtures import REASONING, codebook, write_dataset

FORMAT = "autovla-waypoints-v1"
XY = np.array([[1.254, 0.0], [2.5, -0.004], [3.75, 0.1], [5.0, 0.3], [6.2, 0.6],
               [7.4, 1.0], [8.5, 1.5], [9.6, 2.1], [10.6, 2.8], [11.5, 3.6]])  # fmt: skip


@pytest.fixture(scope="module")
def fmt() -> PromptFormat:
    return PromptFormat.load(FORMAT)


# --- the text ---------------------------------------------------------------------------------
def test_render_parse_round_trip(fmt):
    body = render_waypoints(XY)
    assert body.startswith(" (1.25, 0.00) (2.50, 0.00) (3.75, 0.10)")  # no "-0.00"
    assert body.endswith(" (11.50, 3.60)") and body.count("(") == 10
    answer = render_waypoint_answer(XY, None, fmt)
    mode, reasoning, text = parse_answer(answer, fmt)
    assert (mode, reasoning) == ("fast", None)
    parsed = parse_waypoints(text)
    assert parsed.error is None
    np.testing.assert_allclose(np.asarray(parsed.xy), XY, atol=0.005 + 1e-12)
    slow = render_waypoint_answer(XY, REASONING, fmt)
    assert parse_answer(slow, fmt)[:2] == ("slow", REASONING)
    assert parse_waypoints(parse_answer(slow, fmt)[2]).xy == parsed.xy


@pytest.mark.parametrize(
    "text,error",
    [
        ("", "0 waypoints, expected 10"),
        (" (1.00, 0.00)" * 9, "9 waypoints, expected 10"),
        (" (1.00, 0.00)" * 11, "11 waypoints, expected 10"),
        (" (1.00, 0.00) (2.00" + " (1.00, 0.00)" * 8, "unexpected text '(2.00' at char 13"),
        (" (1.00, 0.00)" * 10 + " 7", "unexpected text '7' at char 130"),
        (" (1.0.0, 0.00)" + " (1.00, 0.00)" * 9, "unexpected text '(1.0.0, 0.00)' at char 0"),
        (" (" + "9" * 400 + ", 0.00)" + " (1.00, 0.00)" * 9, "waypoint 1 is not a finite number"),
    ],
)
def test_parse_failures_say_why(text, error):
    parsed = parse_waypoints(text)
    assert parsed.xy is None and parsed.error == error


def test_format_checks(fmt, tmp_path):
    assert fmt.answer_kind == "waypoints" and PromptFormat.load().answer_kind == "action_tokens"
    with pytest.raises(ValueError, match="answers with waypoints"):
        render_answer(list(range(10)), None, fmt)
    with pytest.raises(ValueError, match="answers with action_tokens"):
        render_waypoint_answer(XY, None, PromptFormat.load())
    with pytest.raises(ValueError, match="shape"):
        render_waypoints(XY[:9])
    data = fmt.model_dump()
    data["action_close"] = " </answer>"  # a close starting like the waypoint text
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(PromptFormatError, match="action_close of a waypoint format"):
        PromptFormat.load(tmp_path / "bad.yaml")


def test_headings_follow_the_path():
    traj = waypoint_trajectory(XY)
    assert traj.shape == (10, 3)
    np.testing.assert_array_equal(traj[:, :2], XY)
    # central differences: the heading at point 3 is the direction from point 2 to point 4
    assert traj[2, 2] == pytest.approx(np.arctan2(0.3 + 0.004, 5.0 - 2.5))
    still = waypoint_trajectory(np.tile([[0.0, 0.01]], (10, 1)))  # rounding noise only
    assert np.all(still[:, 2] == 0.0)


# --- a tiny waypoint model ----------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def workspace() -> Path:
    """model/ (tiny, waypoint format, built with `autovla model init`), codebook, ds/."""
    root = Path(tempfile.mkdtemp(prefix="autovla-waypoints-test-"))
    import atexit

    atexit.register(shutil.rmtree, root, ignore_errors=True)
    codebook().save(root / "codebook.safetensors")
    res = CliRunner().invoke(
        app,
        ["model", "init", "--preset", "tiny", "--codebook", str(root / "codebook.safetensors"),
         "--out", str(root / "model"), "--prompt-format", FORMAT, "--number-init"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "answers: waypoints" in res.output
    write_dataset(root / "ds", 8, 6, "test")
    return root


@functools.lru_cache(maxsize=1)
def waypoint_vla():
    from autovla.model.checkpoint import AutoVLA

    vla = AutoVLA.from_pretrained(workspace() / "model")
    assert vla.fmt.name == FORMAT and vla.info["number_init"] is True
    return vla


def _samples(split: str | None = None):
    from autovla.data.manifest import load_samples

    return load_samples(workspace() / "ds", split)


def test_answer_tokens_are_stable_in_the_chat_and_in_pieces():
    """The chat check of encode_batch passes, and the planner's pieces (forced close of the
    think block + answer opening, the model's waypoint text, the forced close) are the tokens
    of the whole answer."""
    from autovla.model.inputs import encode_batch

    vla = waypoint_vla()
    tok, fmt = vla.tokenizer, vla.fmt
    samples = _samples("train")[:2]
    rng = np.random.default_rng(0)
    for reasoning in (None, REASONING):
        for _ in range(8):
            xy = np.cumsum(rng.uniform([-0.5, -3], [12, 3], (10, 2)), 0)
            answer = render_waypoint_answer(xy, reasoning, fmt)
            batch = encode_batch(
                vla.processor, samples, workspace() / "ds", fmt, answers=[answer, answer]
            )  # raises when the answer tokenizes differently inside the chat
            assert not batch["action_mask"].any()  # no action tokens: the LM loss alone

            def ids(text):
                return tok(text, add_special_tokens=False)["input_ids"]

            head = answer[: answer.index(fmt.think_close)]
            pieces = ids(head) + ids(fmt.think_close + fmt.action_open)
            pieces += ids(render_waypoints(xy)) + ids(fmt.action_close)
            assert pieces == ids(answer)


def test_sft_few_steps_on_waypoints(tmp_path):
    from autovla.config import load_config
    from autovla.model.checkpoint import AutoVLA
    from autovla.train.collate import SFTCollator
    from autovla.train.config import SFTConfig
    from autovla.train.data import Item
    from autovla.train.sft import train_sft

    vla, ws = waypoint_vla(), workspace()
    items = [Item(s, str(ws / "ds"), 0) for s in _samples("train")[:2]]
    batch = SFTCollator(vla.processor, vla.fmt, vla.codebook, "dual", 1.0)(items)
    answers = [vla.tokenizer.decode(r[r != -100].tolist()) for r in batch["labels"]]
    for it, a in zip(items, answers, strict=True):
        assert render_waypoints(it.sample.future_array()) in a and "<action_" not in a
    assert batch["is_slow"].tolist() == [True, False]

    cfg = {
        "model": {"path": str(ws / "model")},
        "data": {"datasets": [{"path": str(ws / "ds")}], "num_workers": 0},
        "val": {"datasets": [{"path": str(ws / "ds"), "split": "test"}], "batch_size": 2},
        "optim": {"lr": 1.0e-3, "warmup_steps": 1},
        "sft": {"batch_size": 2},
        "train": {"max_steps": 3, "device": "cpu"},
        "output": {"dir": str(tmp_path / "run"), "progress": False, "log_every": 1},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    result = train_sft(load_config(SFTConfig, tmp_path / "c.yaml", []))
    assert result.steps == 3
    log = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in log if r["kind"] == "train"]
    assert len(train) == 3 and all(np.isfinite(r["lm_loss"]) and r["lm_loss"] > 0 for r in train)
    assert all(r["action_loss"] == 0.0 for r in train)  # no action tokens to weigh
    assert result.val["samples"] == 2 and np.isfinite(result.val["l2_avg"])  # planned
    assert AutoVLA.from_pretrained(result.checkpoint).fmt.answer_kind == "waypoints"


# --- decoding ---------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def long_writing_vla():
    """The waypoint model with a bias towards ")" and a 40-token cap: sampled rows close their
    tenth point or reach the cap at different steps."""
    import copy

    vla = waypoint_vla()
    model = copy.deepcopy(vla.model)
    old = model.lm_head
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        head.bias[vla.tokenizer(")", add_special_tokens=False)["input_ids"][0]] = 3.0
    model.lm_head = head
    fmt = vla.fmt.model_copy(update={"max_waypoint_tokens": 40})
    return dataclasses.replace(vla, model=model, fmt=fmt)


def _pair(vla, **kw):
    return Planner(vla, decoding="reference", **kw), Planner(vla, decoding="fast", **kw)


def _same(a, b):
    assert [r.completion_ids for r in a] == [r.completion_ids for r in b]
    assert [r.sampled_mask for r in a] == [r.sampled_mask for r in b]
    assert [r.parse_error for r in a] == [r.parse_error for r in b]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.trajectory, y.trajectory)


@pytest.mark.parametrize("mode", ["auto", "fast", "slow"])
def test_decoding_paths_give_identical_tokens(mode):
    root = workspace() / "ds"
    samples = _samples()
    vla = long_writing_vla()
    ref, fast = _pair(vla, max_reasoning_tokens=8)
    _same(ref.plan(samples[:3], root, mode=mode), fast.plan(samples[:3], root, mode=mode))
    kw = {"mode": mode, "temperature": 1.0, "seed": 5, "num_samples": 3}
    a, b = ref.plan(samples[:4], root, **kw), fast.plan(samples[:4], root, **kw)
    _same(a, b)
    tok, fmt, allowed = vla.tokenizer, vla.fmt, set(ref.parens)
    opening = len(tok(fmt.action_open, add_special_tokens=False)["input_ids"])
    answer_tok = tok.convert_tokens_to_ids("<answer>")
    closed, capped = 0, 0
    for r in a:
        assert r.action_ids == []
        start = r.completion_ids.index(answer_tok) + opening
        pairs = zip(r.completion_ids[start:], r.sampled_mask[start:], strict=True)
        written = [t for t, s in pairs if s and t != ref.answer_close]
        assert all(t in allowed for t in written)  # only waypoint characters
        assert len(written) <= 40
        body = tok.decode(written)
        assert r.text.endswith(fmt.action_open + body + fmt.action_close)
        assert (r.parse_error is None) == (parse_waypoints(body).xy is not None)
        if r.parse_error is not None:
            assert np.all(r.trajectory == 0.0)  # standing still
        closed += body.count(")") >= 10
        capped += "token cap" in (r.parse_error or "")
    assert closed and capped  # both ways of ending the text occur in one batch


class ScriptedPlanner(Planner):
    """Writes a given waypoint text per row (the model's other choices are its own)."""

    def __init__(self, vla, scripts: list[str], **kw):
        super().__init__(vla, **kw)
        tok = vla.tokenizer
        self.scripts = [
            tok(s, add_special_tokens=False)["input_ids"] + [self.answer_close] for s in scripts
        ]

    def _advance(self, rows, chosen, logprobs):
        chosen = list(chosen)
        for i, row in enumerate(rows):
            if row.phase == "waypoints":
                chosen[i] = self.scripts[i][len(row.answer_ids)]
        super()._advance(rows, chosen, logprobs)


SCRIPTS = [
    render_waypoints(XY),  # closes itself at the tenth ")"
    render_waypoints(XY)[: -len(" (11.50, 3.60)")],  # 9 points, then the model closes
    " (1.00, 2.00)) ((",  # malformed
    render_waypoints(XY[::-1]),
]


def test_planner_parses_waypoints_and_reports_failures():
    vla = waypoint_vla()
    root = workspace() / "ds"
    for decoding in ("reference", "fast"):
        planner = ScriptedPlanner(vla, SCRIPTS, decoding=decoding)
        res = planner.plan(_samples()[:4], root, mode="fast")
        assert res[0].parse_error is None and res[3].parse_error is None
        np.testing.assert_allclose(res[0].trajectory, waypoint_trajectory(np.round(XY, 2)))
        assert res[0].text.endswith(render_waypoints(XY) + "</answer>")
        assert res[1].parse_error == "9 waypoints, expected 10"
        assert res[2].parse_error == "unexpected text ') ((' at char 13"
        for r in res[1:3]:
            assert np.all(r.trajectory == 0.0)
        assert res[0].num_generated_tokens == len(planner.scripts[0]) - 1  # closed by the planner
        assert res[1].num_generated_tokens == len(planner.scripts[1])  # the model closed it


def test_open_loop_counts_parse_failures(tmp_path):
    from autovla.eval.open_loop import read_rows, run_open_loop
    from autovla.eval.planner_adapter import ModelPlanFn
    from autovla.eval.report import render_report

    planner = ScriptedPlanner(waypoint_vla(), SCRIPTS[:2])
    plan_fn = ModelPlanFn(planner, mode="fast")
    results = run_open_loop(plan_fn, workspace() / "ds", "test", tmp_path / "run", batch_size=2)
    o = results["overall"]
    assert o["n_valid"] == 2 and o["n_parse_failures"] == 1
    rows = read_rows(tmp_path / "run")
    assert [r["parse_error"] for r in rows] == [None, "9 waypoints, expected 10"]
    # the failure is scored as standing still, not dropped
    gt = np.stack([s.future_array() for s in _samples("test")])
    assert rows[1]["l2_avg"] == pytest.approx(
        np.mean([np.linalg.norm(gt[1, :k, :2], axis=-1).mean() for k in (2, 4, 6)]), abs=1e-6
    )
    assert o["n_l2_avg"] == 2
    html = render_report(tmp_path / "run").read_text()
    assert "waypoint answers that did not parse: 1 of 2" in html


# --- commands -------------------------------------------------------------------------------------
def test_rft_refuses_a_waypoint_model(tmp_path):
    ws = workspace()
    cfg = {
        "model": {"path": str(ws / "model")},
        "data": {"datasets": [{"path": str(ws / "ds")}]},
        "output": {"dir": str(tmp_path / "rft")},
    }
    (tmp_path / "rft.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["train", "rft", "--config", str(tmp_path / "rft.yaml")])
    assert res.exit_code == 1
    assert "train rft" in res.output and "supports action-token answers only" in res.output
    assert f"{FORMAT!r} answers with waypoints" in res.output.replace("\n", "")
    assert not (tmp_path / "rft").exists()  # refused before anything was written
