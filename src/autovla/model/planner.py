"""The planner: batched, KV-cached, constrained decoding from samples to trajectories.

Per row the decoder walks through phases:

    choose  -> the model picks fast or slow at the first token where the two mode lines differ
    reason  -> (slow) free text, no action tokens, until the think block closes (or a cap)
    actions -> exactly 10 tokens, only <action_i> allowed
    done    -> the closing text is appended without running the model

A prompt format that answers with text waypoints (`answer_kind: waypoints`, the paper's
ablation) has a `waypoints` phase instead of `actions`: only tokens made of the characters the
waypoints need (digits, sign, point, comma, brackets, space) and the first token of the answer
close are allowed; the phase ends when the model writes the close, when the tenth point is
closed, or at the format's `max_waypoint_tokens`. The text is then parsed into 10 (x, y)
positions and the headings follow the path (`geometry.headings_from_path`). Text that does not
parse is a failure, reported in `PlanResult.parse_error`, and its trajectory is standing still
at the origin: evaluation scores it like any plan (and counts it), never drops it.

Greedy action tokens are either the most likely token ("argmax") or, with
`action_choice="expected"`, the token whose end contour is nearest the probability-weighted
mean end contour of the tokens in the top-p nucleus: when the model hesitates between
similar motions (9 or 11 m/s), the plan takes the middle one rather than a coin flip between
them, which is what a squared-error metric rewards. Sampling (temperature > 0) is unchanged.

Text that is fixed once the mode is known (the rest of the mode line, the think close and the
answer opening) is fed in one forward pass. A forced mode pre-fills the mode line in the
prompt. Rows of a batch advance together: at every step each row that is still writing
chooses one token.

Two decoding paths give the same tokens (greedy, and sampling with the same seed):

* "reference": a growing dynamic key/value cache and one forward per step for all rows;
  rows feeding different numbers of tokens are padded at the end and masked.
* "fast" (`autovla.model.decoding`): a cache preallocated for the prompt and the longest
  answer, one column range per row, a per-token step of fixed shapes (compilable with
  `torch.compile`); the phase masks are built on the device once per phase change, finished
  rows leave the active set, forced text is fed only where a phase changes (mode chosen,
  reasoning closed), and while every row is writing action tokens the host does not wait for
  the device at all (the tokens are read once the ten actions are done). While a row reasons
  the host reads each step's tokens after queuing the next forward, so the device does not wait
  for it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from autovla.data.schema import FUTURE_STEPS, DrivingSample
from autovla.model.checkpoint import AutoVLA
from autovla.model.decoding import SUPPORTED_ATTENTION, StaticDecoder, cache_kwarg, prompt_embeds
from autovla.model.inputs import encode_batch, end_of_turn
from autovla.model.logprobs import unwrap
from autovla.model.prompts import WAYPOINT_CHARS, Mode, SystemKind, parse_answer, parse_waypoints
from autovla.model.sampling import choose_tokens, make_generator, nucleus

log = logging.getLogger(__name__)

PlanMode = Literal["auto", "fast", "slow"]
ActionChoice = Literal["argmax", "expected"]
Decoding = Literal["auto", "fast", "reference"]
DECODINGS: tuple[str, ...] = ("auto", "fast", "reference")


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
    # The reasoning reached the planner's max_reasoning_tokens and was closed by the planner.
    reasoning_capped: bool = False
    # Waypoint formats: why the answer's waypoint text could not be read (the trajectory is
    # then standing still); None when it parsed (and always for action tokens).
    parse_error: str | None = None


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
    capped: bool = False
    answer_ids: list[int] = field(default_factory=list)  # waypoint text the model wrote
    points: int = 0  # waypoints closed so far (")" written)
    answer_capped: bool = False

    def feed(self, ids: Sequence[int], sampled_first: bool) -> None:
        self.pending = list(ids)
        self.completion += self.pending
        self.sampled += [sampled_first] + [False] * (len(self.pending) - 1)
        self.logprobs += [self.last_logprob] + [0.0] * (len(self.pending) - 1)


@dataclass
class _Choice:
    """How tokens are chosen in one `plan` call."""

    allowed: dict[str, torch.Tensor]  # phase -> [V] bool, on the device
    temperature: float
    top_p: float
    gen: torch.Generator
    record: bool  # keep log-probabilities


class _Readback:
    """Chosen tokens (and log-probs) on their way to the host: on a GPU the copy is queued
    now and waited for in `get`, after the next forward has been queued behind it."""

    def __init__(self, chosen: torch.Tensor, logprob: torch.Tensor | None):
        self.event = None
        if chosen.device.type == "cuda":
            chosen = chosen.to("cpu", non_blocking=True)
            logprob = None if logprob is None else logprob.to("cpu", non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        self.chosen, self.logprob = chosen, logprob

    def get(self) -> tuple[list[int], list[float] | None]:
        if self.event is not None:
            self.event.synchronize()
        return self.chosen.tolist(), None if self.logprob is None else self.logprob.tolist()


class _PhaseTensors:
    """Per combination of row phases, built once on the device: the [R, V] allowed ids of
    every row and the indices of the rows writing action tokens."""

    def __init__(self, allowed: dict[str, torch.Tensor]):
        self.allowed = allowed
        self._cache: dict[tuple[str, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, phases: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        if phases not in self._cache:
            allowed = self.allowed
            mask = torch.stack([allowed.get(p, allowed["actions"]) for p in phases])  # done: any
            act = [i for i, p in enumerate(phases) if p == "actions"]
            self._cache[phases] = mask, torch.tensor(act, dtype=torch.long, device=mask.device)
        return self._cache[phases]


def _output_cache(out: Any) -> Any:
    cache = getattr(out, "cache", None)  # transformers >= 5.2x; older: past_key_values
    return cache if cache is not None else out.past_key_values


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
        decoding: Decoding = "auto",
        compile: bool = False,
    ):
        """`decoding`: "fast" (static cache), "reference" (dynamic cache) or "auto" (fast where
        the model supports it: sdpa or eager attention). `compile` compiles the fast path's
        per-token step with torch.compile (mode "reduce-overhead": CUDA graphs on a GPU); the
        first plans then pay the compilation."""
        if action_choice not in ("argmax", "expected"):
            raise ValueError(f"action_choice must be argmax or expected, got {action_choice!r}")
        if not 0.0 < action_top_p <= 1.0:
            raise ValueError(f"action_top_p must be in (0, 1], got {action_top_p}")
        if decoding not in DECODINGS:
            raise ValueError(f"decoding must be one of {', '.join(DECODINGS)}, got {decoding!r}")
        self.vla = vla
        self.action_choice: ActionChoice = action_choice
        self.action_top_p = action_top_p
        self._ends: torch.Tensor | None = None  # token end contours on the decoding device
        attention = getattr(
            unwrap(vla.model).config.get_text_config(), "_attn_implementation", None
        )
        fast_ok = (attention or "eager") in SUPPORTED_ATTENTION
        if decoding == "fast" and not fast_ok:
            raise ValueError(
                f"decoding='fast' needs sdpa or eager attention, the model uses {attention!r}"
            )
        self.decoding: Literal["fast", "reference"] = (
            "fast" if decoding == "fast" or (decoding == "auto" and fast_ok) else "reference"
        )
        self.compile = compile
        self._decoder: StaticDecoder | None = None  # kept between calls when compiled
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
        self.waypoints = fmt.answer_kind == "waypoints"
        self.answer_phase = "waypoints" if self.waypoints else "actions"
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
        answer_len = FUTURE_STEPS
        if self.waypoints:
            self._waypoint_tokens(vocab_rows)
            answer_len = fmt.max_waypoint_tokens
        # Cache columns an answer can need after the prompt (which holds the forced prefix):
        # the rest of the mode line, a capped chain of thought and the close text in its
        # longest form, the actions, and the pad columns of one forced chunk.
        chunk = 2 + max(len(self.close_ids), len(_ids(tok, "\n" + self.close_text)))
        slow = self.max_reasoning_tokens + chunk
        self._answer_room = {
            "fast": answer_len + chunk,
            "slow": slow + answer_len + chunk,
            "auto": max(len(self.fast_ids) + len(self.close_ids), len(self.slow_ids) + slow)
            + answer_len
            + chunk,
        }

    def _waypoint_tokens(self, vocab_rows: int) -> None:
        """The waypoint phase's allowed ids: tokens whose text only uses the waypoint
        characters, and the first token of the answer close; and the ")" count of each."""
        tok = self.vla.tokenizer
        special = set(tok.all_special_ids)
        texts = tok.batch_decode([[i] for i in range(len(tok))], skip_special_tokens=False)
        self.waypoint_allowed = torch.zeros(vocab_rows, dtype=torch.bool)
        self.parens: dict[int, int] = {}
        for i, t in enumerate(texts):
            if t and i not in special and set(t) <= WAYPOINT_CHARS:
                self.waypoint_allowed[i] = True
                self.parens[i] = t.count(")")
        if not self.parens:
            raise ValueError("the tokenizer has no tokens for waypoint text (digits, brackets)")
        self.answer_close = self.closing_ids[0]  # the model may close early (a failure)
        self.waypoint_allowed[self.answer_close] = True

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
        embeds = prompt_embeds(model, batch["input_ids"], video)
        _sync(device)
        t_vision = time.perf_counter()

        positions, _ = model.model.get_rope_index(
            batch["input_ids"],
            batch["mm_token_type_ids"],
            video_grid_thw=batch["video_grid_thw"],
            second_per_grid_ts=batch.get("second_per_grid_ts"),
            attention_mask=batch["attention_mask"],
        )
        start_phase = {"auto": "choose", "fast": self.answer_phase, "slow": "reason"}[mode]
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
        choice = _Choice(
            self._allowed_masks(device), temperature, top_p, make_generator(seed, device),
            return_logprobs,
        )  # fmt: skip
        if self.decoding == "fast":
            room = self._answer_room[mode]
            t_prefill = self._decode_fast(
                model, batch, embeds, positions, num_samples, rows, choice, room
            )
        else:
            t_prefill = self._decode_reference(
                model, batch, embeds, positions, num_samples, rows, choice
            )
        _sync(device)
        t_end = time.perf_counter()
        timings = {
            "inputs": t_inputs - t0,
            "vision": t_vision - t_inputs,
            "prefill": t_prefill - t_vision,
            "decode": t_end - t_prefill,
            "total": t_end - t0,
        }
        return self._results(samples, num_samples, rows, timings, return_logprobs)

    # --- token choice (both paths) -----------------------------------------------------------
    def _allowed_masks(self, device: torch.device) -> dict[str, torch.Tensor]:
        choose = torch.zeros_like(self.action_allowed)
        choose[[self.fast_ids[self.common], self.slow_ids[self.common]]] = True
        masks = {
            "choose": choose.to(device),
            "reason": self.reason_allowed.to(device),
            "actions": self.action_allowed.to(device),
        }
        if self.waypoints:
            masks["waypoints"] = self.waypoint_allowed.to(device)
        return masks

    def _choose(
        self, logits: torch.Tensor, phase_mask: torch.Tensor, act: Any, choice: _Choice
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Every row's next token (and its log-probability when recorded), on the device.

        `phase_mask` [R, V]: the allowed ids of each row's phase; `act`: the rows writing
        action tokens (a list or an index tensor; empty: none)."""
        chosen = choose_tokens(logits, phase_mask, choice.temperature, choice.top_p, choice.gen)
        if choice.temperature <= 0 and self.action_choice == "expected" and len(act):
            chosen[act] = self._expected_actions(logits[act])
        logprob = None
        if choice.record:
            logprob = torch.log_softmax(logits.float(), -1).gather(-1, chosen[:, None])[:, 0]
        return chosen, logprob

    def _advance(self, rows: list[_Row], chosen: list[int], logprobs: list[float] | None) -> None:
        """Apply the chosen tokens to the rows' phases and queue what each row feeds next."""
        if logprobs is not None:
            for row, v in zip(rows, logprobs, strict=True):
                row.last_logprob = v
        for row, tok_id in zip(rows, chosen, strict=True):
            row.pending = []
            if row.phase == "choose":
                if tok_id == self.fast_ids[self.common]:
                    row.mode, row.phase = "fast", self.answer_phase
                    row.feed(self.fast_ids[self.common :] + self.close_ids, True)
                else:
                    row.mode, row.phase = "slow", "reason"
                    row.feed(self.slow_ids[self.common :], True)
            elif row.phase == "reason":
                self._reason_step(row, tok_id)
            elif row.phase == "waypoints":
                self._waypoint_step(row, tok_id)
            elif row.phase == "actions":
                row.actions.append(tok_id)
                if len(row.actions) == FUTURE_STEPS:
                    row.phase = "done"
                    row.feed([tok_id, *self.closing_ids], True)
                    row.pending = []  # nothing follows: no need to run the model on it
                else:
                    row.feed([tok_id], True)

    def _waypoint_step(self, row: _Row, tok_id: int) -> None:
        """One token of waypoint text; the answer closes when the model starts the close, at
        the tenth ")" or at the token cap (the closing text is then forced, not run)."""
        if tok_id == self.answer_close:
            row.phase = "done"
            row.feed(self.closing_ids, True)
        else:
            row.answer_ids.append(tok_id)
            row.points += self.parens[tok_id]
            if row.points < FUTURE_STEPS and len(row.answer_ids) < self.vla.fmt.max_waypoint_tokens:
                row.feed([tok_id], True)
                return
            row.answer_capped = row.points < FUTURE_STEPS
            row.phase = "done"
            row.feed([tok_id, *self.closing_ids], True)
        row.pending = []  # nothing follows: no need to run the model on it

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
            row.phase = self.answer_phase
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
                row.phase = self.answer_phase
                row.feed([tok_id, *_ids(tok, rest)], True)
                return
        if len(row.reasoning_ids) >= self.max_reasoning_tokens:
            text = tok.decode(row.reasoning_ids, skip_special_tokens=False)
            close = ("" if text.endswith("\n") else "\n") + self.close_text
            row.phase = self.answer_phase
            row.capped = True
            row.feed([tok_id, *_ids(tok, close)], True)
            return
        row.feed([tok_id], True)

    # --- reference path: dynamic cache -------------------------------------------------------
    def _decode_reference(self, model, batch, embeds, positions, num_samples, rows, choice):
        out = model.model.language_model(
            inputs_embeds=embeds,
            attention_mask=batch["attention_mask"],
            position_ids=positions,
            use_cache=True,
        )
        cache = _output_cache(out)
        logits = model.lm_head(out.last_hidden_state[:, -1])
        next_pos = positions[0, :, -1] + 1
        attention = batch["attention_mask"]
        if num_samples > 1:
            cache.batch_repeat_interleave(num_samples)
            logits = logits.repeat_interleave(num_samples, 0)
            next_pos = next_pos.repeat_interleave(num_samples, 0)
            attention = attention.repeat_interleave(num_samples, 0)
        _sync(attention.device)
        t_prefill = time.perf_counter()
        while True:
            phase_mask = torch.stack(  # done rows: any valid mask
                [choice.allowed.get(r.phase, choice.allowed["actions"]) for r in rows]
            )
            act = [i for i, r in enumerate(rows) if r.phase == "actions"]
            chosen, logprob = self._choose(logits, phase_mask, act, choice)
            self._advance(rows, chosen.tolist(), None if logprob is None else logprob.tolist())
            if not any(r.pending for r in rows):
                break
            logits, next_pos, attention = self._step(rows, cache, next_pos, attention)
        return t_prefill

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
        out = model.model.language_model(
            input_ids=ids,
            attention_mask=attention,
            position_ids=position_ids,
            use_cache=True,
            **{cache_kwarg(model.model.language_model): cache},
        )
        last = (lens_d - 1).clamp(min=0)
        hidden = out.last_hidden_state[torch.arange(len(rows), device=device), last]
        return model.lm_head(hidden), next_pos + lens_d, attention

    # --- fast path: static cache -------------------------------------------------------------
    def _decode_fast(self, model, batch, embeds, positions, num_samples, rows, choice, room):
        device = embeds.device
        dec = self._static_decoder(model, len(rows), batch["input_ids"].shape[1], room)
        logits = dec.prefill(embeds, positions, batch["attention_mask"])
        logits = logits.repeat_interleave(num_samples, 0)
        dec.repeat_rows(num_samples)
        _sync(device)
        t_prefill = time.perf_counter()
        tensors = _PhaseTensors(choice.allowed)
        slot_rows = torch.arange(len(rows), device=device)  # batch row of each active slot
        while True:
            phases = tuple(r.phase for r in rows)
            if all(p in ("actions", "done") for p in phases):
                self._finish_actions(dec, rows, logits, slot_rows, choice, tensors)
                break
            chosen, logprob = self._choose(logits, *tensors(phases), choice)
            host = _Readback(chosen, logprob)
            step_logits = dec.step(chosen.index_select(0, slot_rows))
            self._advance(rows, *host.get())
            logits.index_copy_(0, slot_rows, step_logits)
            # The step fed every row's first pending token; forced text follows in one chunk.
            chunks = [rows[r].pending[1:] for r in dec.rows]
            if any(chunks):
                chunk_logits = dec.feed(chunks)
                fed = [s for s, c in enumerate(chunks) if c]
                idx = torch.tensor(fed, device=device)
                logits.index_copy_(0, slot_rows[idx], chunk_logits[idx])
            if not any(r.pending for r in rows):
                break
            keep = [s for s, r in enumerate(dec.rows) if rows[r].phase != "done"]
            if len(keep) < dec.n:
                dec.keep(keep)
                slot_rows = torch.tensor(dec.rows, device=device)
        return t_prefill

    def _finish_actions(self, dec, rows, logits, slot_rows, choice, tensors) -> None:
        """Every row writes (or has written) its action tokens: decode them without reading
        anything back until the last row has its ten, then apply them to the rows in order."""
        device = logits.device
        left = [FUTURE_STEPS - len(r.actions) if r.phase == "actions" else 0 for r in rows]
        steps: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        while True:
            phases = tuple("actions" if n else "done" for n in left)
            chosen, logprob = self._choose(logits, *tensors(phases), choice)
            steps.append((chosen, logprob))
            left = [max(n - 1, 0) for n in left]
            if not any(left):
                break
            keep = [s for s, r in enumerate(dec.rows) if left[r]]
            if len(keep) < dec.n:
                dec.keep(keep)
                slot_rows = torch.tensor(dec.rows, device=device)
            logits.index_copy_(0, slot_rows, dec.step(chosen.index_select(0, slot_rows)))
        for chosen, logprob in steps:
            self._advance(rows, *_Readback(chosen, logprob).get())

    def _static_decoder(self, model, slots: int, prompt: int, room: int) -> StaticDecoder:
        if not self.compile:
            return StaticDecoder(model, slots, -(-(prompt + room) // 64) * 64)
        # Compiled: one decoder kept between calls, sized for any mode and rounded up, so that
        # the compiled step (and its CUDA graphs) see few distinct shapes and addresses.
        length = -(-(prompt + max(self._answer_room.values())) // 256) * 256
        dec = self._decoder
        if dec is None or dec.model is not model or dec.slots < slots or dec.length < length:
            dec = StaticDecoder(model, slots, length, compile_mode="reduce-overhead")
            self._decoder = dec
        dec.reset(slots)
        return dec

    # --- results ---------------------------------------------------------------------------
    def _parse_waypoints(self, row: _Row) -> tuple[np.ndarray, str | None]:
        """A waypoint row's trajectory and parse error (standing still when it failed)."""
        text = self.vla.tokenizer.decode(row.answer_ids, skip_special_tokens=False)
        parsed = parse_waypoints(text)
        if parsed.xy is not None:
            return waypoint_trajectory(np.asarray(parsed.xy)), None
        error = parsed.error
        if row.answer_capped:
            error = f"{error} (the text reached the {self.vla.fmt.max_waypoint_tokens}-token cap)"
        return np.zeros((FUTURE_STEPS, 3)), error

    def _results(self, samples, num_samples, rows, timings, logprobs) -> list[PlanResult]:
        vla, tok = self.vla, self.vla.tokenizer
        errors: list[str | None] = [None] * len(rows)
        if self.waypoints:
            codes = torch.zeros(len(rows), 0, dtype=torch.long)
            trajs = np.zeros((len(rows), FUTURE_STEPS, 3))
            for i, row in enumerate(rows):
                trajs[i], errors[i] = self._parse_waypoints(row)
        else:
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
                    logprobs=list(row.logprobs) if logprobs else None,
                    reasoning_capped=row.capped,
                    parse_error=errors[i],
                )
            )
        failed = sum(e is not None for e in errors)
        if failed:
            log.info("%d of %d waypoint answers did not parse (planned as standing still)",
                     failed, len(rows))  # fmt: skip
        capped = sum(r.capped for r in rows)
        if capped:
            log.info(
                "%d of %d plans reached the %d-token reasoning cap (closed by the planner)",
                capped, len(rows), self.max_reasoning_tokens,
            )  # fmt: skip
        return results


def waypoint_trajectory(xy: np.ndarray) -> np.ndarray:
    """(10, 3) poses from (10, 2) waypoints: the heading of each point is the direction of the
    path there (central differences; kept where the vehicle moves less than 5 cm, which the
    two-decimal rounding alone could otherwise turn into a heading)."""
    from autovla.geometry import headings_from_path

    xy = np.asarray(xy, dtype=np.float64)
    return np.concatenate([xy, headings_from_path(xy, central=True, min_step=0.05)[:, None]], 1)


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
