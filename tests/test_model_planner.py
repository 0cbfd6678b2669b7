"""Planner on the tiny random model: constrained decoding, modes, batching, KV-cache consistency."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autovla.model.inputs import encode_batch
from autovla.model.logprobs import completion_logits, completion_logprobs
from autovla.model.planner import Planner
from tests.model_fixtures import (
    NUM_ACTIONS,
    dataset,
    one_torch_thread,  # noqa: F401 (autouse fixture)
    tiny_vla,
)


@pytest.fixture(scope="module")
def planner() -> Planner:
    return Planner(tiny_vla(), max_reasoning_tokens=24)


def _check_valid(r, vla):
    assert len(r.action_ids) == 10
    assert all(0 <= a < NUM_ACTIONS for a in r.action_ids)
    assert r.trajectory.shape == (10, 3) and np.isfinite(r.trajectory).all()
    expected = vla.codebook.decode(torch.tensor([r.action_ids]))[0].numpy()
    np.testing.assert_allclose(r.trajectory, expected, atol=1e-6)
    text = vla.tokenizer.decode(r.completion_ids, skip_special_tokens=False)
    assert text == r.text + "<|im_end|>"
    assert r.num_generated_tokens == sum(r.sampled_mask)
    assert len(r.sampled_mask) == len(r.completion_ids)
    assert set(r.timings) >= {"vision", "prefill", "decode"}


@pytest.mark.parametrize("mode", ["fast", "slow", "auto"])
@pytest.mark.parametrize("temperature", [0.0, 1.5])
def test_every_mode_gives_ten_valid_actions(planner, mode, temperature):
    root, samples = dataset()
    results = planner.plan(samples, root, mode=mode, temperature=temperature, seed=3)
    assert [r.sample_id for r in results] == [s.id for s in samples]
    for r in results:
        _check_valid(r, planner.vla)
        if mode != "auto":
            assert r.mode == mode
        assert r.text.startswith(planner.vla.fmt.fast_marker if r.mode == "fast" else "<think>")


def test_forced_fast_has_no_reasoning(planner):
    root, samples = dataset()
    for r in planner.plan(samples, root, mode="fast"):
        assert r.mode == "fast" and r.reasoning is None
        # Only the 10 action tokens were chosen by the model; the rest was forced.
        assert r.num_generated_tokens == 10
        assert r.text.startswith(planner.vla.fmt.fast_marker + planner.vla.fmt.think_close)


def test_forced_slow_reasons_then_acts(planner):
    root, samples = dataset()
    for r in planner.plan(samples, root, mode="slow", temperature=1.0, seed=0):
        assert r.mode == "slow" and isinstance(r.reasoning, str)
        assert r.text.startswith(planner.vla.fmt.slow_marker)
        assert "</think>" in r.text and r.text.endswith("</answer>")
        assert 10 < r.num_generated_tokens <= 24 + 10  # capped reasoning + actions


def test_batched_equals_single(planner):
    root, samples = dataset()
    batched = planner.plan(samples, root, mode="slow")
    for s, b in zip(samples, batched, strict=True):
        (single,) = planner.plan([s], root, mode="slow")
        assert single.completion_ids == b.completion_ids
        np.testing.assert_allclose(single.trajectory, b.trajectory)


def test_num_samples_and_seed(planner):
    root, samples = dataset()
    a = planner.plan(samples[:2], root, num_samples=3, temperature=1.0, seed=7)
    b = planner.plan(samples[:2], root, num_samples=3, temperature=1.0, seed=7)
    assert [r.sample_id for r in a] == [samples[0].id] * 3 + [samples[1].id] * 3
    assert [r.completion_ids for r in a] == [r.completion_ids for r in b]
    assert len({tuple(r.action_ids) for r in a}) > 1  # sampling does vary


def test_cached_decoding_matches_full_forward(planner):
    """Greedy tokens from the KV-cached loop are the argmax of a full forward pass."""
    vla = planner.vla
    root, samples = dataset()
    results = planner.plan(samples, root, mode="slow")
    batch = encode_batch(vla.processor, samples, root, vla.fmt, padding_side="left")
    with torch.no_grad():
        logits, _, _ = completion_logits(vla.model, batch, [r.completion_ids for r in results])
    for i, r in enumerate(results):
        for t, sampled in enumerate(r.sampled_mask):
            if not sampled:
                continue
            allowed = (
                planner.action_allowed
                if r.completion_ids[t] >= vla.action_start
                else (planner.reason_allowed)
            )
            row = logits[i, t].masked_fill(~allowed, float("-inf"))
            assert int(row.argmax()) == r.completion_ids[t], (i, t)


def test_completion_logprobs_batch_and_expand(planner):
    vla = planner.vla
    root, samples = dataset()
    results = planner.plan(samples[:2], root, num_samples=2, temperature=1.0, seed=1)
    comps = [r.completion_ids for r in results]
    batch = encode_batch(vla.processor, samples[:2], root, vla.fmt, padding_side="left")
    with torch.no_grad():
        lp = completion_logprobs(vla.model, batch, comps)
        single = encode_batch(vla.processor, samples[1:2], root, vla.fmt, padding_side="left")
        lp1 = completion_logprobs(vla.model, single, comps[3:])
    assert lp.shape[0] == 4 and (lp <= 0).all()
    torch.testing.assert_close(lp[3, : lp1.shape[1]], lp1[0], atol=1e-4, rtol=1e-4)
    # Forced tokens after the mode choice are (near-)free of choice but still scored.
    assert lp[0, : len(comps[0])].ne(0).any()


def test_ragged_batch_logprobs_match_full_forward(planner):
    """Mixed modes in one batch feed chunks of different lengths; the cached per-step
    log-probs must equal a full forward pass over prompt + completion."""
    vla = planner.vla
    root, samples = dataset()
    results = planner.plan(
        samples, root, mode="auto", num_samples=4, temperature=1.0, seed=5, return_logprobs=True
    )
    assert {r.mode for r in results} == {"fast", "slow"}  # ragged steps happened
    batch = encode_batch(vla.processor, samples, root, vla.fmt, padding_side="left")
    with torch.no_grad():
        full = completion_logprobs(vla.model, batch, [r.completion_ids for r in results])
    for i, r in enumerate(results):
        got = torch.tensor(r.logprobs)
        want = full[i, : len(r.completion_ids)] * torch.tensor(r.sampled_mask, dtype=torch.float32)
        torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)


def test_lora_wrapped_model_plans_and_scores(planner):
    """A PEFT/LoRA-wrapped policy (as in RFT) works; fresh LoRA (B = 0) changes nothing."""
    import copy
    import dataclasses

    from peft import LoraConfig, get_peft_model

    vla = planner.vla
    root, samples = dataset()
    config = LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    wrapped = get_peft_model(copy.deepcopy(vla.model), config)
    lora_vla = dataclasses.replace(vla, model=wrapped)
    base = planner.plan(samples[:2], root, mode="slow")
    got = Planner(lora_vla, max_reasoning_tokens=24).plan(samples[:2], root, mode="slow")
    assert [r.completion_ids for r in got] == [r.completion_ids for r in base]
    batch = encode_batch(vla.processor, samples[:2], root, vla.fmt, padding_side="left")
    comps = [r.completion_ids for r in base]
    with torch.no_grad():
        torch.testing.assert_close(
            completion_logprobs(wrapped, batch, comps), completion_logprobs(vla.model, batch, comps)
        )


@pytest.fixture(scope="module")
def plain_planner() -> Planner:
    """A model whose format keeps <think>/<answer> as plain text (no structure tokens)."""
    from autovla.model.checkpoint import build_model
    from autovla.model.prompts import PromptFormat
    from tests.model_fixtures import tiny_codebook

    fmt = PromptFormat.load().model_copy(update={"name": "plain", "structure_tokens": []})
    vla = build_model("tiny", tiny_codebook(k=16), seed=1, fmt=fmt)
    return Planner(vla, max_reasoning_tokens=12)


def test_plain_text_markup_format(plain_planner):
    from autovla.model.planner import _Row

    vla = plain_planner.vla
    assert plain_planner.close_token is None
    assert "<think>" not in vla.tokenizer.get_added_vocab()
    root, samples = dataset()
    for mode in ("fast", "slow", "auto"):
        for r in plain_planner.plan(samples, root, mode=mode, temperature=1.0, seed=2):
            assert len(r.action_ids) == 10 and all(0 <= a < 16 for a in r.action_ids)
            assert r.text.endswith("</answer>")
    # The model writing the close marker itself hands over to the forced answer opening.
    row = _Row("reason", "slow")
    ids = vla.tokenizer("Scene: empty.\n</think>", add_special_tokens=False)["input_ids"]
    for t in ids:
        assert row.phase == "reason"
        plain_planner._reason_step(row, t)
    assert row.phase == "actions"
    text = vla.tokenizer.decode(row.completion)
    assert text == "Scene: empty.\n</think>\n<answer>\nThe final output action is: "


def test_expected_action_choice_takes_the_middle_motion():
    """Mass split between two motions: the expected choice is the token nearest their mean."""
    vla = tiny_vla()
    planner = Planner(vla, action_choice="expected", action_top_p=1.0)
    ends = vla.codebook.contours[:, -1]  # (K, 4, 2)
    a, b = 1, 2
    mean = 0.5 * (ends[a] + ends[b])
    nearest = int((ends - mean).norm(dim=-1).sum(-1).argmin())
    logits = torch.full((1, vla.model.get_output_embeddings().weight.shape[0]), -1e4)
    logits[0, vla.action_start + a] = logits[0, vla.action_start + b] = 0.0
    assert int(planner._expected_actions(logits)[0]) == vla.action_start + nearest
    # A confident model: expected and argmax agree.
    logits[0, vla.action_start + b] = -30.0
    assert int(planner._expected_actions(logits)[0]) == vla.action_start + a


def test_expected_action_choice_plans_valid_greedy_trajectories():
    vla = tiny_vla()
    root, samples = dataset()
    argmax = Planner(vla, max_reasoning_tokens=24).plan(samples, root, mode="fast")
    nucleus_of_one = Planner(
        vla, max_reasoning_tokens=24, action_choice="expected", action_top_p=1e-6
    ).plan(samples, root, mode="fast")
    for r, q in zip(argmax, nucleus_of_one, strict=True):
        _check_valid(q, vla)
        assert q.action_ids == r.action_ids  # a nucleus of one token is the argmax
    expected = Planner(vla, max_reasoning_tokens=24, action_choice="expected")
    for r in expected.plan(samples, root, mode="auto"):
        _check_valid(r, vla)
    with pytest.raises(ValueError, match="action_choice"):
        Planner(vla, action_choice="mean")
    with pytest.raises(ValueError, match="action_top_p"):
        Planner(vla, action_top_p=0.0)
