"""The Qwen2.5-VL-3B configuration at full width, vocabulary and pixel budget, with two layers
(about 0.5 B parameters): shapes, mrope positions, tied embeddings, save/reload and both
decoding paths at full size, without the memory of the whole model."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.model_fixtures import one_torch_thread, tiny_codebook  # noqa: F401

pytestmark = pytest.mark.slow


def _samples(root: Path, n: int):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_planner import make_samples

    return make_samples(root, n, size=(441, 248))


def test_3b_config_with_two_layers(tmp_path):
    from autovla.model.backbone import get_preset
    from autovla.model.checkpoint import AutoVLA, build_model
    from autovla.model.inputs import encode_batch
    from autovla.model.logprobs import completion_logits
    from autovla.model.planner import Planner

    preset = dataclasses.replace(
        get_preset("qwen2.5-vl-3b"), name="3b-2layers", layers=2, vision_depth=2,
        fullatt_blocks=(1,),
    )  # fmt: skip
    vla = build_model(preset, tiny_codebook(k=2048), dtype=torch.bfloat16, random_weights=True)
    model = vla.model
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert emb.shape == (151_936, 2048) and head.data_ptr() == emb.data_ptr()  # tied, 3B vocab
    assert model.dtype == torch.bfloat16 and vla.action_end <= emb.shape[0]

    samples = _samples(tmp_path, 2)
    batch = encode_batch(vla.processor, samples, tmp_path, vla.fmt, padding_side="left")
    grid = batch["video_grid_thw"]
    assert grid.tolist() == [[2, 16, 30]] * 6  # 3 cameras x 2 samples, 109,760-pixel budget
    per_sample = int((batch["input_ids"][0] == model.config.video_token_id).sum())
    assert per_sample == 3 * 2 * 16 * 30 // 4  # 720 vision tokens after the 2x2 merge

    out = tmp_path / "m"
    vla.save_pretrained(out)
    again = AutoVLA.from_pretrained(out)
    e2 = again.model.get_input_embeddings().weight
    assert again.model.dtype == torch.bfloat16
    assert again.model.get_output_embeddings().weight.data_ptr() == e2.data_ptr()
    comp = [[vla.action_start + 3, vla.action_start + 7]] * 2
    with torch.no_grad():
        a, _, _ = completion_logits(model, batch, comp)
        b, _, _ = completion_logits(again.model, batch, comp)
    assert torch.equal(a, b)  # the reloaded model computes the same logits, bit for bit
    shutil.rmtree(out)

    ref = Planner(vla, decoding="reference", max_reasoning_tokens=6)
    fast = Planner(vla, decoding="fast", max_reasoning_tokens=6)
    for kw in ({"mode": "slow"}, {"mode": "auto", "temperature": 1.0, "seed": 2, "num_samples": 2}):
        r, f = ref.plan(samples, tmp_path, **kw), fast.plan(samples, tmp_path, **kw)
        assert [x.completion_ids for x in f] == [x.completion_ids for x in r]
        for x in f:
            assert len(x.action_ids) == 10 and np.isfinite(x.trajectory).all()
