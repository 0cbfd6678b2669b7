"""GRPO maths on hand-made numbers: advantages, their scaling, the loss and its normalisation."""

import math

import numpy as np
import pytest
import torch

from autovla.train.grpo import group_advantages, grpo_loss, k3_kl, nan_std


def test_equal_rewards_give_zero_advantage():
    adv = group_advantages(np.array([3.0, 3.0, 3.0, 1.0, 2.0, 3.0]), group_size=3)
    assert torch.allclose(adv[:3], torch.zeros(3))
    # Second group: mean 2, unbiased std 1 -> (-1, 0, 1) / (1 + 1e-4).
    assert torch.allclose(adv[3:], torch.tensor([-1.0, 0.0, 1.0]) / (1 + 1e-4))


def test_unscaled_advantages_keep_reward_units():
    rewards = np.array([5.0, 5.0, 5.0, 5.3, 2.0, 4.0, 6.0, 8.0])
    adv = group_advantages(rewards, group_size=4, scaling="none")
    # Centred only: a 0.3 penalty-sized gap stays small, a driving-score spread stays large.
    assert torch.allclose(adv[:4], torch.tensor([-0.075, -0.075, -0.075, 0.225]))
    assert torch.allclose(adv[4:], torch.tensor([-3.0, -1.0, 1.0, 3.0]))
    scaled = group_advantages(rewards, group_size=4)
    assert abs(float(scaled[3])) > 1.0  # the paper's scaling blows the small gap up
    assert torch.allclose(group_advantages(np.full(4, 7.0), 4, "none"), torch.zeros(4))


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


def test_advantage_scalings_on_hand_numbers():
    r = np.array([1.0, 2.0, 3.0, 0.0, 0.0, 6.0])  # both groups have mean 2
    centred = torch.tensor([-1.0, 0.0, 1.0, -2.0, -2.0, 4.0])
    assert torch.allclose(group_advantages(r, 3, "none"), centred)
    # group: stds 1 and sqrt((4 + 4 + 16) / 2) = sqrt(12)
    group = group_advantages(r, 3, "group")
    assert torch.allclose(group[:3], centred[:3] / (1 + 1e-4))
    assert torch.allclose(group[3:], centred[3:] / (math.sqrt(12) + 1e-4))
    # batch: one std for all six rewards, sqrt((1 + 0 + 1 + 4 + 4 + 16) / 5) = sqrt(5.2)
    batch = group_advantages(r, 3, "batch")
    assert torch.allclose(batch, centred / (math.sqrt(5.2) + 1e-4))
    # a batch spread over processes: the caller passes the whole batch's std
    assert torch.allclose(group_advantages(r, 3, "batch", batch_std=2.0), centred / (2 + 1e-4))
    with pytest.raises(ValueError, match="group, batch, none"):
        group_advantages(r, 3, "rank")


def test_unscored_rewards_leave_the_group_statistics():
    r = np.array([1.0, np.nan, 3.0, np.nan, np.nan, np.nan, 5.0, np.nan, 5.0, 4.0, np.nan, 9.0])
    for scaling in ("group", "batch", "none"):
        adv = group_advantages(r, 3, scaling)
        assert torch.isfinite(adv).all()
        assert adv[[1, 3, 4, 5, 7, 10]].tolist() == [0.0] * 6  # unscored: advantage 0
        assert adv[[6, 8]].tolist() == [0.0, 0.0]  # two equal scored rewards
    # group 1: scored 1 and 3 -> mean 2, std sqrt(2); group 4: 4 and 9 -> mean 6.5, std sqrt(12.5)
    g = group_advantages(r, 3, "group")
    assert g[[0, 2]].tolist() == pytest.approx(
        [-1 / (math.sqrt(2) + 1e-4), 1 / (math.sqrt(2) + 1e-4)]
    )
    assert float(g[9]) == pytest.approx(-2.5 / (math.sqrt(12.5) + 1e-4))
    # batch std over the six scored rewards 1, 3, 5, 5, 4, 9 (mean 4.5)
    sd = float(np.std([1, 3, 5, 5, 4, 9], ddof=1))
    assert float(nan_std(r)) == pytest.approx(sd)
    assert float(group_advantages(r, 3, "batch")[0]) == pytest.approx(-1 / (sd + 1e-4))
    assert nan_std(np.array([[np.nan, 2.0], [1.0, 3.0]]), dim=1).tolist() == [
        0.0,
        pytest.approx(math.sqrt(2)),
    ]


def _batch():
    """Two completions with 2 and 4 counted tokens, advantages +1 and -1, ratio 1, KL 0: every
    counted token's loss is -A."""
    logp = torch.full((2, 5), -1.0, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    return logp, mask, torch.tensor([1.0, -1.0])


@pytest.mark.parametrize(
    ("norm", "loss", "grad_short", "grad_long"),
    [
        # mean over each completion's tokens, then over completions: (-2/2 + 4/4) / 2
        ("sequence", 0.0, -1 / (2 * 2), 1 / (4 * 2)),
        # every token of the batch alike: (-2 + 4) / 6
        ("token", 2 / 6, -1 / 6, 1 / 6),
        # token sum over completions x 8 tokens: 2 / 16
        ("constant", 2 / 16, -1 / 16, 1 / 16),
    ],
)
def test_loss_normalisations_on_a_hand_made_batch(norm, loss, grad_short, grad_long):
    logp, mask, adv = _batch()
    out = grpo_loss(logp, logp.detach(), logp.detach(), adv, mask, normalisation=norm,
                    constant_tokens=8)  # fmt: skip
    out.loss.backward()
    assert out.loss.item() == pytest.approx(loss, abs=1e-7)
    expect = torch.tensor([[grad_short] * 2 + [0.0] * 3, [grad_long] * 4 + [0.0]])
    assert torch.allclose(logp.grad, expect)
    # Split into two forward chunks with the whole batch's counts: the losses add up.
    logp2, mask2, _ = _batch()
    parts = [
        grpo_loss(logp2[i : i + 1], logp2[i : i + 1].detach(), logp2[i : i + 1].detach(),
                  adv[i : i + 1], mask2[i : i + 1], normalisation=norm, batch_rows=2,
                  batch_tokens=6.0, constant_tokens=8).loss
        for i in range(2)
    ]  # fmt: skip
    total = parts[0] + parts[1]
    total.backward()
    assert float(total.detach()) == pytest.approx(loss, abs=1e-7)
    assert torch.allclose(logp2.grad, expect)


def test_sequence_mean_divides_the_mode_choice_by_the_answer_length():
    """Two completions with the same advantage: the first (mode-choice) token of the answer
    with 4 tokens gets half the gradient of the one with 2 under the per-sequence mean, the
    same under the per-token and constant normalisations."""
    logp, mask, _ = _batch()
    adv = torch.tensor([1.0, 1.0])
    for norm, ratio in (("sequence", 0.5), ("token", 1.0), ("constant", 1.0)):
        g = torch.autograd.grad(
            grpo_loss(logp, logp.detach(), logp.detach(), adv, mask, normalisation=norm).loss, logp
        )[0]
        assert float(g[1, 0] / g[0, 0]) == pytest.approx(ratio)
