"""From DrivingSamples to model tensors: load the camera videos, render the chat, tokenize.

Used by SFT (with answers: labels masked to the assistant answer), RFT and the planner
(without answers: the prompt ends with the assistant header, ready for generation).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from autovla.data.schema import DrivingSample
from autovla.model.prompts import PromptFormat, SystemKind, build_messages, ordered_cameras

IGNORE_INDEX = -100
END_OF_TURN = "<|im_end|>"  # Qwen chat turn terminator; trained as the answer's last token
VIDEO_FPS = 2.0  # camera frames are 0.5 s apart


class MemoryImages:
    """Frames already decoded in memory, keyed by the names the sample's `cameras` lists.

    Pass one where a dataset root is expected (`encode_batch`, `Planner.plan`): the planning
    service decodes request images once, checks their limits, and plans from memory without
    writing them to disk.
    """

    def __init__(self, images: Mapping[str, Image.Image]):
        self.images = dict(images)

    def open_image(self, rel: str) -> Image.Image:
        if rel not in self.images:
            raise FileNotFoundError(f"no in-memory image named {rel!r}")
        return self.images[rel]

    def __repr__(self) -> str:
        return f"MemoryImages({len(self.images)} images)"


Root = str | os.PathLike | MemoryImages


def load_videos(sample: DrivingSample, root: Root) -> list[torch.Tensor]:
    """One video per camera, in the standard camera order: uint8 [frames, 3, H, W], oldest
    frame first. (The processor gives the same pixels for these as for PIL frames, and
    resizes full-size camera frames about 3x faster from tensors.)"""
    memory = root if isinstance(root, MemoryImages) else None
    root = Path(root) if memory is None else root
    videos = []
    for cam in ordered_cameras(sample):
        frames = []
        for rel in sample.cameras[cam]:
            where = rel if memory is not None else root / rel
            try:
                if memory is not None:
                    frames.append(memory.open_image(rel).convert("RGB"))
                else:
                    with Image.open(where) as im:
                        frames.append(im.convert("RGB"))
            except (OSError, ValueError) as e:
                raise FileNotFoundError(
                    f"sample {sample.id!r}, field 'cameras.{cam}': cannot read image {where}: {e}"
                ) from e
        sizes = {f.size for f in frames}
        if len(sizes) != 1:
            raise ValueError(
                f"sample {sample.id!r}, field 'cameras.{cam}': "
                f"frames differ in size {sorted(sizes)}"
            )
        video = np.stack([np.asarray(f) for f in frames])  # [T, H, W, 3]
        videos.append(torch.from_numpy(video).permute(0, 3, 1, 2))
    return videos


def render_prompt(processor: Any, messages: list[dict[str, Any]]) -> str:
    """The chat text up to and including the assistant header (vision tokens not expanded)."""
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def end_of_turn(tokenizer: Any) -> str:
    vocab = tokenizer.get_vocab()
    return END_OF_TURN if END_OF_TURN in vocab else (tokenizer.eos_token or "")


def action_id_range(tokenizer: Any) -> tuple[int, int]:
    """(first id, count) of the contiguous `<action_i>` tokens; (0, 0) when there are none."""
    first = tokenizer.convert_tokens_to_ids("<action_0>")
    if first is None or first == tokenizer.unk_token_id:
        return 0, 0
    added = tokenizer.get_added_vocab()
    count = 0
    while added.get(f"<action_{count}>") == first + count:
        count += 1
    return int(first), count


def _video_metadata(num_frames: int) -> dict[str, Any]:
    # The frames are already the 2 Hz clip: no resampling, and fps sets the temporal positions.
    return {
        "total_num_frames": num_frames,
        "fps": VIDEO_FPS,
        "frames_indices": list(range(num_frames)),
    }


def _roots(roots: Root | Sequence[Root], n: int) -> list[Path | MemoryImages]:
    if isinstance(roots, MemoryImages):
        return [roots] * n
    if isinstance(roots, (str, os.PathLike)):
        return [Path(roots)] * n
    roots = [r if isinstance(r, MemoryImages) else Path(r) for r in roots]
    if len(roots) != n:
        raise ValueError(f"got {len(roots)} dataset roots for {n} samples")
    return roots


def encode_batch(
    processor: Any,
    samples: Sequence[DrivingSample],
    roots: Root | Sequence[Root],
    fmt: PromptFormat,
    answers: Sequence[str] | None = None,
    system: SystemKind = "dual",
    padding_side: str = "right",
    prefixes: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Tokenize a batch of samples (with their videos) for Qwen2.5-VL.

    Returns input_ids, attention_mask, mm_token_type_ids, pixel_values_videos, video_grid_thw,
    second_per_grid_ts and, when `answers` are given (each answer text without the end of turn,
    e.g. from `prompts.render_answer`), `labels` (-100 everywhere but the answer and its end
    of turn token) and `action_mask` (True at `<action_i>` tokens of the answer).
    `prefixes` appends text after the assistant header instead of an answer (e.g. a forced
    mode line). Use padding_side="left" for generation and `logprobs.completion_logprobs`.
    A root is a dataset directory or a `MemoryImages` (frames decoded in memory).
    """
    if answers is not None and len(answers) != len(samples):
        raise ValueError(f"got {len(answers)} answers for {len(samples)} samples")
    if answers is not None and prefixes is not None:
        raise ValueError("pass answers (training) or prefixes (generation), not both")
    tok = processor.tokenizer
    eot = end_of_turn(tok)
    texts, videos = [], []
    for i, (sample, root) in enumerate(zip(samples, _roots(roots, len(samples)), strict=True)):
        text = render_prompt(processor, build_messages(sample, fmt, system))
        if answers is not None:
            text += answers[i] + eot
        elif prefixes is not None:
            text += prefixes[i]
        texts.append(text)
        videos.extend(load_videos(sample, root))
    old_side = tok.padding_side
    tok.padding_side = padding_side
    try:
        batch = processor(
            text=texts,
            videos=videos,
            padding=True,
            return_tensors="pt",
            video_metadata=[_video_metadata(len(v)) for v in videos],
            do_sample_frames=False,
        )
    finally:
        tok.padding_side = old_side
    out = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    if "second_per_grid_ts" in batch and not isinstance(batch["second_per_grid_ts"], torch.Tensor):
        out["second_per_grid_ts"] = torch.tensor(batch["second_per_grid_ts"], dtype=torch.float32)
    if answers is not None:
        out["labels"], out["action_mask"] = _answer_labels(tok, out, answers, eot, samples)
    return out


def _answer_labels(
    tok: Any,
    batch: dict[str, torch.Tensor],
    answers: Sequence[str],
    eot: str,
    samples: Sequence[DrivingSample],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels = input ids on the answer's tokens (the last real tokens of each row), else -100."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    labels = torch.full_like(ids, IGNORE_INDEX)
    first, count = action_id_range(tok)
    for row, answer in enumerate(answers):
        ans_ids = tok(answer + eot, add_special_tokens=False)["input_ids"]
        real = mask[row].nonzero().flatten()
        pos = real[len(real) - len(ans_ids) :]
        if ids[row, pos].tolist() != ans_ids:
            raise ValueError(
                f"sample {samples[row].id!r}: the answer tokenizes differently inside the chat "
                "than alone; the prompt format's boundaries are not token-stable"
            )
        labels[row, pos] = ids[row, pos]
    action_mask = (labels >= first) & (labels < first + count) if count else labels < -1000
    return labels, action_mask
