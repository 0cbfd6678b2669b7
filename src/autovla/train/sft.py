"""Supervised fine-tuning with dual thinking (docs/method.md section 4): the data and the step;
the loop, checkpoints and resuming are `train/loop.py`'s.

The same code runs on one CPU, one GPU, or many processes under `accelerate launch` (DDP;
FSDP / DeepSpeed through accelerate's configs). One optimiser step = `sft.grad_accum`
micro-batches of `sft.batch_size` samples on every process.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import torch

from autovla.train.collate import SFTCollator
from autovla.train.config import SFTConfig
from autovla.train.data import (
    MixedStream,
    check_sources,
    count_samples,
    load_items,
    reasoning_scan,
    sources_of,
    steps_for_epochs,
    worker_init,
)
from autovla.train.loop import Result, Run, Stage, fit
from autovla.train.loss import action_soft_targets, sft_loss

MODEL_KEYS = (
    "input_ids",
    "attention_mask",
    "mm_token_type_ids",
    "pixel_values_videos",
    "video_grid_thw",
    "second_per_grid_ts",
    "pixel_values",
    "image_grid_thw",
)
SUMS = ("loss", "lm", "action", "correct", "total", "slow", "n")


class SFTDataError(ValueError):
    """A training sample that cannot be turned into a batch (missing image, no future, ...)."""


class _SafeCollate:
    """Runs in the workers; turns a failure into a message instead of a worker traceback."""

    def __init__(self, inner: SFTCollator):
        self.inner = inner

    def __call__(self, items: list[Any]) -> dict[str, Any]:
        try:
            return self.inner(items)
        except (OSError, ValueError) as e:
            return {"__error__": str(e)}


class SFT(Stage):
    """Next-token cross-entropy on fast and slow answers, weighted per sample."""

    unit = "samples"
    shown = ("loss", "act_acc", "lr")

    def __init__(self, cfg: SFTConfig):
        self.cfg, s = cfg, cfg.sft
        check_sources(sources_of(cfg.val.datasets, "val.datasets"))  # before the model load
        self.run = run = Run(cfg, system=s.variant, micro_batch=s.batch_size)
        with run.closed_on_error():  # release the output folder if set-up fails
            self.acc, self.vla = run.acc, run.vla
            self.sources = sources_of(cfg.data.datasets)
            if s.variant == "dual" and self.acc.is_main_process:
                read, found = reasoning_scan(self.sources)
                if read and not found:
                    self.acc.print(
                        f"warning: none of the first {read} training samples has reasoning: "
                        "dual-thinking SFT will learn fast answers only; annotate the data "
                        "first (autovla annotate rules | vlm, docs/annotation.md) or set "
                        "sft.variant=action_only"
                    )
            self.per_step = s.batch_size * s.grad_accum * self.acc.num_processes
            self.max_steps = cfg.train.max_steps
            if s.epochs is not None:
                self.max_steps = steps_for_epochs(
                    s.epochs, count_samples(self.sources), self.per_step
                )
            self.soft_targets = None
            if s.action_sigma > 0:
                ends = self.vla.codebook.contours[:, -1]
                self.soft_targets = action_soft_targets(ends, s.action_sigma).to(self.acc.device)
            self.val_items = []
            if cfg.val.datasets:
                self.val_items = load_items(
                    sources_of(cfg.val.datasets, "val.datasets"),
                    cfg.val.max_samples,
                    cfg.train.seed,
                )
                self.val_every, self.val_at_end = cfg.val.every, cfg.val.at_end

    def describe(self) -> str:
        return f"{self.per_step} samples per step"

    def batches(self, skip: int) -> Iterator[list[dict[str, Any]]]:
        """Lists of `grad_accum` micro-batches, from a DataLoader over the mixed stream."""
        from torch.utils.data import DataLoader

        cfg, s, acc = self.cfg, self.cfg.sft, self.acc
        stream = MixedStream(
            self.sources,
            seed=cfg.train.seed,
            batch_size=s.batch_size,
            rank=acc.process_index,
            world_size=acc.num_processes,
            shuffle_buffer=cfg.data.shuffle_buffer,
            skip=skip,
        )
        collate = SFTCollator(self.vla.processor, self.vla.fmt, self.vla.codebook, s.variant,
                              s.lambda_cot, s.fast_share, cfg.train.seed)  # fmt: skip
        nw = cfg.data.num_workers
        # The fast tokenizer's own threads do not survive the fork into workers.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        loader = DataLoader(
            stream,
            batch_size=s.batch_size,
            collate_fn=_SafeCollate(collate),
            num_workers=nw,
            worker_init_fn=worker_init if nw else None,
            prefetch_factor=cfg.data.prefetch_factor if nw else None,
            pin_memory=acc.device.type == "cuda",
        )
        # made now, not at the first step: the iterator draws its seed from the torch RNG,
        # which a resumed run restores after this call (a draw after it would shift dropout)
        micro = iter(loader)
        return ([next(micro) for _ in range(s.grad_accum)] for _ in itertools.count())

    def step(self, batch: list[dict[str, Any]], step: int) -> dict[str, torch.Tensor]:
        s, acc, dev = self.cfg.sft, self.acc, self.acc.device
        sums = {k: torch.zeros((), device=dev) for k in SUMS}
        for i, micro in enumerate(batch):
            if "__error__" in micro:
                raise SFTDataError(micro["__error__"])
            with self.run.sync(last=i == len(batch) - 1):
                inputs = {k: micro[k].to(dev) for k in MODEL_KEYS if k in micro}
                with acc.autocast():
                    logits = self.run.model(**inputs, use_cache=False).logits
                out = sft_loss(
                    logits,
                    micro["labels"].to(dev),
                    micro["action_mask"].to(dev),
                    micro["sample_weight"],
                    s.lambda_a,
                    self.soft_targets,
                    self.vla.action_start,
                    s.first_action_weight,
                )
                acc.backward(out.loss / len(batch))
            sums["loss"] += out.loss.detach()
            sums["lm"] += out.lm
            sums["action"] += out.action
            sums["correct"] += out.action_correct
            sums["total"] += out.action_total
            sums["slow"] += micro["is_slow"].sum().to(dev)
            sums["n"] += len(micro["is_slow"])
        grad_norm = self.run.update(sums["loss"])
        return {**sums, "grad_norm": torch.tensor(grad_norm), "lr": torch.tensor(self.run.lr)}

    def summarise(self, window: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        """Means over the window's micro-batches on all processes."""
        local = torch.stack([sum(w[k] for w in window).float() for k in SUMS])
        t = dict(zip(SUMS, self.acc.reduce(local, reduction="sum").tolist(), strict=True))
        micro = len(window) * self.cfg.sft.grad_accum * self.acc.num_processes
        return {
            "loss": t["loss"] / micro,
            "lm_loss": t["lm"] / micro,
            "action_loss": t["action"] / micro,
            "act_acc": t["correct"] / max(t["total"], 1.0),
            "slow_frac": t["slow"] / max(t["n"], 1.0),
            "grad_norm": float(window[-1]["grad_norm"]),
            "lr": float(window[-1]["lr"]),
        }

    def validate(self) -> dict[str, float]:
        """Plans of the validation samples against their futures (main process)."""
        from autovla.train.validate import run_validation

        metrics: dict[str, float] = {}
        if self.val_items and self.acc.is_main_process:
            model = self.run.raw
            model.eval()
            try:
                with torch.no_grad(), self.acc.autocast():
                    metrics = run_validation(
                        self.vla,
                        self.val_items,
                        self.cfg.val.batch_size,
                        self.run.system,
                        self.cfg.val.action_choice,
                    )
            finally:
                model.train()
        self.acc.wait_for_everyone()
        return metrics


def train_sft(cfg: SFTConfig) -> Result:
    """Run SFT to `train.max_steps` (resuming from the last checkpoint in the output dir)."""
    return fit(SFT(cfg))
