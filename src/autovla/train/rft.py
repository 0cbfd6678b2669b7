"""Reinforcement fine-tuning with GRPO (docs/method.md section 4), on accelerate.

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
without LoRA, a frozen copy. Checkpoints are the SFT layout: a self-contained model directory
(LoRA merged into the weights, so `autovla eval` loads it as is) plus `trainer/` holding the
optimiser, RNG and the LoRA adapter itself (which resuming loads onto the SFT base again).
Distributed: DDP (the policy forward goes through the wrapped module); an FSDP / DeepSpeed
launch is refused, because generation needs the full weights on every process.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autovla.config import dump_config
from autovla.train import checkpointing as ckpt
from autovla.train import model_setup as ms
from autovla.train.data import MixedStream, Source
from autovla.train.distributed import is_sharded, out_of_time
from autovla.train.grpo import group_advantages, grpo_loss, nan_std
from autovla.train.rewards import Completion, compute_rewards
from autovla.train.rft_config import RFTConfig
from autovla.train.rft_metrics import step_stats, summarise
from autovla.train.rft_policy import PolicyLogprobs, padded, phase_table, sampled_phases
from autovla.train.schedule import lr_factor
from autovla.train.tracking import Tracker


@dataclass
class RFTResult:
    checkpoint: Path | None
    steps: int
    interrupted: bool = False
    train: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)


def step_seed(seed: int, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


class _Run:
    """State of one RFT run; `train_rft` drives it."""

    def __init__(self, cfg: RFTConfig):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.cfg = cfg
        self.reward_terms = cfg.reward.terms()
        t = cfg.train
        if t.torch_threads:
            torch.set_num_threads(t.torch_threads)
        cpu = t.device == "cpu" or not torch.cuda.is_available()
        precision = {"auto": "no" if cpu else "bf16", "fp32": "no", "bf16": "bf16"}[t.precision]
        self.acc = Accelerator(cpu=cpu, mixed_precision=precision)
        if is_sharded(self.acc):
            raise ValueError(
                "train rft runs on DDP: FSDP / DeepSpeed shard the weights that sampling needs "
                "whole on every process; launch without an FSDP or DeepSpeed config (with LoRA "
                "the 3B model and its reference fit one GPU)"
            )
        self.out = cfg.output_dir
        self.ckroot = self.out / "checkpoints"
        self.resume_from = ckpt.latest_checkpoint(self.ckroot) if cfg.output.resume else None
        set_seed(t.seed)
        for e in cfg.data.datasets:  # fail before the (slow) model load
            if not Path(e.path).exists():
                raise FileNotFoundError(f"dataset not found: {e.path}")
        self._build_models()
        self.start_step = 0
        if self.resume_from is not None:
            state = ckpt.load_trainer_state(self.resume_from)
            self.start_step = int(state["step"])
            ckpt.restore_optimizer(self.resume_from, self.optimizer)
            ckpt.restore_rng(self.resume_from, state)
        self.model, self.optimizer = self.acc.prepare(PolicyLogprobs(self.raw), self.optimizer)
        from autovla.model.planner import Planner

        self.planner = Planner(self.vla, max_reasoning_tokens=cfg.grpo.max_reasoning_tokens)
        self.span = cfg.grpo.groups_span_processes and self.acc.num_processes > 1
        world = self.acc.num_processes if self.span else 1
        if cfg.grpo.group_size % world:
            raise ValueError(
                f"grpo.group_size {cfg.grpo.group_size} does not split over {world} processes "
                "(grpo.groups_span_processes)"
            )
        self.local_group = cfg.grpo.group_size // world  # completions this process samples
        self.pad_id = self.vla.tokenizer.pad_token_id or 0
        self.table = phase_table(self.planner).to(self.acc.device)

    def _build_models(self) -> None:
        cfg, t = self.cfg, self.cfg.train
        lora = t.lora.enabled
        # With LoRA the saved weights are merged: rebuild on the SFT base and load the adapter.
        policy_src = self.resume_from if (self.resume_from is not None and not lora) else None
        self.vla = ms.load_vla(cfg.model, policy_src)
        self.raw = self.vla.model
        ms.set_trainable(self.raw, t.freeze_vision, t.freeze_language)
        self.peft = None
        self.ref = None
        if lora:
            self.peft = ms.apply_lora(self.raw, t.lora)
            if self.resume_from is not None:
                adapter = ckpt.load_adapter(self.resume_from)
                if adapter is None:
                    raise ValueError(f"{self.resume_from}: no LoRA adapter to resume from")
                ms.load_adapter_state(self.peft, adapter)
        else:
            ref_vla = ms.load_vla(cfg.model) if policy_src is not None else None
            self.ref = ref_vla.model if ref_vla is not None else copy.deepcopy(self.raw)
            self.ref.requires_grad_(False)
            self.ref.eval()
        if t.gradient_checkpointing:
            ms.enable_gradient_checkpointing(self.raw)
        self.raw.train()
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(
            ms.param_groups(self.raw, o.weight_decay), lr=o.lr, betas=o.betas, eps=o.eps
        )
        self.trainable, self.total = ms.count_params(self.raw)

    @contextlib.contextmanager
    def reference(self) -> Iterator[Any]:
        """The frozen SFT model: LoRA adapters switched off, or the separate copy."""
        if self.ref is not None:
            yield self.ref
            return
        was_training = self.raw.training
        self.raw.eval()
        try:
            with self.peft.disable_adapter():
                yield self.raw
        finally:
            self.raw.train(was_training)

    def batches(self) -> Iterator[list[Any]]:
        cfg = self.cfg
        b = cfg.train.prompts_per_step
        # spanning groups: every process reads the same prompts
        rank, world = (0, 1) if self.span else (self.acc.process_index, self.acc.num_processes)
        stream = MixedStream(
            [Source(e.path, e.weight, e.split) for e in cfg.data.datasets],
            seed=cfg.train.seed,
            batch_size=b,
            rank=rank,
            world_size=world,
            shuffle_buffer=cfg.data.shuffle_buffer,
            skip=self.start_step * b * world,
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

        per = cfg.train.forward_prompts or len(items)
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

        lr = cfg.optim.lr * lr_factor(
            step, cfg.optim.warmup_steps, cfg.optim.decay_every, cfg.optim.gamma
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        n_rows = max(int(keep.sum()), 1)  # the completions that count
        n_tokens = float(sum(float(m.sum()) for m in masks))
        old: list[torch.Tensor | None] = [None] * len(chunks)
        stats = {"loss": 0.0, "kl": 0.0, "clip_fraction": 0.0, "entropy": 0.0, "tokens": 0.0}
        grad_norm = 0.0
        for _epoch in range(g.num_epochs):
            for k, (enc, c, m) in enumerate(zip(encoded, ids, masks, strict=True)):
                last = k == len(chunks) - 1
                sync = contextlib.nullcontext() if last else acc.no_sync(self.model)
                with sync:
                    with acc.autocast():
                        logp, entropy = self.model(enc, c, self.pad_id, phases[k], self.table)
                    logp = logp.float()
                    if old[k] is None:  # first epoch: the sampling policy's log-probs
                        old[k] = logp.detach()
                    out = grpo_loss(logp, old[k], ref[k], adv[rows[k]], m, g.beta, g.clip_eps,
                                    g.loss_normalisation, n_rows, n_tokens,
                                    g.constant_tokens)  # fmt: skip
                    acc.backward(out.loss)  # each chunk's share of the batch loss
                ntok = float(m.sum())
                stats["loss"] += float(out.loss.detach()) / g.num_epochs
                stats["kl"] += float(out.kl) * ntok
                stats["clip_fraction"] += float(out.clip_fraction) * ntok
                stats["entropy"] += float((entropy * m).sum())
                stats["tokens"] += ntok
            if cfg.optim.clip_grad_norm is not None:
                gn = acc.clip_grad_norm_(self.model.parameters(), cfg.optim.clip_grad_norm)
                grad_norm = float(gn) if gn is not None else 0.0
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        stats.update(grad_norm=grad_norm, lr=lr, gen_s=t_gen, step_s=time.perf_counter() - t0)
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

    # --- checkpoints ---------------------------------------------------------------------
    def save(self, step: int) -> Path | None:
        path = None
        if self.acc.is_main_process:
            path = self.write(step)
        self.acc.wait_for_everyone()
        return path

    def write(self, step: int) -> Path:
        model = ms.merged_copy(self.peft) if self.peft is not None else self.raw
        info = {**self.vla.info, "stage": "rft", "rft_step": step}
        to_save = dataclasses.replace(self.vla, model=model, info=info)
        state = {
            "world_size": self.acc.num_processes,
            "max_steps": self.cfg.train.max_steps,
            "config": dump_config(self.cfg),
        }
        return ckpt.save_checkpoint(
            self.ckroot,
            step,
            to_save.save_pretrained,
            self.optimizer,
            state,
            adapter=ms.adapter_state(self.peft) if self.peft is not None else None,
            keep_last=self.cfg.output.keep_last,
        )


def train_rft(cfg: RFTConfig) -> RFTResult:
    """Run GRPO to `train.max_steps`, resuming from the last checkpoint in the output dir."""
    run = _Run(cfg)
    acc = run.acc
    tracker = Tracker(
        run.out,
        acc.is_main_process,
        cfg.output.tensorboard,
        cfg.output.progress,
        total=cfg.train.max_steps,
        initial=run.start_step,
    )
    if tracker.bar is not None:
        tracker.bar.set_description("rft")
    if acc.is_main_process:
        (run.out / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
    b, G = cfg.train.prompts_per_step, cfg.grpo.group_size
    per = "step, groups spread over the processes" if run.span else "process and step"
    tracker.message(
        f"rft: {run.trainable:,} / {run.total:,} parameters trained, {acc.num_processes} "
        f"process(es) on {acc.device}, {b} prompts x {G} completions per {per}, "
        f"steps {run.start_step}->{cfg.train.max_steps}"
        + (f", resumed from {run.resume_from}" if run.resume_from else "")
    )
    result = RFTResult(checkpoint=run.resume_from, steps=run.start_step)
    step = run.start_step
    batches = run.batches()
    window: list[dict[str, float]] = []
    t_start = time.perf_counter()
    try:
        while step < cfg.train.max_steps:
            if out_of_time(acc, t_start, cfg.train.max_minutes):
                tracker.message(f"rft: train.max_minutes reached at step {step}")
                break
            window.append(run.step(next(batches), step))
            step += 1
            tracker.advance()
            if step % cfg.output.log_every == 0 or step == cfg.train.max_steps:
                metrics = summarise(window, acc)
                result.train = metrics
                result.history.append({"step": float(step), **metrics})
                tracker.log(step, metrics)
                if tracker.bar is not None:
                    shown = ("reward", "kl", "slow_share")
                    tracker.bar.set_postfix({k: f"{metrics[k]:.3g}" for k in shown})
                window = []
            every = cfg.output.save_every
            if every and step % every == 0 and step < cfg.train.max_steps:
                result.checkpoint = run.save(step)
    except KeyboardInterrupt:
        result.interrupted = True
        if acc.is_main_process and step > run.start_step:
            result.checkpoint = run.write(step)
            tracker.message(f"interrupted: resumable checkpoint at {result.checkpoint}")
        result.steps = step
        tracker.close()
        return result
    result.steps = step
    if step > run.start_step or result.checkpoint is None:
        result.checkpoint = run.save(step)
    tracker.message(f"rft: done at step {step}, checkpoint {result.checkpoint}")
    tracker.close()
    return result
