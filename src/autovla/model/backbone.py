"""Qwen2.5-VL backbones: presets, a tiny random build, pretrained loading, a local tokenizer.

A preset names a backbone shape and its pixel budget. `tiny` and `small` are built from a
config with random weights and a byte-level BPE tokenizer trained here on the project's own
prompt text (no download); `qwen2.5-vl-3b` loads `Qwen/Qwen2.5-VL-3B-Instruct` from a local
directory or the hub cache when a user has it, or builds the same architecture with random
weights (for speed benchmarks).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autovla.model.corpus import tokenizer_corpus
from autovla.model.prompts import PromptFormat

# Qwen2.5-VL's special tokens, in its id order (they follow the BPE vocabulary).
QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Pre-tokenization split of Qwen2 (GPT-4 style): contractions, letters, single digits,
# punctuation runs, newlines, spaces. Written here from the published pattern's behaviour.
QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Chat template with Qwen2.5-VL's structure (system turn, user turn with vision placeholders,
# assistant header), so text rendered for the tiny model matches the real model's layout.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'text' -%}{{ item['text'] }}"
    "{%- elif item['type'] == 'image' -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif item['type'] == 'video' -%}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)
QWEN_3B_ID = "Qwen/Qwen2.5-VL-3B-Instruct"


@dataclass(frozen=True)
class Preset:
    """A backbone shape; `pixels` is min_pixels = max_pixels per video frame."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    mrope_section: tuple[int, int, int]
    vision_depth: int
    vision_hidden: int
    vision_intermediate: int
    vision_heads: int
    fullatt_blocks: tuple[int, ...]
    pixels: int
    bpe_vocab: int = 2048  # trained BPE size (random-weight builds)
    vocab_size: int | None = None  # embedding rows; None = the tokenizer's size
    pretrained: str | None = None  # hub id / directory to load when available
    tie_embeddings: bool = False
    rope_theta: float = 1_000_000.0  # Qwen2.5-VL's; see the tiny preset

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        # 224x112 frames resized to 168x84: 36 vision tokens per 4-frame camera video.
        # rope_theta 1e4: with head_dim 32 and Qwen's 1e6 almost no rotary pair turns within a
        # prompt, so a 2-layer model cannot tell which number is the speed by position.
        Preset(
            "tiny", 128, 256, 2, 4, 2, (4, 6, 6), 2, 64, 128, 4, (1,), pixels=168 * 84,
            rope_theta=10_000.0,
        ),
        # Full 224x112 frames: 64 vision tokens per camera video.
        Preset("small", 256, 768, 4, 8, 2, (4, 6, 6), 4, 128, 256, 4, (1, 3), pixels=224 * 112),
        # Qwen2.5-VL-3B-Instruct's published configuration; reference pixel budget.
        Preset(
            "qwen2.5-vl-3b", 2048, 11008, 36, 16, 2, (16, 24, 24), 32, 1280, 3420, 16,
            (7, 15, 23, 31), pixels=109_760, bpe_vocab=4096, vocab_size=151_936,
            pretrained=QWEN_3B_ID, tie_embeddings=True,
        ),
    )
}  # fmt: skip


def quiet_transformers() -> None:
    """No per-shard progress bars or info logs from transformers (CLI output stays readable)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")
    p = PRESETS[name]
    if sum(p.mrope_section) * 2 != p.head_dim:
        raise ValueError(f"preset {name}: mrope_section must sum to head_dim/2 = {p.head_dim // 2}")
    return p


# --- tokenizer -------------------------------------------------------------------------------
def train_tokenizer(
    vocab_size: int, fmt: PromptFormat, seed: int = 0, num_documents: int = 3000
) -> Any:
    """A byte-level BPE tokenizer trained on generated prompt/answer text, with Qwen's specials."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(QWEN_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(tokenizer_corpus(fmt, seed=seed, n=num_documents), trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
    )
    # Numbers read in two-digit chunks ("12.345" -> 12 . 34 5): a random model then looks
    # the current speed up from two tokens at fixed offsets instead of having to learn digit
    # arithmetic, which a model of a few hundred thousand weights does not do in minutes.
    tok.add_tokens([f"{i:02d}" for i in range(100)])
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_processor(tokenizer: Any, pixels: int) -> Any:
    """The standard Qwen2.5-VL processor around `tokenizer`, with a fixed per-frame pixel budget."""
    from transformers import Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    size = {"shortest_edge": pixels, "longest_edge": pixels}
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(size=size, cap_pixels_per_frame=False),
        chat_template=tokenizer.chat_template,
    )


def set_pixels(processor: Any, pixels: int) -> None:
    """Fix min_pixels = max_pixels on a loaded processor (images and videos)."""
    for proc in (processor.image_processor, processor.video_processor):
        proc.size = type(proc.size)(shortest_edge=pixels, longest_edge=pixels)


# --- models ----------------------------------------------------------------------------------
def model_config(preset: Preset, tokenizer: Any) -> Any:
    from transformers import Qwen2_5_VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    vocab = preset.vocab_size or len(tokenizer)
    text = {
        "vocab_size": max(vocab, len(tokenizer)),
        "hidden_size": preset.hidden,
        "intermediate_size": preset.intermediate,
        "num_hidden_layers": preset.layers,
        "num_attention_heads": preset.heads,
        "num_key_value_heads": preset.kv_heads,
        "max_position_embeddings": 32768,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": preset.rope_theta,
            "mrope_section": list(preset.mrope_section),
        },
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    vision = {
        "depth": preset.vision_depth,
        "hidden_size": preset.vision_hidden,
        "intermediate_size": preset.vision_intermediate,
        "num_heads": preset.vision_heads,
        "out_hidden_size": preset.hidden,
        "fullatt_block_indexes": list(preset.fullatt_blocks),
        "window_size": 112,
        "tokens_per_second": 2,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "patch_size": 14,
    }
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=preset.tie_embeddings,
    )


def build_random(
    preset: Preset, fmt: PromptFormat, seed: int = 0, device: Any = None, dtype: Any = None
) -> tuple[Any, Any]:
    """(model, processor) with random weights and a locally trained tokenizer.

    `device`/`dtype` create the weights there directly (a 3B model initialised on the GPU in
    bf16 instead of 15 GB of float32 on the CPU).
    """
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from autovla.model.patch_projection import use_patch_projection

    tok = train_tokenizer(preset.bpe_vocab, fmt, seed=seed)
    processor = build_processor(tok, preset.pixels)
    config = model_config(preset, tok)
    torch.manual_seed(seed)
    old_dtype = torch.get_default_dtype()
    try:
        if dtype is not None:
            torch.set_default_dtype(dtype)
        with torch.device(device or "cpu"):
            model = Qwen2_5_VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(old_dtype)
    use_patch_projection(model)
    model.eval()
    return model, processor


def resolve_pretrained(source: str | os.PathLike) -> str | None:
    """The directory or hub id to load, or None when it is not available offline."""
    p = Path(source)
    if p.is_dir() and (p / "config.json").exists():
        return str(p)
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(str(source), "config.json")
        return str(source) if isinstance(hit, str) else None
    except Exception:
        return None


def load_pretrained(
    source: str | os.PathLike, pixels: int | None = None, dtype: Any = None, device: Any = None
) -> tuple[Any, Any]:
    """(model, processor) from a hub id or a local directory (e.g. Qwen2.5-VL-3B-Instruct)."""
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from autovla.model.patch_projection import use_patch_projection

    kwargs: dict[str, Any] = {}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if device is not None:
        kwargs["device_map"] = device
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(source), **kwargs)
    use_patch_projection(model)
    processor = AutoProcessor.from_pretrained(str(source))
    if pixels is not None:
        set_pixels(processor, pixels)
    model.eval()
    return model, processor
