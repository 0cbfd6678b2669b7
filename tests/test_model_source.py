"""Where a training run's model comes from: recipes, `model.path` overrides, dtypes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from autovla.cli import app
from autovla.config import ConfigError, load_config
from autovla.model.checkpoint import AutoVLA, CheckpointError
from autovla.train.config import ModelSource, SFTConfig
from autovla.train.model_setup import CodebookMismatchError, load_vla
from autovla.train.rft_config import RFTConfig
from tests.model_fixtures import tiny_codebook

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(scope="module")
def codebook_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cb") / "codebook.safetensors"
    tiny_codebook().save(path)
    return path


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory) -> Path:
    """A pretrained-style Qwen2.5-VL directory (weights + processor, no autovla.json)."""
    from autovla.model.backbone import build_random, get_preset
    from autovla.model.prompts import load_format

    model, processor = build_random(get_preset("tiny"), load_format(), seed=3)
    out = tmp_path_factory.mktemp("qwen")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def test_3b_recipes_take_a_model_path_override():
    sft = ROOT / "configs" / "qwen2.5-vl-3b-sft.yaml"
    cfg = load_config(SFTConfig, sft, ["model.path=/ckpt/Qwen2.5-VL-3B-Instruct"])
    assert cfg.model.path == "/ckpt/Qwen2.5-VL-3B-Instruct"
    assert cfg.model.codebook == "data/codebook.safetensors"  # given once, in the recipe
    assert load_config(SFTConfig, sft).model.preset == "qwen2.5-vl-3b"
    rft = load_config(RFTConfig, ROOT / "configs" / "qwen2.5-vl-3b-rft.yaml")
    assert rft.model.path and rft.model.preset is None


def test_model_source_needs_a_codebook_to_build():
    with pytest.raises(ValueError, match=r"model\.codebook"):
        ModelSource(preset="tiny")
    with pytest.raises(ValueError, match=r"model\.path"):
        ModelSource()
    ModelSource(path="some/dir")  # an AutoVLA directory needs nothing else
    ModelSource(path="some/dir", preset="tiny", codebook="cb")  # path wins; preset: pixels
    with pytest.raises(ConfigError, match=r"model\.codebook"):
        load_config(SFTConfig, None, ["model.preset=tiny", "data.datasets=[{path: d}]"])


def test_pretrained_directory_builds_a_fresh_model(qwen_dir, codebook_file):
    vla = load_vla(ModelSource(path=str(qwen_dir), preset="tiny", codebook=str(codebook_file)))
    assert vla.info["base_model"] == str(qwen_dir)
    assert vla.num_actions == tiny_codebook().size
    from autovla.model.backbone import build_random, get_preset
    from autovla.model.prompts import load_format

    original, _ = build_random(get_preset("tiny"), load_format(), seed=3)
    torch.testing.assert_close(  # the pretrained weights were loaded, not fresh random ones
        vla.model.model.language_model.layers[0].mlp.up_proj.weight,
        original.model.language_model.layers[0].mlp.up_proj.weight,
    )
    with pytest.raises(ValueError, match="not an AutoVLA directory"):
        load_vla(ModelSource(path=str(qwen_dir)))
    missing = qwen_dir / "nope"
    for src in (
        ModelSource(path=str(missing), codebook=str(codebook_file)),
        ModelSource(path=str(missing)),
    ):
        with pytest.raises(CheckpointError, match=rf"model\.path {missing}: no such directory"):
            load_vla(src)


def test_published_preset_without_its_weights_is_an_error_unless_random(tmp_path, monkeypatch):
    """qwen2.5-vl-3b without a downloaded copy: an error naming the keys to set, never a
    silent random-weight build (model.random_weights opts in)."""
    from autovla.train import model_setup

    monkeypatch.setattr("autovla.model.backbone.resolve_pretrained", lambda name: None)
    src = ModelSource(preset="qwen2.5-vl-3b", codebook="cb.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.path=.*model\.random_weights=true"):
        model_setup.check_weights_available(src, "qwen2.5-vl-3b")
    opted = ModelSource(preset="qwen2.5-vl-3b", codebook="cb.safetensors", random_weights=True)
    model_setup.check_weights_available(opted, "qwen2.5-vl-3b")  # no error
    with pytest.raises(ValueError, match="random_weights"):
        ModelSource(path="some/dir", random_weights=True)


def test_autovla_directory_wins_over_the_preset(tmp_path, codebook_file):
    out = tmp_path / "m"
    res = runner.invoke(
        app, ["model", "init", "--codebook", str(codebook_file), "--out", str(out), "--seed", "5"]
    )
    assert res.exit_code == 0, res.output
    vla = load_vla(ModelSource(path=str(out), preset="small", codebook=str(codebook_file)))
    assert vla.info["preset"] == "tiny"  # the directory's model, not a fresh "small"
    other = tmp_path / "other.safetensors"
    tiny_codebook(k=32).save(other)
    with pytest.raises(CodebookMismatchError):
        load_vla(ModelSource(path=str(out), codebook=str(other)))


@pytest.mark.parametrize("dtype", ["auto", "bfloat16"])
def test_model_init_dtype(tmp_path, codebook_file, dtype):
    out = tmp_path / dtype
    args = ["model", "init", "--codebook", str(codebook_file), "--out", str(out)]
    res = runner.invoke(app, [*args, "--dtype", dtype])
    assert res.exit_code == 0, res.output
    want = torch.float32 if dtype == "auto" else torch.bfloat16  # auto: float32 for tiny
    assert json.loads((out / "config.json").read_text())["dtype"] == str(want).split(".")[1]
    vla = AutoVLA.from_pretrained(out)
    assert vla.model.dtype == want
    res = runner.invoke(app, [*args[:-1], str(tmp_path / "x"), "--dtype", "float16"])
    assert res.exit_code == 1 and "--dtype must be" in res.output


def test_bfloat16_build_keeps_float32_rotary_frequencies():
    """Weights are created in bfloat16; the rotary inverse frequencies stay float32, as in a
    model loaded from disk (a bfloat16 build once differed from its own reload)."""
    from autovla.model.checkpoint import build_model

    vla = build_model("tiny", tiny_codebook(), dtype=torch.bfloat16)
    assert {p.dtype for p in vla.model.parameters()} == {torch.bfloat16}
    for name, buf in vla.model.named_buffers():
        if name.endswith("inv_freq"):
            assert buf.dtype == torch.float32, name


def test_tied_embeddings_stay_tied_through_the_action_token_resize(tmp_path):
    """Qwen2.5-VL-3B ties its input and output embeddings, and the real tokenizer plus 2048
    action tokens outgrows its 151,936 rows: the resize must keep them tied, and so must
    saving and loading (a tiny tied preset whose rows the actions outgrow)."""
    import dataclasses

    from autovla.model.backbone import get_preset
    from autovla.model.checkpoint import build_model

    preset = dataclasses.replace(get_preset("tiny"), name="tiny-tied", tie_embeddings=True)
    vla = build_model(preset, tiny_codebook(), seed=0)
    emb = vla.model.get_input_embeddings().weight
    assert vla.model.get_output_embeddings().weight.data_ptr() == emb.data_ptr()
    assert emb.shape[0] == len(vla.tokenizer) == vla.action_end  # resized to the new tokens
    torch.testing.assert_close(emb[vla.action_start], emb[vla.action_end - 1])  # mean rows
    vla.save_pretrained(tmp_path / "m")
    again = AutoVLA.from_pretrained(tmp_path / "m")
    e2 = again.model.get_input_embeddings().weight
    assert again.model.get_output_embeddings().weight.data_ptr() == e2.data_ptr()
    assert torch.equal(e2, emb)
