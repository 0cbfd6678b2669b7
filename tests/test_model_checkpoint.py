"""Model directory save/load, codebook checks, presets, and the SFT batch labels."""

from __future__ import annotations

import shutil

import pytest
import torch

from autovla.model.backbone import PRESETS, get_preset
from autovla.model.checkpoint import AutoVLA, CheckpointError, check_action_tokens
from autovla.model.inputs import IGNORE_INDEX, action_id_range, encode_batch
from autovla.model.prompts import render_answer
from tests.model_fixtures import (
    NUM_ACTIONS,
    dataset,
    one_torch_thread,  # noqa: F401 (autouse fixture)
    tiny_codebook,
    tiny_vla,
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("vla") / "model"
    tiny_vla().save_pretrained(d)
    return d


def _logits(vla: AutoVLA) -> torch.Tensor:
    root, samples = dataset()
    answers = [render_answer(list(range(10)), s.reasoning, vla.fmt) for s in samples]
    batch = encode_batch(vla.processor, samples, root, vla.fmt, answers=answers)
    batch.pop("labels"), batch.pop("action_mask")
    with torch.no_grad():
        return vla.model(**batch).logits


def test_save_load_identical_logits(saved, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = AutoVLA.from_pretrained(saved)
    vla = tiny_vla()
    assert loaded.action_start == vla.action_start and loaded.num_actions == NUM_ACTIONS
    assert loaded.fmt == vla.fmt
    assert len(loaded.tokenizer) == len(vla.tokenizer)
    torch.testing.assert_close(loaded.codebook.contours, vla.codebook.contours)
    torch.testing.assert_close(_logits(loaded), _logits(vla), atol=0, rtol=0)
    for name in ("autovla.json", "codebook.safetensors", "prompt_format.yaml", "config.json"):
        assert (saved / name).exists()


def test_codebook_replaced_is_refused(saved, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(saved, d)
    tiny_codebook(seed=9).save(d / "codebook.safetensors")  # same size, other motions
    with pytest.raises(CheckpointError, match="sha256"):
        AutoVLA.from_pretrained(d)


def test_codebook_size_mismatch_is_refused():
    vla = tiny_vla()
    other = AutoVLA(vla.model, vla.processor, tiny_codebook(k=32), vla.fmt, vla.action_start)
    with pytest.raises(CheckpointError, match="64 action tokens but the codebook has 32"):
        check_action_tokens(other)


def test_not_a_model_dir(tmp_path):
    with pytest.raises(CheckpointError, match="not an AutoVLA model directory"):
        AutoVLA.from_pretrained(tmp_path)


def test_action_tokens_mean_initialised():
    from autovla.model.checkpoint import build_model

    vla = build_model("tiny", tiny_codebook(k=16), seed=3)
    emb = vla.model.get_input_embeddings().weight
    new = emb[vla.action_start : vla.action_end]
    torch.testing.assert_close(new, emb[: vla.action_start - 4].mean(0).expand_as(new))
    assert action_id_range(vla.tokenizer) == (vla.action_start, 16)
    # Structure tokens are single tokens.
    for t in vla.fmt.structure_tokens:
        assert len(vla.tokenizer(t, add_special_tokens=False)["input_ids"]) == 1
    # Numbers are read in two-digit chunks; action tokens stay whole.
    ids = vla.tokenizer("speed: 12.345 <action_12>", add_special_tokens=False)["input_ids"]
    pieces = [vla.tokenizer.decode([i]) for i in ids]
    assert pieces[-6:] == ["12", ".", "34", "5", " ", "<action_12>"], pieces


def test_action_tokens_geometry_initialised():
    from autovla.model.checkpoint import build_model

    cb = tiny_codebook(k=32)
    vla = build_model("tiny", cb, seed=3, action_init="geometry")
    again = build_model("tiny", cb, seed=3, action_init="geometry")
    for get in ("get_input_embeddings", "get_output_embeddings"):
        rows = getattr(vla.model, get)().weight[vla.action_start : vla.action_end]
        torch.testing.assert_close(rows, getattr(again.model, get)().weight[vla.action_start :])
        # similar motions start with similar rows: the row nearest to each token's row in
        # embedding space belongs, more often than not, to one of its 3 nearest motions
        ends = cb.end_poses.double()
        z = (ends - ends.mean(0)) / ends.std(0)
        near_motion = torch.cdist(z, z).fill_diagonal_(float("inf")).topk(3, largest=False)
        d_rows = torch.cdist(rows.double(), rows.double()).fill_diagonal_(float("inf"))
        nearest_row = d_rows.argmin(1)
        hits = (near_motion.indices == nearest_row[:, None]).any(1).float().mean()
        assert hits > 0.5, hits
    assert vla.info["action_init"] == "geometry"
    with pytest.raises(ValueError, match="action_init"):
        build_model("tiny", cb, seed=3, action_init="zeros")


def test_number_tokens_value_initialised():
    from autovla.model.checkpoint import build_model

    cb = tiny_codebook(k=32)
    vla = build_model("tiny", cb, seed=3, number_init=True)
    plain = build_model("tiny", cb, seed=3)
    emb = vla.model.get_input_embeddings().weight
    tok = vla.tokenizer

    def row(t: str) -> torch.Tensor:
        return emb[tok.convert_tokens_to_ids(t)]

    cos = torch.nn.functional.cosine_similarity
    # Nearby values start alike, distant ones do not; other rows are untouched.
    assert cos(row("8"), row("9"), dim=0) > 0.8
    assert cos(row("8"), row("9"), dim=0) > cos(row("8"), row("12"), dim=0) + 0.3
    assert cos(row("12"), row("75"), dim=0) < 0.5
    other = tok.convert_tokens_to_ids("Current")
    torch.testing.assert_close(emb[other], plain.model.get_input_embeddings().weight[other])
    assert vla.info["number_init"] is True and plain.info["number_init"] is False


def test_labels_cover_only_the_answer():
    vla = tiny_vla()
    root, samples = dataset()
    answers = [render_answer([i] * 10, s.reasoning, vla.fmt) for i, s in enumerate(samples)]
    batch = encode_batch(vla.processor, samples, root, vla.fmt, answers=answers)
    for row, answer in enumerate(answers):
        labels = batch["labels"][row]
        kept = labels[labels != IGNORE_INDEX]
        assert vla.tokenizer.decode(kept) == answer + "<|im_end|>"
        assert int(batch["action_mask"][row].sum()) == 10
        assert (batch["input_ids"][row][batch["action_mask"][row]] == vla.action_start + row).all()
    # 3 cameras x 2 temporal patches x (84/28) x (168/28) merged tokens per sample.
    assert batch["video_grid_thw"].tolist() == [[2, 6, 12]] * 9
    assert int((batch["input_ids"] == vla.model.config.video_token_id).sum()) == 3 * 3 * 36


def test_presets_are_consistent():
    for name in PRESETS:
        p = get_preset(name)
        assert sum(p.mrope_section) * 2 == p.head_dim
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("huge")


def test_qwen3b_config_matches_published_size():
    """The 3B preset's config gives Qwen2.5-VL-3B's parameter count (built on the meta device)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from autovla.model.backbone import model_config

    config = model_config(get_preset("qwen2.5-vl-3b"), tiny_vla().tokenizer)
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    params = sum(p.numel() for p in model.parameters())
    assert 3.7e9 < params < 3.8e9  # published: 3.75 B (tied embeddings)
    assert config.text_config.vocab_size == 151_936


def test_gpu_benchmark_script_imports_and_parses():
    """The GPU script cannot run here (no GPU); check it imports and parses its options."""
    import importlib.util
    import sys
    from pathlib import Path

    bench = Path(__file__).parents[1] / "benchmarks"
    sys.path.insert(0, str(bench))
    try:
        spec = importlib.util.spec_from_file_location("bench_gpu", bench / "bench_planner_gpu.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(bench))
    args = module.build_parser().parse_args(["--batch-sizes", "1,8"])
    assert args.preset == "qwen2.5-vl-3b" and args.dtype == "bfloat16"
    assert args.batch_sizes == "1,8"


def test_prompt_format_override_on_load(saved, tmp_path):
    custom = tiny_vla().fmt.model_copy(update={"name": "elsewhere", "version": 3})
    custom.save(tmp_path)
    vla = AutoVLA.from_pretrained(saved, fmt=tmp_path / "prompt_format.yaml")
    assert vla.fmt == custom
    assert AutoVLA.from_pretrained(saved).fmt.name == "autovla-v1"  # stored one by default
