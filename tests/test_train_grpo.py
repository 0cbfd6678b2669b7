"""GRPO maths and rewards on hand-made numbers."""

import math

import numpy as np
import pytest
import torch

from autovla.train.grpo import group_advantages, grpo_loss, k3_kl
from autovla.train.rewards import Completion, ade_reward, cot_penalty, total_reward

from .conftest import make_sample


def test_equal_rewards_give_zero_advantage():
    adv = group_advantages(np.array([3.0, 3.0, 3.0, 1.0, 2.0, 3.0]), group_size=3)
    assert torch.allclose(adv[:3], torch.zeros(3))
    # Second group: mean 2, unbiased std 1 -> (-1, 0, 1) / (1 + 1e-4).
    assert torch.allclose(adv[3:], torch.tensor([-1.0, 0.0, 1.0]) / (1 + 1e-4))


def test_unscaled_advantages_keep_reward_units():
    rewards = np.array([5.0, 5.0, 5.0, 5.3, 2.0, 4.0, 6.0, 8.0])
    adv = group_advantages(rewards, group_size=4, scale=False)
    # Centred only: a 0.3 penalty-sized gap stays small, a driving-score spread stays large.
    assert torch.allclose(adv[:4], torch.tensor([-0.075, -0.075, -0.075, 0.225]))
    assert torch.allclose(adv[4:], torch.tensor([-3.0, -1.0, 1.0, 3.0]))
    scaled = group_advantages(rewards, group_size=4)
    assert abs(float(scaled[3])) > 1.0  # the paper's scaling blows the small gap up
    assert torch.allclose(group_advantages(np.full(4, 7.0), 4, scale=False), torch.zeros(4))


def test_advantage_groups_must_divide():
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(np.ones(6), 4)
    with pytest.raises(ValueError, match="at least 2"):
        group_advantages(np.ones(6), 1)


def test_kl_is_zero_when_policy_equals_reference():
    logp = torch.log(torch.tensor([[0.2, 0.5, 0.9]]))
    assert torch.allclose(k3_kl(logp, logp), torch.zeros(1, 3))
    # k3 at ref - logp = log 2: 2 - log 2 - 1.
    assert math.isclose(
        k3_kl(torch.tensor([0.0]), torch.tensor([math.log(2)])).item(),
        1 - math.log(2),
        rel_tol=1e-6,
    )


def test_loss_gradient_is_advantage_times_score_function():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -0.5]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    adv = torch.tensor([2.0, -1.0])
    out = grpo_loss(logp, logp.detach(), logp.detach(), adv, mask, beta=0.04)
    out.loss.backward()
    # With ratio 1 and KL 0: d loss / d logp = -A / (2 * n_tokens) on counted tokens.
    expected = torch.tensor([[-2 / 4, -2 / 4, 0.0], [1 / 6, 1 / 6, 1 / 6]])
    assert torch.allclose(logp.grad, expected)
    assert out.kl.item() == 0.0 and out.clip_fraction.item() == 0.0
    assert math.isclose(out.loss.item(), -(2.0 - 1.0) / 2)


def test_ratio_clipping_counts():
    logp = torch.tensor([[0.0, 0.5]])
    old = torch.tensor([[0.0, 0.0]])
    out = grpo_loss(logp, old, logp, torch.tensor([1.0]), torch.ones(1, 2, dtype=torch.bool))
    assert out.clip_fraction.item() == 0.5  # exp(0.5) = 1.65 > 1.2
    # Positive advantage: the clipped term (1.2) is the minimum for the second token.
    assert math.isclose(out.loss.item(), -(1.0 + 1.2) / 2, rel_tol=1e-6)


def _comp(text, mode, traj=None):
    return Completion(
        trajectory=traj if traj is not None else np.zeros((10, 3)), text=text, mode=mode
    )


def test_penalty_only_on_slow_completions():
    long_text = "x" * 400
    p = cot_penalty([_comp(long_text, "slow"), _comp(long_text, "fast")])
    assert math.isclose(p[0], 0.3 * 0.5)  # sigmoid(0) = 0.5 at exactly c characters
    assert p[1] == 0.0
    longer = cot_penalty([_comp("x" * 1400, "slow")])[0]
    assert longer > p[0] and longer < 0.3


def test_ade_reward_and_total():
    s = make_sample(1)
    perfect = _comp("a", "fast", s.future_array())
    off = _comp("a", "slow", s.future_array() + np.array([2.0, 0.0, 0.0]))
    r = ade_reward([s, s], [None, None], [perfect, off])
    assert r[0] == 1.0 and math.isclose(r[1], math.exp(-1.0))
    terms = total_reward([s, s], [None, None], [perfect, off], driving_score="ade")
    assert np.allclose(terms["total"], 10 * terms["driving_score"] - terms["cot_penalty"])
    assert terms["cot_penalty"][0] == 0.0 and terms["cot_penalty"][1] > 0.0
    with pytest.raises(ValueError, match="unknown reward 'speed'"):
        total_reward([s], [None], [perfect], driving_score="speed")
