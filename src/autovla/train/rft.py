"""Reinforcement fine-tuning with GRPO (docs/method.md section 4): the data and the step; the
loop, checkpoints and resuming are `train/loop.py`'s.

One step, on every process:

    B prompts --planner (eval, no grad, constrained decoding)--> B x G completions
      -> rewards per term (NaN: unscored) -> advantages within each prompt's group of G
      -> reference log-probs (frozen SFT model) -> for each of `num_epochs` updates:
         policy log-probs of the sampled tokens, GRPO loss, backward, clip, optimiser step

By default each process samples all G completions of its own prompts, so the group mean and
std need no communication. With `grpo.groups_span_processes` all processes read the same
prompts and each samples G / num_processes completions of every group; the rewards are
gathered so every process normalises over the whole group and keeps its own slice. Either
way DDP averages the gradients as usual, and metrics are summed over processes before logging.
Only tokens the model chose count in the loss (`sampled_mask`); text the planner forced (the
rest of a mode line, the answer markup) does not. Each chosen token is scored under the same
constraints the planner sampled it with (`rft_policy`), at temperature 1 (the paper's loss),
whatever the sampling temperature.
The reference is the SFT model: with LoRA, the same network with its adapters disabled;
without LoRA, a frozen copy. Distributed: DDP (the policy forward goes through the wrapped
module); an FSDP / DeepSpeed launch is refused, because generation needs the full weights on
every process.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autovla.model.prompts import require_action_tokens
from autovla.train import model_setup as ms
from autovla.train.data import MixedStream, sources_of
from autovla.train.grpo import group_advantages, grpo_loss, nan_std
from autovla.train.loop import Result, Run, Stage, fit
from autovla.train.rewards import Completion, compute_rewards
from autovla.train.rft_config import RFTConfig
from autovla.train.rft_metrics import step_stats, summarise
from autovla.train.rft_policy import PolicyLogprobs, padded, phase_table, sampled_phases

SHARDED = (
    "train rft runs on DDP: FSDP / DeepSpeed shard the weights that sampling needs whole on "
    "every process; launch without an FSDP or DeepSpeed config (with LoRA the 3B model and "
    "its reference fit one GPU)"
)


def step_seed(seed: int, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


class RFT(Stage):
    """GRPO on the policy's own sampled answers, against the frozen SFT model."""

    unit = "prompts"
    shown = ("reward", "kl", "slow_share")

    def __init__(self, cfg: RFTConfig):
        from autovla.model.planner import Planner

        self.cfg, g = cfg, cfg.grpo
        self.reward_terms = cfg.reward.terms()
        self.run = run = Run(cfg, wrap=PolicyLogprobs, refuse_sharded=SHARDED)
        with run.closed_on_error():  # release the output folder if set-up fails
            self.acc, self.vla, self.raw = run.acc, run.vla, run.raw
            # the policy terms and rewards read action tokens (rft_policy's phases)
            require_action_tokens(self.vla.fmt, "train rft")
            self.ref = None  # the reference: the LoRA base (adapters off), or a frozen copy
            if run.peft is None:
                # resumed: the policy has moved, the reference is the model the run started from
                base = ms.load_vla(cfg.model).model if run.resume_from else copy.deepcopy(self.raw)
                self.ref = base.float().to(self.acc.device)
                self.ref.requires_grad_(False)
                self.ref.eval()
            self.planner = Planner(self.vla, system=run.system,
                                   max_reasoning_tokens=g.max_reasoning_tokens)  # fmt: skip
            self.span = g.groups_span_processes and self.acc.num_processes > 1
            world = self.acc.num_processes if self.span else 1
            if g.group_size % world:
                raise ValueError(
                    f"grpo.group_size {g.group_size} does not split over {world} processes "
                    "(grpo.groups_span_processes)"
                )
            self.local_group = g.group_size // world  # completions this process samples
            self.pad_id = self.vla.tokenizer.pad_token_id or 0
            self.table = phase_table(self.planner).to(self.acc.device)
            self.max_steps = cfg.train.max_steps
            # spanning groups: every process reads the same prompts
            self.per_step = g.prompts_per_step * (1 if self.span else self.acc.num_processes)

    def describe(self) -> str:
        per = "step, groups spread over the processes" if self.span else "process and step"
        g = self.cfg.grpo
        return f"{g.prompts_per_step} prompts x {g.group_size} completions per {per}"

    @contextlib.contextmanager
    def reference(self) -> Iterator[Any]:
        """The frozen SFT model: LoRA adapters switched off, or the separate copy."""
        if self.ref is not None:
            yield self.ref
            return
        was_training = self.raw.training
        self.raw.eval()
        try:
            with self.run.peft.disable_adapter():
                yield self.raw
        finally:
            self.raw.train(was_training)

    def batches(self, skip: int) -> Iterator[list[Any]]:
        """Lists of `prompts_per_step` items: this process's prompts of one step."""
        cfg = self.cfg
        b = cfg.grpo.prompts_per_step
        rank, world = (0, 1) if self.span else (self.acc.process_index, self.acc.num_processes)
        stream = MixedStream(
            sources_of(cfg.data.datasets),
            seed=cfg.train.seed,
            batch_size=b,
            rank=rank,
            world_size=world,
            shuffle_buffer=cfg.data.shuffle_buffer,
            skip=skip,
        )
        items: list[Any] = []
        for item in stream:
            items.append(item)
            if len(items) == b:
                yield items
                items = []

    # --- one step ------------------------------------------------------------------------
    def sample(self, items: list[Any], step: int) -> list[Any]:
        g = self.cfg.grpo
        self.raw.eval()  # no dropout while sampling
        try:
            return self.planner.plan(
                [it.sample for it in items],
                [it.root for it in items],
                mode="auto",
                num_samples=self.local_group,
                temperature=g.temperature,
                top_p=g.top_p,
                seed=step_seed(self.cfg.train.seed, step, self.acc.process_index),
            )
        finally:
            self.raw.train()

    def step(self, items: list[Any], step: int) -> dict[str, float]:
        from autovla.model.inputs import encode_batch

        cfg, g, acc = self.cfg, self.cfg.grpo, self.acc
        G = self.local_group  # completions per prompt on this process
        samples = [it.sample for it in items]
        t0 = time.perf_counter()
        plans = self.sample(items, step)
        t_gen = time.perf_counter() - t0

        rep = [s for s in samples for _ in range(G)]
        rep_roots = [Path(it.root) for it in items for _ in range(G)]
        comps = [Completion(p.trajectory, p.text, p.mode) for p in plans]
        terms = compute_rewards(self.reward_terms, cfg.reward.scale, rep, rep_roots, comps)
        adv, group_std, keep = self.advantages(terms["total"])

        per = g.forward_prompts or len(items)
        chunks = [list(range(i, min(i + per, len(items)))) for i in range(0, len(items), per)]
        rows = [[j * G + k for j in ch for k in range(G)] for ch in chunks]
        encoded = [
            encode_batch(
                self.vla.processor,
                [samples[j].without_answer() for j in ch],
                [items[j].root for j in ch],
                self.vla.fmt,
                system=self.planner.system,
                padding_side="left",
            )
            for ch in chunks
        ]
        ids = [[plans[r].completion_ids for r in rs] for rs in rows]
        # tokens of unscored completions do not count (no advantage, no KL, no statistics)
        masks = [
            padded([plans[r].sampled_mask for r in rs], torch.float32, acc.device)
            * torch.as_tensor(keep[rs], dtype=torch.float32, device=acc.device)[:, None]
            for rs in rows
        ]
        phases: list[torch.Tensor | None] = [None] * len(rows)
        if g.constrained_logprobs:
            phases = [padded([sampled_phases(plans[r].sampled_mask) for r in rs], torch.long,
                             acc.device) for rs in rows]  # fmt: skip
        with torch.no_grad(), self.reference() as ref_model, acc.autocast():
            ref_fwd = PolicyLogprobs(ref_model)
            ref = [
                ref_fwd(enc, c, self.pad_id, ph, self.table)[0]
                for enc, c, ph in zip(encoded, ids, phases, strict=True)
            ]

        n_rows = max(int(keep.sum()), 1)  # the completions that count
        n_tokens = float(sum(float(m.sum()) for m in masks))
        old: list[torch.Tensor | None] = [None] * len(chunks)
        stats = {"loss": 0.0, "kl": 0.0, "clip_fraction": 0.0, "entropy": 0.0, "tokens": 0.0}
        for _epoch in range(g.num_epochs):
            epoch_loss = 0.0
            for k, (enc, c, m) in enumerate(zip(encoded, ids, masks, strict=True)):
                with self.run.sync(last=k == len(chunks) - 1):
                    with acc.autocast():
                        logp, entropy = self.run.model(enc, c, self.pad_id, phases[k], self.table)
                    logp = logp.float()
                    if old[k] is None:  # first epoch: the sampling policy's log-probs
                        old[k] = logp.detach()
                    out = grpo_loss(logp, old[k], ref[k], adv[rows[k]], m, g.beta, g.clip_eps,
                                    g.loss_normalisation, n_rows, n_tokens,
                                    g.constant_tokens)  # fmt: skip
                    acc.backward(out.loss)  # each chunk's share of the batch loss
                ntok = float(m.sum())
                epoch_loss += float(out.loss.detach())
                stats["loss"] += float(out.loss.detach()) / g.num_epochs
                stats["kl"] += float(out.kl) * ntok
                stats["clip_fraction"] += float(out.clip_fraction) * ntok
                stats["entropy"] += float((entropy * m).sum())
                stats["tokens"] += ntok
            grad_norm = self.run.update(epoch_loss)
        stats.update(grad_norm=grad_norm, lr=self.run.lr, gen_s=t_gen,
                     step_s=time.perf_counter() - t0)  # fmt: skip
        # unscored completions (NaN total) are left out of the loss above; the statistics
        # count them (reward_unscored) and average each reward term over what it scored
        return step_stats(samples, plans, terms, G, stats, group_std=group_std)

    def advantages(self, totals: np.ndarray) -> tuple[torch.Tensor, float, np.ndarray]:
        """Advantages of this process's completions (sample-major), the summed std of the
        rewards in each group, and which completions count: an unscored completion (NaN
        total) is left out of its group's mean and std and gets advantage 0. Spanning groups
        are gathered from every process first."""
        g, acc, G = self.cfg.grpo, self.acc, self.local_group
        r = torch.as_tensor(np.asarray(totals, dtype=np.float64)).view(-1, G)
        if self.span:
            world, rank = acc.num_processes, acc.process_index
            full = acc.gather(r.to(acc.device)).cpu().view(world, -1, G)
            r = full.permute(1, 0, 2).reshape(-1, world * G)  # (B, G): every process's slice
            adv = group_advantages(r.flatten(), world * G, g.advantage_scaling)
            adv = adv.view(-1, world, G)[:, rank].flatten()
        else:
            batch_std = None
            if g.advantage_scaling == "batch" and acc.num_processes > 1:  # the whole step's std
                batch_std = float(nan_std(acc.gather(r.to(acc.device)).cpu()))
            adv = group_advantages(r.flatten(), G, g.advantage_scaling, batch_std)
        # every spanning process reports the same groups: `summarise` divides by all of them
        std = float(nan_std(r, dim=1).sum())
        keep = np.isfinite(np.asarray(totals, dtype=np.float64))
        return adv.to(acc.device, torch.float32), std, keep

    def summarise(self, window: list[dict[str, float]]) -> dict[str, float]:
        return summarise(window, self.acc)


def train_rft(cfg: RFTConfig) -> Result:
    """Run GRPO to `train.max_steps`, resuming from the last checkpoint in the output dir."""
    return fit(RFT(cfg))
