"""RFT rewards: the weighted list of functions, the reference formula and NaN terms, on hand
numbers."""

import math
from pathlib import Path

import numpy as np
import pytest

from autovla.config import ConfigError, load_config
from autovla.train.grpo import group_advantages
from autovla.train.rewards import (
    REWARDS,
    Completion,
    RewardConfigError,
    build_terms,
    compute_rewards,
    reasoning_length,
    resolve,
)
from autovla.train.rft_config import RewardConfig, RFTConfig

from .conftest import make_sample

REPO = Path(__file__).resolve().parents[1]
PAPER = [("ade", 1.0, {}), ("reasoning_length", -0.3, {"k": 0.002, "c": 400})]


def comp(text: str, mode: str, traj=None) -> Completion:
    return Completion(np.zeros((10, 3)) if traj is None else traj, text, mode)


def half_ade(samples, roots, completions) -> np.ndarray:
    """A reward outside the registry (used through module:function): 0.5 each, NaN for s0001."""
    return np.array([np.nan if s.id == "s0001" else 0.5 for s in samples])


def test_reasoning_length_is_a_sigmoid_on_slow_completions_only():
    v = reasoning_length(None, None, [comp("x" * 400, "slow"), comp("x" * 400, "fast")])
    assert v[0] == 0.5 and v[1] == 0.0  # sigmoid(0) at exactly c characters
    v = reasoning_length(None, None, [comp("x" * 900, "slow")], k=0.002, c=400)
    assert math.isclose(v[0], 1 / (1 + math.exp(-1.0)))  # sigmoid(0.002 * 500)


def test_total_is_the_reference_formula():
    """r = scale * (score - w * sigmoid(k (len - c))): the scale multiplies the penalty."""
    s = make_sample(1)  # drives straight at 3 m/s
    fut = s.future_array()
    c = [
        comp("x" * 400, "slow", fut),
        comp("y", "fast", fut),
        comp("x" * 900, "slow", fut + np.array([2.0, 0.0, 0.0])),
    ]
    terms = compute_rewards(build_terms(PAPER), 10.0, [s] * 3, [Path(".")] * 3, c)
    assert terms["ade"][:2].tolist() == [1.0, 1.0]
    assert math.isclose(terms["ade"][2], math.exp(-1.0))  # exp(-ADE / 2 m), ADE 2 m
    assert terms["reasoning_length"][:2].tolist() == [0.5, 0.0]
    # 10 * (1 - 0.3 * 0.5) = 8.5 (the old `scale * score - w * penalty` gave 9.85)
    assert terms["total"][0] == pytest.approx(8.5)
    assert terms["total"][1] == pytest.approx(10.0)
    # 10 * (e^-1 - 0.3 * sigmoid(1)) = 10 * (0.367879 - 0.219318)
    assert terms["total"][2] == pytest.approx(1.48561, abs=1e-5)


def test_nan_terms_are_left_out_of_the_sum_and_unscored_completions_are_nan():
    has, hasnt = make_sample(1), make_sample(2).without_answer()  # no future: ade is NaN
    fut = has.future_array()
    samples = [has, hasnt, hasnt]
    c = [comp("x" * 400, "slow", fut), comp("x" * 400, "slow"), comp("y", "fast")]
    roots = [Path(".")] * 3
    terms = compute_rewards(build_terms(PAPER), 10.0, samples, roots, c)
    assert np.isnan(terms["ade"][1:]).all()
    # only the penalty scored the last two: 10 * (-0.3 * 0.5) and 10 * (-0.3 * 0)
    assert terms["total"].tolist() == pytest.approx([8.5, -1.5, 0.0])
    # with the driving score alone, nothing scores them: NaN totals
    alone = compute_rewards(build_terms([("ade", 1.0, {})]), 10.0, samples, roots, c)
    assert alone["total"][0] == pytest.approx(10.0) and np.isnan(alone["total"][1:]).all()


def test_a_group_no_reward_can_score_is_left_out():
    good, bad = make_sample(1), make_sample(2).without_answer()
    fut = good.future_array()
    samples = [good] * 3 + [bad] * 3  # two groups of three
    c = [
        comp("a", "fast", fut),
        comp("a", "fast", fut + np.array([1.0, 0.0, 0.0])),
        comp("a", "fast", fut + np.array([2.0, 0.0, 0.0])),
    ]
    c += [comp("a", "fast")] * 3
    terms = compute_rewards(build_terms([("ade", 1.0, {})]), 10.0, samples, [Path(".")] * 6, c)
    assert np.isnan(terms["total"][3:]).all()
    adv = group_advantages(terms["total"], 3, "group")
    assert adv[3:].tolist() == [0.0, 0.0, 0.0]  # nothing to learn, nothing broken
    r = 10 * np.exp(-np.array([0.0, 0.5, 1.0]))  # ADE 0, 1, 2 m
    expect = (r - r.mean()) / (r.std(ddof=1) + 1e-4)
    assert adv[:3].numpy() == pytest.approx(expect, rel=1e-5)

    from types import SimpleNamespace as NS

    from autovla.train.rft_metrics import step_stats, summarise

    plans = [NS(mode="fast", text="a", reasoning=None)] * 6
    extra = {"loss": 0.0, "kl": 0.0, "clip_fraction": 0.0, "entropy": 0.0, "tokens": 6.0,
             "grad_norm": 0.0, "lr": 0.0, "gen_s": 0.0, "step_s": 0.0}  # fmt: skip
    m = summarise([step_stats([good, bad], plans, terms, 3, extra)])
    assert m["reward_unscored"] == 3.0  # counted
    assert m["reward"] == pytest.approx(r.mean())  # over the scored completions only
    assert m["reward_ade"] == pytest.approx(np.exp(-np.array([0.0, 0.5, 1.0])).mean())
    assert m["reward_group_std"] == pytest.approx(r.std(ddof=1) / 2)  # unscored group: 0


def test_module_function_rewards_need_permission():
    name = "tests.test_train_rewards:half_ade"
    with pytest.raises(RewardConfigError, match="allow_code"):
        resolve(name)
    terms = build_terms([(name, 2.0, {})], allow_code=True)
    assert terms[0].key == "half_ade"
    samples = [make_sample(0), make_sample(1)]
    out = compute_rewards(terms, 10.0, samples, [Path(".")] * 2, [comp("", "fast")] * 2)
    assert out["total"][0] == 10.0 and np.isnan(out["total"][1])
    with pytest.raises(RewardConfigError, match="cannot import"):
        resolve("tests.test_train_rewards:nope", allow_code=True)
    with pytest.raises(RewardConfigError, match="unknown reward 'speed'"):
        resolve("speed")


def test_reward_config(tmp_path):
    cfg = RewardConfig()  # the paper's terms
    assert [(f.name, f.weight, f.params) for f in cfg.functions] == [
        ("pdms", 1.0, {}),
        ("reasoning_length", -0.3, {"k": 0.002, "c": 400.0}),
    ]
    assert cfg.scale == 10.0 and not cfg.allow_code
    y = tmp_path / "c.yaml"
    base = "model: {path: m}\ndata: {datasets: [{path: d}]}\n"
    bad = {
        "reward: {functions: [{name: m.mod:fn}]}": "allow_code",
        "reward: {functions: [{name: reasoning_length, kk: 1}]}": "unexpected keyword",
        "reward: {functions: [{name: ade}, {name: ade, weight: 2}]}": "list each function once",
        "reward: {functions: []}": "empty",
        "reward: {driving_score: pdms, penalty_weight: 1.0}": "replaced by reward.functions",
        "grpo: {scale_advantages: false}": "advantage_scaling",
        "grpo: {loss_normalisation: mean}": "sequence",
    }
    for text, msg in bad.items():
        y.write_text(base + text + "\n")
        with pytest.raises(ConfigError, match=msg):
            load_config(RFTConfig, y)
    y.write_text(base + "reward: {functions: [{name: 'tests.test_train_rewards:half_ade'}]}\n")
    cfg = load_config(RFTConfig, y, ["reward.allow_code=true"])
    assert cfg.reward.terms()[0].key == "half_ade"


def test_recipes_state_their_reward():
    paper = load_config(RFTConfig, REPO / "configs" / "qwen2.5-vl-3b-rft.yaml")
    assert [(f.name, f.weight, f.params) for f in paper.reward.functions] == [
        ("pdms", 1.0, {}),
        ("reasoning_length", -0.3, {"k": 0.002, "c": 400}),
    ]
    assert paper.reward.scale == 10.0
    assert (paper.grpo.advantage_scaling, paper.grpo.loss_normalisation) == ("group", "sequence")
    tiny = load_config(RFTConfig, REPO / "configs" / "tiny-rft.yaml")
    assert tiny.reward.functions[0].name == "pdms" and tiny.grpo.advantage_scaling == "none"


def test_every_registered_reward_gives_nan_for_what_it_cannot_score():
    s = make_sample(0).without_answer()  # no future, no scoring data, not a world scenario
    c = [comp("x" * 500, "slow")]
    for name, fn in REWARDS.items():
        v = fn([s], [Path(".")], c)
        assert v.shape == (1,), name
        assert np.isnan(v[0]) == (name != "reasoning_length"), name


def test_an_infinite_reward_is_a_named_error():
    def inf(samples, roots, completions):
        return np.array([np.inf])

    from autovla.train.rewards import RewardTerm

    with pytest.raises(ValueError, match=r"'inf'.*s0000.*NaN"):
        compute_rewards([RewardTerm("inf", inf, 1.0)], 1.0, [make_sample(0)], [Path(".")],
                        [comp("", "fast")])  # fmt: skip
