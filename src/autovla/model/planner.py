"""The planner: batched, KV-cached, constrained decoding from samples to trajectories.

Per row the decoder walks through phases:

    choose  -> the model picks fast or slow at the first token where the two mode lines differ
    reason  -> (slow) free text, no action tokens, until the think block closes (or a cap)
    actions -> exactly 10 tokens, only <action_i> allowed
    done    -> the closing text is appended without running the model

Greedy action tokens are either the most likely token ("argmax") or, with
`action_choice="expected"`, the token whose end contour is nearest the probability-weighted
mean end contour of the tokens in the top-p nucleus: when the model hesitates between
similar motions (9 or 11 m/s), the plan takes the middle one rather than a coin flip between
them, which is what a squared-error metric rewards. Sampling (temperature > 0) is unchanged.

Text that is fixed once the mode is known (the rest of the mode line, the think close and the
answer opening) is fed in one forward pass. A forced mode pre-fills the mode line in the
prompt. Rows of a batch advance together; when they feed different numbers of tokens, the
shorter ones are padded at the end and masked, with explicit mrope positions per row.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from autovla.data.schema import FUTURE_STEPS, DrivingSample
from autovla.model.checkpoint import AutoVLA
from autovla.model.inputs import encode_batch, end_of_turn
from autovla.model.logprobs import unwrap
from autovla.model.prompts import Mode, SystemKind, parse_answer
from autovla.model.sampling import choose_tokens, make_generator, nucleus

PlanMode = Literal["auto", "fast", "slow"]
ActionChoice = Literal["argmax", "expected"]


@dataclass
class PlanResult:
    """One planned trajectory and how it was produced."""

    sample_id: str
    trajectory: np.ndarray  # (10, 3) x, y, heading in the ego frame
    action_ids: list[int]  # codebook indices
    reasoning: str | None
    mode: Mode
    text: str  # the whole answer (without the end-of-turn token)
    num_generated_tokens: int  # tokens chosen by the model (forced text not counted)
    timings: dict[str, float]  # seconds for the whole batch: vision, prefill, decode, total
    completion_ids: list[int] = field(repr=False)  # answer token ids incl. end of turn
    sampled_mask: list[bool] = field(repr=False)  # True where the model chose the token
    # log p(token) under the model (unmasked, temperature 1) at sampled tokens, 0.0 at forced
    # ones; only with plan(..., return_logprobs=True).
    logprobs: list[float] | None = field(default=None, repr=False)


@dataclass
class _Row:
    phase: str
    mode: Mode | None
    completion: list[int] = field(default_factory=list)
    sampled: list[bool] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)
    reasoning_ids: list[int] = field(default_factory=list)
    actions: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    last_logprob: float = 0.0

    def feed(self, ids: Sequence[int], sampled_first: bool) -> None:
        self.pending = list(ids)
        self.completion += self.pending
        self.sampled += [sampled_first] + [False] * (len(self.pending) - 1)
        self.logprobs += [self.last_logprob] + [0.0] * (len(self.pending) - 1)


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"] if text else []


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Planner:
    """Plans with an AutoVLA model; see the module docstring for the decoding scheme."""

    def __init__(
        self,
        vla: AutoVLA,
        system: SystemKind | None = None,
        max_reasoning_tokens: int | None = None,
        action_choice: ActionChoice = "argmax",
        action_top_p: float = 0.9,
    ):
        if action_choice not in ("argmax", "expected"):
            raise ValueError(f"action_choice must be argmax or expected, got {action_choice!r}")
        if not 0.0 < action_top_p <= 1.0:
            raise ValueError(f"action_top_p must be in (0, 1], got {action_top_p}")
        self.vla = vla
        self.action_choice: ActionChoice = action_choice
        self.action_top_p = action_top_p
        self._ends: torch.Tensor | None = None  # token end contours on the decoding device
        self._record = False
        self.system: SystemKind = system or vla.info.get("system", "dual")
        fmt, tok = vla.fmt, vla.tokenizer
        self.max_reasoning_tokens = max_reasoning_tokens or fmt.max_reasoning_tokens
        self.fast_ids = _ids(tok, fmt.fast_marker)
        self.slow_ids = _ids(tok, fmt.slow_marker)
        c = 0
        while c < min(len(self.fast_ids), len(self.slow_ids)) and (
            self.fast_ids[c] == self.slow_ids[c]
        ):
            c += 1
        if c == min(len(self.fast_ids), len(self.slow_ids)):
            raise ValueError("prompt format: one mode line is a token prefix of the other")
        self.common = c
        self.close_text = fmt.think_close + fmt.action_open
        self.close_ids = _ids(tok, self.close_text)
        self.eot_id = tok.convert_tokens_to_ids(end_of_turn(tok))
        self.closing_ids = [*_ids(tok, fmt.action_close), self.eot_id]
        marker = fmt.think_close.strip()
        self.close_marker = marker
        added = tok.get_added_vocab()
        self.close_token = added.get(marker) if marker in added else None
        vocab_rows = vla.model.get_output_embeddings().weight.shape[0]
        self.action_allowed = torch.zeros(vocab_rows, dtype=torch.bool)
        self.action_allowed[vla.action_start : vla.action_end] = True
        self.reason_allowed = torch.zeros(vocab_rows, dtype=torch.bool)
        self.reason_allowed[: len(tok)] = True
        self.reason_allowed[vla.action_start : vla.action_end] = False
        banned = [i for i in tok.all_special_ids if i is not None]
        banned += [v for k, v in added.items() if k.startswith("<|") or k in fmt.structure_tokens]
        self.reason_allowed[banned] = False
        if self.close_token is not None:
            self.reason_allowed[self.close_token] = True

    # --- public --------------------------------------------------------------------------
    @torch.inference_mode()
    def plan(
        self,
        samples: Sequence[DrivingSample],
        roots: str | os.PathLike | Sequence[str | os.PathLike],
        mode: PlanMode = "auto",
        num_samples: int = 1,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        return_logprobs: bool = False,
    ) -> list[PlanResult]:
        """Plan every sample; results are sample-major (num_samples per sample, in order)."""
        if mode not in ("auto", "fast", "slow"):
            raise ValueError(f"mode must be auto, fast or slow, got {mode!r}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        vla, model = self.vla, unwrap(self.vla.model)
        device = vla.device
        t0 = time.perf_counter()
        prefix = {
            "auto": self.fast_ids[: self.common],
            "fast": self.fast_ids + self.close_ids,
            "slow": self.slow_ids,
        }[mode]
        batch = encode_batch(
            vla.processor,
            [s.without_answer() for s in samples],
            roots,
            vla.fmt,
            system=self.system,
            padding_side="left",
        )
        batch = _append_tokens(batch, prefix)
        batch = {k: v.to(device) for k, v in batch.items()}
        _sync(device)
        t_inputs = time.perf_counter()

        video = model.model.get_video_features(
            batch["pixel_values_videos"].to(model.dtype), batch["video_grid_thw"], return_dict=True
        )
        _sync(device)
        t_vision = time.perf_counter()

        positions, _ = model.model.get_rope_index(
            batch["input_ids"],
            batch["mm_token_type_ids"],
            video_grid_thw=batch["video_grid_thw"],
            second_per_grid_ts=batch.get("second_per_grid_ts"),
            attention_mask=batch["attention_mask"],
        )
        out = model.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=positions,
            use_cache=True,
            mm_encoder_outputs={"video": video},
        )
        cache = out.past_key_values
        logits = model.lm_head(out.last_hidden_state[:, -1])
        next_pos = positions[0, :, -1] + 1
        attention = batch["attention_mask"]
        if num_samples > 1:
            cache.batch_repeat_interleave(num_samples)
            logits = logits.repeat_interleave(num_samples, 0)
            next_pos = next_pos.repeat_interleave(num_samples, 0)
            attention = attention.repeat_interleave(num_samples, 0)
        _sync(device)
        t_prefill = time.perf_counter()

        start_phase = {"auto": "choose", "fast": "actions", "slow": "reason"}[mode]
        rows = [
            _Row(
                start_phase,
                None if mode == "auto" else mode,
                list(prefix),
                [False] * len(prefix),
                logprobs=[0.0] * len(prefix),
            )
            for _ in range(len(samples) * num_samples)
        ]
        self._record = return_logprobs
        gen = make_generator(seed, device)
        allowed = self._allowed_masks(device)
        while True:
            self._decide(rows, logits, allowed, temperature, top_p, gen)
            if not any(r.pending for r in rows):
                break
            logits, next_pos, attention = self._step(rows, cache, next_pos, attention)
        _sync(device)
        t_end = time.perf_counter()
        timings = {
            "inputs": t_inputs - t0,
            "vision": t_vision - t_inputs,
            "prefill": t_prefill - t_vision,
            "decode": t_end - t_prefill,
            "total": t_end - t0,
        }
        return self._results(samples, num_samples, rows, timings)

    # --- decoding ------------------------------------------------------------------------
    def _allowed_masks(self, device: torch.device) -> dict[str, torch.Tensor]:
        choose = torch.zeros_like(self.action_allowed)
        choose[[self.fast_ids[self.common], self.slow_ids[self.common]]] = True
        return {
            "choose": choose.to(device),
            "reason": self.reason_allowed.to(device),
            "actions": self.action_allowed.to(device),
        }

    def _decide(self, rows, logits, allowed, temperature, top_p, gen) -> None:
        """Choose each active row's next token and queue what it feeds next."""
        phase_mask = torch.stack(
            [allowed.get(r.phase, allowed["actions"]) for r in rows]  # done rows: any valid row
        )
        chosen_t = choose_tokens(logits, phase_mask, temperature, top_p, gen)
        if temperature <= 0 and self.action_choice == "expected":
            act = [i for i, r in enumerate(rows) if r.phase == "actions"]
            if act:
                chosen_t[act] = self._expected_actions(logits[act])
        chosen = chosen_t.tolist()
        if self._record:
            lp = torch.log_softmax(logits.float(), -1).gather(-1, chosen_t[:, None])[:, 0]
            for row, v in zip(rows, lp.tolist(), strict=True):
                row.last_logprob = v
        for row, tok_id in zip(rows, chosen, strict=True):
            row.pending = []
            if row.phase == "choose":
                if tok_id == self.fast_ids[self.common]:
                    row.mode, row.phase = "fast", "actions"
                    row.feed(self.fast_ids[self.common :] + self.close_ids, True)
                else:
                    row.mode, row.phase = "slow", "reason"
                    row.feed(self.slow_ids[self.common :], True)
            elif row.phase == "reason":
                self._reason_step(row, tok_id)
            elif row.phase == "actions":
                row.actions.append(tok_id)
                if len(row.actions) == FUTURE_STEPS:
                    row.phase = "done"
                    row.feed([tok_id, *self.closing_ids], True)
                    row.pending = []  # nothing follows: no need to run the model on it
                else:
                    row.feed([tok_id], True)

    def _expected_actions(self, logits: torch.Tensor) -> torch.Tensor:
        """Token ids whose end contour is nearest the nucleus-weighted mean end contour."""
        vla = self.vla
        probs = torch.softmax(logits[:, vla.action_start : vla.action_end].float(), -1)
        probs = nucleus(probs, self.action_top_p)
        probs = probs / probs.sum(-1, keepdim=True)
        ends = self._token_ends(logits.device)  # (K, 4, 2)
        mean = torch.einsum("rk,kcd->rcd", probs, ends)
        dist = (ends[None] - mean[:, None]).norm(dim=-1).sum(-1)  # (R, K): sum of corner gaps
        return dist.argmin(-1) + vla.action_start

    def _token_ends(self, device: torch.device) -> torch.Tensor:
        if self._ends is None or self._ends.device != device:
            self._ends = self.vla.codebook.contours[:, -1].to(device=device, dtype=torch.float32)
        return self._ends

    def _reason_step(self, row: _Row, tok_id: int) -> None:
        tok = self.vla.tokenizer
        row.reasoning_ids.append(tok_id)
        if self.close_token is not None and tok_id == self.close_token:
            row.phase = "actions"
            row.feed([tok_id, *self.close_ids[1:]], True)
            return
        if self.close_token is None:
            text = tok.decode(row.reasoning_ids[-8:], skip_special_tokens=False)
            cut = text.find(self.close_marker)
            if cut >= 0:  # plain-text markup: finish the close text from where the model is
                done = text[cut:]
                rest = self.close_text[self.close_text.find(self.close_marker) :]
                rest = (
                    rest[len(done) :] if rest.startswith(done) else rest[len(self.close_marker) :]
                )
                row.phase = "actions"
                row.feed([tok_id, *_ids(tok, rest)], True)
                return
        if len(row.reasoning_ids) >= self.max_reasoning_tokens:
            text = tok.decode(row.reasoning_ids, skip_special_tokens=False)
            close = ("" if text.endswith("\n") else "\n") + self.close_text
            row.phase = "actions"
            row.feed([tok_id, *_ids(tok, close)], True)
            return
        row.feed([tok_id], True)

    def _step(self, rows, cache, next_pos, attention):
        """Feed every row's pending tokens in one forward pass (ragged rows padded, masked)."""
        model = unwrap(self.vla.model)
        device = attention.device
        lens = torch.tensor([len(r.pending) for r in rows])
        width = int(lens.max())
        pad_id = self.vla.tokenizer.pad_token_id or 0
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        new_mask = torch.arange(width)[None, :] < lens[:, None]
        for i, r in enumerate(rows):
            if r.pending:
                ids[i, : len(r.pending)] = torch.tensor(r.pending)
        ids, new_mask, lens_d = ids.to(device), new_mask.to(device), lens.to(device)
        pos = next_pos[:, None] + torch.arange(width, device=device)[None, :]
        position_ids = pos[None].expand(3, -1, -1)
        attention = torch.cat([attention, new_mask.to(attention.dtype)], dim=1)
        out = model.model(
            input_ids=ids,
            attention_mask=attention,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        )
        last = (lens_d - 1).clamp(min=0)
        hidden = out.last_hidden_state[torch.arange(len(rows), device=device), last]
        return model.lm_head(hidden), next_pos + lens_d, attention

    # --- results ---------------------------------------------------------------------------
    def _results(self, samples, num_samples, rows, timings) -> list[PlanResult]:
        vla, tok = self.vla, self.vla.tokenizer
        codes = torch.tensor([vla.action_ids_to_tokens(r.actions) for r in rows])
        trajs = vla.codebook.decode(codes).detach().cpu().numpy().astype(np.float64)
        results = []
        for i, row in enumerate(rows):
            body = row.completion[:-1] if row.completion[-1:] == [self.eot_id] else row.completion
            text = tok.decode(body, skip_special_tokens=False)
            _, reasoning, _ = parse_answer(text, vla.fmt)
            results.append(
                PlanResult(
                    sample_id=samples[i // num_samples].id,
                    trajectory=trajs[i],
                    action_ids=codes[i].tolist(),
                    reasoning=reasoning if row.mode == "slow" else None,
                    mode=row.mode or "fast",
                    text=text,
                    num_generated_tokens=int(sum(row.sampled)),
                    timings=dict(timings),
                    completion_ids=list(row.completion),
                    sampled_mask=list(row.sampled),
                    logprobs=list(row.logprobs) if self._record else None,
                )
            )
        return results


def _append_tokens(batch: dict[str, torch.Tensor], ids: list[int]) -> dict[str, torch.Tensor]:
    """Append the same token ids to every (left-padded) row of an encoded batch."""
    if not ids:
        return batch
    out = dict(batch)
    n = batch["input_ids"].shape[0]
    extra = torch.tensor(ids, dtype=batch["input_ids"].dtype)[None].expand(n, -1)
    out["input_ids"] = torch.cat([batch["input_ids"], extra], 1)
    ones = torch.ones_like(extra, dtype=batch["attention_mask"].dtype)
    out["attention_mask"] = torch.cat([batch["attention_mask"], ones], 1)
    if "mm_token_type_ids" in batch:
        zeros = torch.zeros_like(extra, dtype=batch["mm_token_type_ids"].dtype)
        out["mm_token_type_ids"] = torch.cat([batch["mm_token_type_ids"], zeros], 1)
    return out
