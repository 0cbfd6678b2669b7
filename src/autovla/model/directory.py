"""Check a model directory's files before transformers reads any of them.

transformers fills in what a directory lacks: without `config.json`, or with a config that
leaves out the sizes, it builds the full-size default Qwen2.5-VL (tens of GiB) and only then
finds the weights do not fit. So a directory is checked first, from its small files alone:
every required file is there, the JSON files parse, `config.json` is a Qwen2.5-VL config that
states its sizes, the safetensors headers are intact, and the model the config describes is no
larger than the weights on disk (the parameter count follows the architecture exactly). Each
problem is a `CheckpointError` naming the directory, the file and the field.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from autovla.config import short_repr, validation_message
from autovla.model.prompts import FORMAT_FILE
from autovla.paths import name_problem

INFO_FILE = "autovla.json"
CODEBOOK_FILE = "codebook.safetensors"

MAX_JSON_BYTES = 64 * 2**20  # tokenizer.json of a real Qwen2.5-VL is ~7 MB
MAX_HEADER_BYTES = 100 * 2**20  # the safetensors library's own limit
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
MODEL_TYPE = "qwen2_5_vl"
# Sizes transformers would otherwise take from its full-size defaults; generous upper bounds.
TEXT_SIZES = {
    "hidden_size": 65_536,
    "intermediate_size": 262_144,
    "num_hidden_layers": 1_024,
    "num_attention_heads": 1_024,
    "num_key_value_heads": 1_024,
    "vocab_size": 4_194_304,
}
VISION_SIZES = {
    "depth": 1_024,
    "hidden_size": 65_536,
    "intermediate_size": 262_144,
    "num_heads": 1_024,
    "out_hidden_size": 65_536,
}
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
SIZE_SLACK = 1.01  # config-implied parameters may exceed the stored ones by this factor


class CheckpointError(ValueError):
    """A model directory that cannot be used (names the directory and the problem)."""


class ModelInfo(BaseModel):
    """The fields of `autovla.json` the loader uses (others are kept as they are)."""

    model_config = ConfigDict(extra="allow")

    format_version: StrictInt = Field(default=1, ge=1)
    action_token_start: StrictInt = Field(ge=0)
    num_action_tokens: StrictInt | None = Field(default=None, ge=1)
    codebook_file: str = CODEBOOK_FILE
    codebook_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


def read_json_file(path: Path, what: str = "file") -> Any:
    """A JSON file's content, or CheckpointError naming the file and the line."""
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} is missing")
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise CheckpointError(f"{path}: {size} bytes is too large for a {what}")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: not UTF-8 text (byte offset {e.start})") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(
            f"{path}: not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}"
        ) from None
    except RecursionError:
        raise CheckpointError(f"{path}: JSON nested too deeply") from None


def read_info(path: Path) -> dict[str, Any]:
    """`autovla.json`, checked: the loader's fields have the right types, names stay inside."""
    raw = read_json_file(path, "model info")
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: must hold a JSON object, got {type(raw).__name__}")
    try:
        info = ModelInfo.model_validate(raw)
    except ValidationError as e:
        raise CheckpointError(validation_message(e, f"model info {path}")) from None
    problem = name_problem(info.codebook_file)
    if problem is not None:
        raise CheckpointError(f"{path}: field codebook_file {problem}")
    return raw


def _sizes(section: Any, limits: dict[str, int], where: str) -> dict[str, int]:
    if not isinstance(section, dict):
        raise CheckpointError(f"{where}: must be an object, got {short_repr(section)}")
    out = {}
    for key, largest in limits.items():
        v = section.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= largest:
            got = "missing" if key not in section else f"got {short_repr(v)}"
            raise CheckpointError(f"{where}.{key}: must be an integer in [1, {largest}] ({got})")
        out[key] = v
    return out


def _small_int(section: dict, key: str, default: int, where: str) -> int:
    v = section.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 1024:
        raise CheckpointError(f"{where}.{key}: must be an integer in [1, 1024], got {v!r:.60}")
    return v


def config_parameters(config: dict[str, Any], path: Path) -> int:
    """Parameters of the Qwen2.5-VL model `config.json` describes (checked, exact count)."""
    where = f"{path}: field"
    if config.get("model_type") != MODEL_TYPE:
        got = short_repr(config.get("model_type"))
        raise CheckpointError(f"{where} model_type must be {MODEL_TYPE!r}, got {got}")
    # transformers 5 nests the text sizes in text_config; older files keep them at the top
    tc = config.get("text_config", config)
    t = _sizes(tc, TEXT_SIZES, f"{where} text_config" if tc is not config else where)
    v = _sizes(config.get("vision_config"), VISION_SIZES, f"{where} vision_config")
    vc = config["vision_config"]
    h, heads, kv = t["hidden_size"], t["num_attention_heads"], t["num_key_value_heads"]
    if h % heads:
        raise CheckpointError(f"{where} text_config.hidden_size must divide by its heads")
    hd = h // heads
    tied = config.get("tie_word_embeddings", tc.get("tie_word_embeddings"))
    layer = (h + 1) * heads * hd + 2 * (h + 1) * kv * hd + heads * hd * h
    layer += 3 * h * t["intermediate_size"] + 2 * h
    text = t["vocab_size"] * h * (1 if tied else 2) + t["num_hidden_layers"] * layer + h
    vh, vi = v["hidden_size"], v["intermediate_size"]
    patch = _small_int(vc, "patch_size", 14, f"{where} vision_config")
    frames = _small_int(vc, "temporal_patch_size", 2, f"{where} vision_config")
    channels = _small_int(vc, "in_channels", 3, f"{where} vision_config")
    merge = _small_int(vc, "spatial_merge_size", 2, f"{where} vision_config")
    _check_rope(tc, hd, where)
    window = vc.get("window_size", 112)
    if not isinstance(window, int) or isinstance(window, bool) or window < patch * merge:
        raise CheckpointError(
            f"{where} vision_config.window_size must be an integer of at least patch_size x "
            f"spatial_merge_size = {patch * merge}, got {window!r:.60}"
        )
    block = 2 * vh + 4 * vh * vh + 4 * vh + 3 * vh * vi + 2 * vi + vh
    merged = vh * merge * merge
    vision = channels * frames * patch * patch * vh + v["depth"] * block + vh
    vision += merged * merged + merged + (merged + 1) * v["out_hidden_size"]
    return text + vision


def _check_rope(text: dict[str, Any], head_dim: int, where: str) -> None:
    """The multimodal rotary sections split each head's rotary half: they must sum to it."""
    for key in ("rope_parameters", "rope_scaling"):
        rope = text.get(key)
        if not isinstance(rope, dict) or "mrope_section" not in rope:
            continue
        sec = rope["mrope_section"]
        ok = isinstance(sec, list) and len(sec) == 3
        ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sec)
        if not ok or sum(sec) * 2 != head_dim:
            raise CheckpointError(
                f"{where} {key}.mrope_section must be 3 positive integers summing to "
                f"head_dim / 2 = {head_dim // 2}, got {short_repr(sec)}"
            )


# Qwen2.5-VL's vision tokens: the config's ids must be the tokenizer's.
VISION_TOKENS = {
    "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
}
# processor attribute -> vision_config field: the processor cuts frames into the model's patches
PATCHING = {
    "patch_size": "patch_size",
    "merge_size": "spatial_merge_size",
    "temporal_patch_size": "temporal_patch_size",
}


def check_loaded(model: Any, processor: Any, d: Path) -> None:
    """What only the loaded objects show: config, tokenizer and processor agree."""
    for key, token in VISION_TOKENS.items():
        want = processor.tokenizer.convert_tokens_to_ids(token)
        got = getattr(model.config, key, None)
        if got != want:
            raise CheckpointError(
                f"{d / 'config.json'}: field {key} is {got!r:.40}, the tokenizer has {token} "
                f"at id {want!r}"
            )
    vision = model.config.vision_config
    for part in ("image_processor", "video_processor"):
        proc = getattr(processor, part, None)
        for attr, field in PATCHING.items():
            got, want = getattr(proc, attr, None), getattr(vision, field, None)
            if proc is not None and got is not None and got != want:
                raise CheckpointError(
                    f"{d}: the {part}'s {attr} is {got!r:.40} but config.json "
                    f"vision_config.{field} is {want!r}"
                )


def safetensors_parameters(path: Path) -> int:
    """Elements stored in a safetensors file, from its header; the header and the file length
    are checked so a truncated or garbage file is refused before any library maps it."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: {size} bytes is too short for a safetensors file")
        n = int.from_bytes(head, "little")
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise CheckpointError(f"{path}: not a safetensors file (header length {n})")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"{path}: the safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header is not a JSON object")
    total, end = 0, 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        ok = isinstance(entry, dict) and entry.get("dtype") in DTYPE_BYTES
        shape, offsets = (entry.get("shape"), entry.get("data_offsets")) if ok else (None, None)
        ok = ok and isinstance(shape, list) and isinstance(offsets, list) and len(offsets) == 2
        ok = ok and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        ok = ok and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        if not ok or not 0 <= offsets[0] <= offsets[1]:
            raise CheckpointError(f"{path}: tensor {short_repr(name)} has a malformed entry")
        numel = math.prod(shape)
        if offsets[1] - offsets[0] != numel * DTYPE_BYTES[entry["dtype"]]:
            raise CheckpointError(f"{path}: tensor {short_repr(name)}: size and shape disagree")
        total, end = total + numel, max(end, offsets[1])
    if 8 + n + end > size:
        raise CheckpointError(
            f"{path}: truncated: the header needs {8 + n + end} bytes, the file has {size}"
        )
    return total


def weight_files(d: Path) -> list[Path]:
    """The safetensors files holding the weights (one file, or the shards of an index)."""
    if (d / WEIGHTS_FILE).is_file():
        return [d / WEIGHTS_FILE]
    if not (d / WEIGHTS_INDEX).is_file():
        raise CheckpointError(
            f"{d}: the weights are missing (no {WEIGHTS_FILE}, no {WEIGHTS_INDEX})"
        )
    index = read_json_file(d / WEIGHTS_INDEX, "weights index")
    wmap = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(wmap, dict) or not wmap:
        raise CheckpointError(f"{d / WEIGHTS_INDEX}: field weight_map must be a non-empty object")
    files = []
    for shard in sorted({str(s) for s in wmap.values()}):
        problem = name_problem(shard)
        if problem is not None:
            raise CheckpointError(f"{d / WEIGHTS_INDEX}: shard name {problem}")
        if not (d / shard).is_file():
            raise CheckpointError(f"{d}: weight shard {shard} is missing")
        files.append(d / shard)
    return files


def check_backbone_dir(d: Path) -> None:
    """A directory transformers can load as a Qwen2.5-VL model and processor, or an error."""
    config = read_json_file(d / "config.json", "model config (config.json)")
    if not isinstance(config, dict):
        raise CheckpointError(f"{d / 'config.json'}: must hold a JSON object")
    needed = config_parameters(config, d / "config.json")
    stored = sum(safetensors_parameters(f) for f in weight_files(d))
    if needed > SIZE_SLACK * stored:
        raise CheckpointError(
            f"{d / 'config.json'}: describes a model of {needed:,} parameters but the weights "
            f"hold {stored:,}; the config does not belong to these weights"
        )
    for group in (
        ("tokenizer_config.json",),
        ("tokenizer.json", "vocab.json"),
        ("processor_config.json", "preprocessor_config.json"),
    ):
        present = [name for name in group if (d / name).is_file()]
        if not present:
            raise CheckpointError(f"{d}: {' or '.join(group)} is missing (the processor)")
    for name in (
        "tokenizer_config.json", "tokenizer.json", "processor_config.json",
        "preprocessor_config.json", "generation_config.json", "special_tokens_map.json",
        "added_tokens.json", "chat_template.json",
    ):  # fmt: skip
        if (d / name).is_file() and not isinstance(read_json_file(d / name, name), dict):
            raise CheckpointError(f"{d / name}: must hold a JSON object")


def check_model_dir(d: Path, need_format: bool = True) -> dict[str, Any]:
    """An AutoVLA model directory's info, after checking every file the loader will read."""
    if not d.is_dir():
        raise CheckpointError(f"{d}: no such model directory")
    info_path = d / INFO_FILE
    if not info_path.is_file():
        raise CheckpointError(f"{d}: not an AutoVLA model directory (no {INFO_FILE})")
    info = read_info(info_path)
    check_backbone_dir(d)
    if need_format and not (d / FORMAT_FILE).is_file():
        raise CheckpointError(f"{d}: {FORMAT_FILE} is missing")
    return info
