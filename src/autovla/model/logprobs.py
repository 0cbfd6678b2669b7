"""Per-token log-probabilities of given completions (GRPO policy and reference terms).

The prompt batch comes from `inputs.encode_batch(..., padding_side="left")` without answers;
the completions are token ids as the planner returns them (`PlanResult.completion_ids`,
which start right after the assistant header, forced mode line included).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The Qwen2_5_VLForConditionalGeneration inside a PEFT (LoRA) wrapper, or the model itself.

    LoRA layers are injected in place, so the unwrapped model still runs them.
    """
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def expand_batch(batch: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """Repeat every row (and its videos) n times, row-major: r0 x n, r1 x n, ..."""
    if n == 1:
        return batch
    rows = batch["input_ids"].shape[0]
    out = {}
    for key in ("input_ids", "attention_mask", "mm_token_type_ids", "labels", "action_mask"):
        if key in batch:
            out[key] = batch[key].repeat_interleave(n, 0)
    if "pixel_values_videos" in batch:
        grid = batch["video_grid_thw"]
        per_row = grid.shape[0] // rows
        chunks = batch["pixel_values_videos"].split(grid.prod(-1).tolist())
        order = [
            v for r in range(rows) for _ in range(n) for v in range(r * per_row, (r + 1) * per_row)
        ]
        out["pixel_values_videos"] = torch.cat([chunks[v] for v in order])
        out["video_grid_thw"] = grid[order]
        if "second_per_grid_ts" in batch:
            out["second_per_grid_ts"] = batch["second_per_grid_ts"][order]
    return out


def pad_completions(
    completion_ids: Sequence[Sequence[int]], pad_id: int = 0, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [R, L] and a float mask [R, L] (1 on real tokens)."""
    width = max(len(c) for c in completion_ids)
    ids = torch.full((len(completion_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(completion_ids), width), dtype=torch.float32)
    for i, c in enumerate(completion_ids):
        ids[i, : len(c)] = torch.as_tensor(list(c), dtype=torch.long)
        mask[i, : len(c)] = 1.0
    return ids.to(device), mask.to(device)


def completion_logprobs(
    model: torch.nn.Module,
    batch_inputs: dict[str, torch.Tensor],
    completion_ids: Sequence[Sequence[int]],
    pad_id: int = 0,
) -> torch.Tensor:
    """log p(token) of each completion token given the prompt and the tokens before it.

    Returns [R, L] (R completions, L the longest); 0 at padding (see `pad_completions` for
    the mask). `batch_inputs` may hold R rows or R/n prompts (each then repeated n times,
    matching the planner's sample-major order). Runs with gradients when enabled.
    """
    logits, comp, cmask = completion_logits(model, batch_inputs, completion_ids, pad_id)
    logp = torch.log_softmax(logits.float(), -1).gather(-1, comp[..., None]).squeeze(-1)
    return logp * cmask


def completion_logits(
    model: torch.nn.Module,
    batch_inputs: dict[str, torch.Tensor],
    completion_ids: Sequence[Sequence[int]],
    pad_id: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits [R, L, V] predicting each completion token, padded ids [R, L], mask [R, L])."""
    model = unwrap(model)
    device = next(model.parameters()).device
    rows = len(completion_ids)
    prompts = batch_inputs["input_ids"].shape[0]
    if rows % prompts:
        raise ValueError(f"{rows} completions do not divide into {prompts} prompts")
    batch = expand_batch(batch_inputs, rows // prompts)
    batch = {k: v.to(device) for k, v in batch.items()}
    comp, cmask = pad_completions(completion_ids, pad_id, device)
    width = batch["input_ids"].shape[1]
    input_ids = torch.cat([batch["input_ids"], comp], 1)
    attention = torch.cat([batch["attention_mask"], cmask.to(batch["attention_mask"].dtype)], 1)
    mm_types = torch.cat([batch["mm_token_type_ids"], torch.zeros_like(comp)], 1)
    positions, _ = model.model.get_rope_index(
        input_ids,
        mm_types,
        video_grid_thw=batch.get("video_grid_thw"),
        second_per_grid_ts=batch.get("second_per_grid_ts"),
        attention_mask=attention,
    )
    pixels = batch.get("pixel_values_videos")
    out = model.model(
        input_ids=input_ids,
        attention_mask=attention,
        position_ids=positions,
        pixel_values_videos=pixels.to(model.dtype) if pixels is not None else None,
        video_grid_thw=batch.get("video_grid_thw"),
        use_cache=False,
    )
    # Hidden state at t predicts token t+1: the completion's tokens are predicted from
    # positions width-1 ... width+L-2.
    hidden = out.last_hidden_state[:, width - 1 : width - 1 + comp.shape[1]]
    return model.lm_head(hidden), comp, cmask
