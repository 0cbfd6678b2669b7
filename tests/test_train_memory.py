"""Training memory: float32 master weights only for what trains (a bfloat16 base stays
bfloat16 under float32 LoRA adapters, on the CPU too), and LoRA checkpoints merged while they
are written (no second model in memory), byte for byte what merging a copy first gave."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import tempfile
import weakref
from pathlib import Path

import pytest
import torch

from autovla.config import load_config
from autovla.train import model_setup as ms
from autovla.train.config import LoraConfig, SFTConfig
from autovla.train.lora_merge import LoraDelta, MergedSaver, write_safetensors
from tests.train_sft_fixtures import workspace, write_config


@functools.lru_cache(maxsize=1)
def bf16_model() -> Path:
    """The tiny test model saved in bfloat16 (what `model init` writes for the 3B preset)."""
    from autovla.model.checkpoint import AutoVLA

    out = Path(tempfile.mkdtemp(prefix="autovla-bf16-")) / "model"
    AutoVLA.from_pretrained(workspace() / "model", dtype=torch.bfloat16).save_pretrained(out)
    return out


def _lora_model(dtype: torch.dtype, r: int = 4):
    """The tiny AutoVLA in `dtype` with LoRA adapters whose B is not zero (a trained look)."""
    from autovla.model.checkpoint import AutoVLA

    vla = AutoVLA.from_pretrained(workspace() / "model", dtype=dtype)
    ms.set_trainable(vla.model, True, False)
    peft = ms.apply_lora(vla.model, LoraConfig(enabled=True, r=r, alpha=8))
    ms.master_precision(vla.model)
    g = torch.Generator().manual_seed(0)
    for name, p in vla.model.named_parameters():
        if "lora_B" in name:
            p.data = torch.randn(p.shape, generator=g)
    return vla, peft


def _files(d: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(d.iterdir())}


# --- the streaming safetensors writer ---------------------------------------------------------
def test_streamed_safetensors_are_the_librarys_bytes(tmp_path):
    from safetensors.torch import load_file, save_file

    g = torch.Generator().manual_seed(1)
    tensors = {
        "b.weight": torch.randn(3, 5, generator=g).to(torch.bfloat16),
        "a.weight": torch.randn(4, 2, generator=g),
        "a.bias": torch.randn(4, generator=g),
        "z": torch.randn(2, 2, generator=g).half(),
        "ids": torch.arange(7),
        "mask": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "empty": torch.zeros(0, 3),
        "i8": torch.tensor([-3, 4], dtype=torch.int8),
    }
    for meta in (None, {"format": "pt"}):
        save_file(tensors, str(tmp_path / "lib.safetensors"), metadata=meta)
        write_safetensors(tmp_path / "ours.safetensors", tensors, meta)
        ours = (tmp_path / "ours.safetensors").read_bytes()
        assert ours == (tmp_path / "lib.safetensors").read_bytes()
    # a transform changes what is written, not the layout
    write_safetensors(
        tmp_path / "t.safetensors", tensors, None, lambda n, t: t * 0 if n == "a.bias" else t
    )
    back = load_file(str(tmp_path / "t.safetensors"))
    assert torch.equal(back["a.bias"], torch.zeros(4)) and torch.equal(
        back["a.weight"], tensors["a.weight"]
    )


def test_lora_delta_is_pefts_formula():
    """W + (B @ A) * scaling by hand: W = 0, A = [[1, 2]], B = [[1], [3]], scaling 0.5."""
    d = LoraDelta(torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0], [3.0]]), 0.5, False)
    assert d.merged(torch.zeros(2, 2)).tolist() == [[0.5, 1.0], [1.5, 3.0]]
    # a bfloat16 weight is rounded once: 1 + 2**-9 is not a bfloat16, 1 + 2**-7 is
    w = torch.ones(1, 1, dtype=torch.bfloat16)
    one = torch.ones(1, 1)
    assert LoraDelta(one, one, 2**-9, False).merged(w).item() == 1.0
    assert LoraDelta(one, one, 2**-7, False).merged(w).item() == 1.0 + 2**-7
    assert LoraDelta(one, one, 1.0, False).merged(w).dtype == torch.bfloat16


# --- merged checkpoints --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_merged_save_is_byte_identical_to_merging_a_copy(dtype, tmp_path):
    """Every file of the model directory, weights and config included, as `merge_and_unload`
    on a deep copy wrote it; the weights stay in the base's dtype (bfloat16: half the size)."""
    vla, peft = _lora_model(dtype)
    dataclasses.replace(vla, model=MergedSaver(vla.model)).save_pretrained(tmp_path / "new")
    merged = copy.deepcopy(peft).merge_and_unload()
    dataclasses.replace(vla, model=merged).save_pretrained(tmp_path / "old")
    new, old = _files(tmp_path / "new"), _files(tmp_path / "old")
    assert new.keys() == old.keys() and all(new[k] == old[k] for k in old)
    config = json.loads(new["config.json"])
    assert config["dtype"] == str(dtype).removeprefix("torch.")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "new" / "model.safetensors"), "pt") as f:
        names = f.keys()
        assert {f.get_slice(k).get_dtype() for k in names} == {
            "F32" if dtype == torch.float32 else "BF16"
        }
    # the merge changed the targeted weights, and the adapters are still in the live model
    base = _files(workspace() / "model")["model.safetensors"]
    assert dtype != torch.float32 or new["model.safetensors"] != base
    assert any("lora_A" in n for n, _ in vla.model.named_parameters())


def test_merged_save_holds_one_merged_tensor_at_a_time(tmp_path, monkeypatch):
    """Streaming: each merged weight is gone before the next is made."""
    vla, _ = _lora_model(torch.float32)
    made: list[weakref.ref] = []
    real = LoraDelta.merged

    def tracked(self, weight):
        assert all(r() is None for r in made), "an earlier merged weight is still alive"
        out = real(self, weight)
        made.append(weakref.ref(out))
        return out

    monkeypatch.setattr(LoraDelta, "merged", tracked)
    MergedSaver(vla.model).save_pretrained(tmp_path / "m")
    assert len(made) == 2 * 4  # 2 layers x q, k, v, o


def test_lora_on_a_non_linear_layer_is_refused_when_made():
    from autovla.model.checkpoint import AutoVLA

    vla = AutoVLA.from_pretrained(workspace() / "model")
    with pytest.raises(ValueError, match=r"embed_tokens is a Embedding; LoRA is supported on"):
        ms.apply_lora(vla.model, LoraConfig(enabled=True, target_modules=["embed_tokens"]))


# --- master precision --------------------------------------------------------------------------
def _cfg(tmp_path: Path, out: str, model: Path, **sections) -> SFTConfig:
    path = write_config(tmp_path / f"{out}.yaml", tmp_path / out, **sections)
    return load_config(SFTConfig, path, [f"model.path={model}"])


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(ckpt / "model.safetensors"))


def test_a_bf16_base_stays_bf16_under_fp32_adapters_on_the_cpu(tmp_path):
    """precision auto = no autocast on the CPU: the frozen bfloat16 base computes in bfloat16,
    the adapters train in float32, and the merged checkpoint is bfloat16 again."""
    from autovla.train.loop import fit
    from autovla.train.sft import SFT

    lora = {"enabled": True, "r": 4, "alpha": 8}
    stage = SFT(_cfg(tmp_path, "r", bf16_model(), train={"max_steps": 1, "lora": lora}))
    dtypes = {(p.dtype, p.requires_grad) for p in stage.run.raw.parameters()}
    assert dtypes == {(torch.bfloat16, False), (torch.float32, True)}
    opt_dtypes = {p.dtype for g in stage.run.optimizer.param_groups for p in g["params"]}
    assert opt_dtypes == {torch.float32}
    result = fit(stage)
    assert result.steps == 1 and torch.isfinite(torch.tensor(result.train["loss"]))
    w = _weights(result.checkpoint)
    assert {v.dtype for v in w.values()} == {torch.bfloat16}
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(w[key], _weights(bf16_model())[key])  # trained and merged
    state = json.loads((result.checkpoint / "trainer" / "state.json").read_text())
    assert state["frozen_dtype"] == "bfloat16"


@pytest.mark.slow
@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_bf16_base_resumes_to_the_bit(lora, tmp_path):
    """2 steps + 1 resumed = 3 straight, with a bfloat16 base: LoRA rebuilds the bf16 base and
    loads its fp32 adapters; full fine-tuning reads the checkpoint's fp32 trained weights and
    puts the frozen vision encoder back in bfloat16."""
    from autovla.train.sft import train_sft

    sections = {"train": {"lora": {"enabled": True, "r": 4, "alpha": 8}}} if lora else {}
    train = sections.pop("train", {})

    def run(out: str, steps: int):
        return train_sft(_cfg(tmp_path, out, bf16_model(), train={**train, "max_steps": steps}))

    straight = run("a", 3)
    run("b", 2)
    resumed = run("b", 3)
    a, b = _weights(straight.checkpoint), _weights(resumed.checkpoint)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    vision = next(k for k in a if k.startswith("visual."))
    assert a[vision].dtype == torch.bfloat16
    language = a["model.layers.0.mlp.up_proj.weight"].dtype
    assert language == (torch.bfloat16 if lora else torch.float32)  # fp32 masters saved


def test_precision_fp32_keeps_even_the_frozen_weights_in_float32(tmp_path):
    from autovla.train.loop import Run

    cfg = _cfg(tmp_path, "f", bf16_model(), train={"precision": "fp32"})
    run = Run(cfg)
    try:
        assert {p.dtype for p in run.raw.parameters()} == {torch.float32}
        assert not all(p.requires_grad for p in run.raw.parameters())  # vision frozen
    finally:
        run.close()
