"""A model directory is checked before transformers reads it: missing or corrupt files and
configs that describe another model are named errors, and nothing full-size is ever built."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from autovla.cli import app
from autovla.model.checkpoint import AutoVLA, CheckpointError
from autovla.model.directory import config_parameters, safetensors_parameters
from tests.model_fixtures import (
    dataset,
    one_torch_thread,  # noqa: F401 (autouse fixture)
    tiny_vla,
)

runner = CliRunner()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("dir") / "model"
    tiny_vla().save_pretrained(d)
    return d


@pytest.fixture
def copy(saved, tmp_path):
    d = tmp_path / "m[1]"
    shutil.copytree(saved, d)
    return d


@pytest.fixture
def no_transformers(monkeypatch):
    """Fail the test if the loader reaches transformers."""
    import autovla.model.checkpoint as checkpoint

    def refuse(*args, **kwargs):
        raise AssertionError("transformers was asked to load a directory that failed its checks")

    monkeypatch.setattr(checkpoint, "load_pretrained", refuse)


def _edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_parameter_count_from_config_is_exact(saved):
    """Worked example: the tiny preset's 796,096 weights, and Qwen2.5-VL-3B's 3,754,622,976
    (the meta-device count of test_qwen3b_config_matches_published_size)."""
    from autovla.model.backbone import get_preset, model_config

    vla = tiny_vla()
    config = json.loads((saved / "config.json").read_text())
    params = sum(p.numel() for p in vla.model.parameters())
    assert params == 796_096
    assert config_parameters(config, saved / "config.json") == params
    assert safetensors_parameters(saved / "model.safetensors") == params
    big = model_config(get_preset("qwen2.5-vl-3b"), vla.tokenizer).to_dict()
    assert config_parameters(big, saved / "config.json") == 3_754_622_976


def test_missing_config_is_named_before_transformers(copy, no_transformers):
    (copy / "config.json").unlink()
    r = runner.invoke(app, ["model", "info", str(copy)])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.stderr == f"error: {copy / 'config.json'}: model config (config.json) is missing\n"
    root, _ = dataset()
    r = runner.invoke(app, ["plan", "--model", str(copy), "--data", str(root)])
    assert r.exit_code == 1 and "config.json) is missing" in r.stderr


def test_full_size_config_with_tiny_weights_is_refused(copy, no_transformers):
    """The config that once made transformers build a 23.5 GiB model: refused from sizes."""
    from autovla.model.backbone import get_preset, model_config

    big = model_config(get_preset("qwen2.5-vl-3b"), tiny_vla().tokenizer).to_dict()
    (copy / "config.json").write_text(json.dumps(big))
    with pytest.raises(CheckpointError, match="3,754,622,976 parameters but the weights hold"):
        AutoVLA.from_pretrained(copy)
    _edit_json(copy / "config.json", text_config={"vocab_size": 948})  # sizes left to defaults
    with pytest.raises(CheckpointError, match=r"text_config\.hidden_size: .*\(missing\)"):
        AutoVLA.from_pretrained(copy)
    _edit_json(copy / "config.json", model_type="llama")
    with pytest.raises(CheckpointError, match="model_type must be 'qwen2_5_vl'"):
        AutoVLA.from_pretrained(copy)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[: len(b) // 2], "truncated: the header needs"),
        (lambda b: b[:8] + b"x" * (len(b) - 8), "header is not valid JSON"),
        (lambda b: b"\xff" * 8 + b[8:], "not a safetensors file"),
        (lambda b: b[:3], "too short for a safetensors file"),
    ],
    ids=["truncated", "garbage header", "huge header length", "3 bytes"],
)
def test_corrupt_weights_are_named(copy, no_transformers, damage, message):
    weights = copy / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    with pytest.raises(CheckpointError, match=message) as e:
        AutoVLA.from_pretrained(copy)
    assert str(weights) in str(e.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"format_version": 1,\n "action_token_start": }', r"line 2, column 24: Expecting value"),
        ("[1, 2]", "must hold a JSON object, got list"),
        ('{"action_token_start": "884"}', "action_token_start: Input should be a valid integer"),
        ('{"action_token_start": 884, "codebook_file": "../cb"}', "refers to a parent"),
        ("[" * 100_000, "nested too deeply"),
        ('{"a": "\xff"}', "not UTF-8 text"),
    ],
)
def test_malformed_autovla_json_is_named(copy, no_transformers, text, message):
    (copy / "autovla.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(CheckpointError, match=message) as e:
        AutoVLA.from_pretrained(copy)
    assert str(copy / "autovla.json") in str(e.value)


def test_missing_processor_files_are_named(copy, no_transformers):
    (copy / "processor_config.json").unlink()
    with pytest.raises(CheckpointError, match=r"processor_config\.json or preprocessor_config"):
        AutoVLA.from_pretrained(copy)


def test_sharded_weights_are_checked(copy, no_transformers):
    (copy / "model.safetensors").rename(copy / "part-1.safetensors")
    index = copy / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "../part-1.safetensors"}}))
    with pytest.raises(CheckpointError, match=r"shard name '\.\./part-1\.safetensors' refers to"):
        AutoVLA.from_pretrained(copy)
    index.write_text(json.dumps({"weight_map": {"a": "part-2.safetensors"}}))
    with pytest.raises(CheckpointError, match=r"weight shard part-2\.safetensors is missing"):
        AutoVLA.from_pretrained(copy)


def test_config_tokenizer_and_processor_must_agree(copy):
    _edit_json(copy / "config.json", video_token_id=5)
    with pytest.raises(CheckpointError, match="video_token_id is 5, the tokenizer has"):
        AutoVLA.from_pretrained(copy)
    _edit_json(copy / "config.json", video_token_id=tiny_vla().model.config.video_token_id)
    proc = json.loads((copy / "processor_config.json").read_text())
    proc["video_processor"]["merge_size"] = 3
    (copy / "processor_config.json").write_text(json.dumps(proc))
    with pytest.raises(CheckpointError, match="video_processor's merge_size is 3"):
        AutoVLA.from_pretrained(copy)


def test_what_transformers_still_refuses_is_a_checkpoint_error(copy):
    (copy / "chat_template.jinja").write_text("{% for %}")
    with pytest.raises(CheckpointError, match="transformers cannot load it: TemplateSyntaxError"):
        AutoVLA.from_pretrained(copy)
