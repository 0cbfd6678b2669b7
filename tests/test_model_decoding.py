"""The planner's fast decoding path (static cache) gives the reference path's tokens."""

from __future__ import annotations

import dataclasses
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from autovla.model import decoding
from autovla.model.planner import Planner
from tests.model_fixtures import (
    one_torch_thread,  # noqa: F401 (autouse fixture)
    sample,
    tiny_codebook,
    tiny_vla,
)


@functools.lru_cache(maxsize=1)
def eight_samples():
    root = Path(tempfile.mkdtemp(prefix="autovla-decoding-test-"))
    import atexit

    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root, [sample(i, root) for i in range(8)]


def _pair(vla, **kw) -> tuple[Planner, Planner]:
    return (
        Planner(vla, decoding="reference", **kw),
        Planner(vla, decoding="fast", **kw),
    )


def assert_same(ref, fast, logprobs: bool = False) -> None:
    assert [r.completion_ids for r in fast] == [r.completion_ids for r in ref]
    assert [r.sampled_mask for r in fast] == [r.sampled_mask for r in ref]
    assert [r.mode for r in fast] == [r.mode for r in ref]
    for a, b in zip(ref, fast, strict=True):
        np.testing.assert_array_equal(a.trajectory, b.trajectory)
        if logprobs:
            np.testing.assert_allclose(b.logprobs, a.logprobs, atol=1e-4, rtol=0)


@pytest.mark.parametrize("mode", ["fast", "slow", "auto"])
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("action_choice", ["argmax", "expected"])
def test_greedy_tokens_identical(mode, batch, action_choice):
    root, samples = eight_samples()
    ref, fast = _pair(tiny_vla(), max_reasoning_tokens=20, action_choice=action_choice)
    kw = {"mode": mode, "return_logprobs": True}
    assert_same(ref.plan(samples[:batch], root, **kw), fast.plan(samples[:batch], root, **kw), True)


@pytest.mark.parametrize("mode", ["fast", "slow", "auto"])
@pytest.mark.parametrize("batch,num_samples", [(1, 1), (1, 4), (8, 1), (3, 3)])
def test_sampled_tokens_identical_with_the_same_seed(mode, batch, num_samples):
    root, samples = eight_samples()
    ref, fast = _pair(tiny_vla(), max_reasoning_tokens=20)
    kw = {"mode": mode, "temperature": 1.0, "top_p": 0.9, "seed": 7, "num_samples": num_samples}
    a = ref.plan(samples[:batch], root, return_logprobs=True, **kw)
    b = fast.plan(samples[:batch], root, return_logprobs=True, **kw)
    assert_same(a, b, logprobs=True)
    if mode == "auto" and batch * num_samples >= 8:
        assert {r.mode for r in a} == {"fast", "slow"}  # rows of both kinds in one batch


@functools.lru_cache(maxsize=1)
def closing_vla():
    """The tiny model with the think-close token as likely as a common reasoning token:
    sampled rows close their reasoning at different steps (forced text fed mid-batch, rows
    finishing while others still reason)."""
    import copy

    vla = tiny_vla()
    model = copy.deepcopy(vla.model)
    planner = Planner(vla)
    head = model.get_output_embeddings().weight
    with torch.no_grad():
        common = vla.tokenizer("Scene", add_special_tokens=False)["input_ids"][0]
        head[planner.close_token] = head[common] * 20.0
    return dataclasses.replace(vla, model=model)


def test_rows_closing_reasoning_at_different_steps(monkeypatch):
    root, samples = eight_samples()
    ref, fast = _pair(closing_vla(), max_reasoning_tokens=40)
    kept = []
    keep = decoding.StaticDecoder.keep
    monkeypatch.setattr(
        decoding.StaticDecoder, "keep", lambda self, s: (kept.append(len(s)), keep(self, s))[1]
    )
    kw = {"mode": "slow", "temperature": 1.0, "seed": 3, "num_samples": 2, "return_logprobs": True}
    a = ref.plan(samples, root, **kw)
    b = fast.plan(samples, root, **kw)
    assert_same(a, b, logprobs=True)
    lengths = {r.num_generated_tokens for r in a}
    assert len(lengths) >= 6 and max(lengths) == 40 + 10, lengths  # closed at many steps; capped
    assert kept and min(kept) < len(a)  # finished rows left the active set
    assert [r.reasoning_capped for r in a] == [r.reasoning_capped for r in b]
    capped = [r for r in a if r.reasoning_capped]  # closed by the planner at the cap
    assert capped and all(r.num_generated_tokens == 40 + 10 for r in capped)
    assert not all(r.reasoning_capped for r in a)


def test_plain_text_markup_identical():
    """Without structure tokens the close marker is text the model writes itself."""
    from autovla.model.checkpoint import build_model
    from autovla.model.prompts import PromptFormat

    fmt = PromptFormat.load().model_copy(update={"name": "plain", "structure_tokens": []})
    vla = build_model("tiny", tiny_codebook(k=16), seed=1, fmt=fmt)
    root, samples = eight_samples()
    ref, fast = _pair(vla, max_reasoning_tokens=12)
    for mode in ("slow", "auto"):
        kw = {"mode": mode, "temperature": 1.0, "seed": 2}
        assert_same(ref.plan(samples[:4], root, **kw), fast.plan(samples[:4], root, **kw))


def test_lora_wrapped_model_identical():
    import copy

    from peft import LoraConfig, get_peft_model

    vla = tiny_vla()
    wrapped = get_peft_model(
        copy.deepcopy(vla.model), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    with torch.no_grad():  # non-zero adapters, so they change the answers
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
    root, samples = eight_samples()
    ref, fast = _pair(dataclasses.replace(vla, model=wrapped), max_reasoning_tokens=16)
    kw = {"mode": "auto", "temperature": 1.0, "seed": 4, "num_samples": 2}
    assert_same(ref.plan(samples[:3], root, **kw), fast.plan(samples[:3], root, **kw))


def test_eager_attention_identical():
    import copy

    vla = tiny_vla()
    model = copy.deepcopy(vla.model)
    model.set_attn_implementation("eager")
    root, samples = eight_samples()
    ref, fast = _pair(dataclasses.replace(vla, model=model), max_reasoning_tokens=16)
    assert_same(ref.plan(samples[:3], root, mode="slow"), fast.plan(samples[:3], root, mode="slow"))


def test_decoding_choice():
    import copy

    vla = tiny_vla()
    assert Planner(vla).decoding == "fast"
    with pytest.raises(ValueError, match="decoding"):
        Planner(vla, decoding="static")
    model = copy.deepcopy(vla.model)
    model.config.get_text_config()._attn_implementation_internal = "flex_attention"
    other = dataclasses.replace(vla, model=model)
    assert Planner(other).decoding == "reference"  # auto: the path the model supports
    with pytest.raises(ValueError, match="sdpa or eager"):
        Planner(other, decoding="fast")


def test_row_cache_writes_each_row_at_its_own_columns():
    cache = decoding.RowCache(1, slots=3, kv_heads=2, length=8, head_dim=4, dtype=torch.float32,
                              device=torch.device("cpu"))  # fmt: skip
    k = torch.arange(2 * 2 * 2 * 4, dtype=torch.float32).reshape(2, 2, 2, 4)
    cache.cols = torch.tensor([[1, 2], [5, 6]])
    keys, values = cache.update(k, -k, 0)
    assert keys.shape == (2, 2, 8, 4)  # the first two slots, all columns
    torch.testing.assert_close(keys[0, :, 1:3], k[0])
    torch.testing.assert_close(keys[1, :, 5:7], k[1])
    torch.testing.assert_close(values[1, :, 5:7], -k[1])
    assert keys[0, :, 3:].abs().sum() == 0 and keys[1, :, :5].abs().sum() == 0
    assert cache.keys[0][2].abs().sum() == 0  # slot 2 untouched


@pytest.mark.slow
def test_small_preset_identical():
    from autovla.model.checkpoint import build_model

    vla = build_model("small", tiny_codebook(), seed=0)
    root, samples = eight_samples()
    ref, fast = _pair(vla, max_reasoning_tokens=16)
    for mode, kw in (("slow", {}), ("auto", {"temperature": 1.0, "seed": 1, "num_samples": 2})):
        assert_same(
            ref.plan(samples, root, mode=mode, return_logprobs=True, **kw),
            fast.plan(samples, root, mode=mode, return_logprobs=True, **kw),
            logprobs=True,
        )


@pytest.mark.slow
def test_compiled_step_identical():
    root, samples = eight_samples()
    vla = tiny_vla()
    ref = Planner(vla, decoding="reference", max_reasoning_tokens=12)
    compiled = Planner(vla, decoding="fast", compile=True, max_reasoning_tokens=12)
    for batch in (1, 3):  # a second shape reuses the compiled step
        kw = {"mode": "auto", "temperature": 1.0, "seed": 9, "num_samples": 2}
        assert_same(
            ref.plan(samples[:batch], root, **kw), compiled.plan(samples[:batch], root, **kw)
        )
