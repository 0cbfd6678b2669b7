"""Supervised fine-tuning with dual thinking (METHOD section 4), on accelerate.

The same function runs on one CPU, one GPU, or many processes under `accelerate launch`
(DDP; FSDP / DeepSpeed through accelerate's configs). One optimiser step = `grad_accum`
micro-batches of `batch_size` samples on every process.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from autovla.config import dump_config
from autovla.train import checkpointing as ckpt
from autovla.train import model_setup as ms
from autovla.train.collate import SFTCollator
from autovla.train.config import SFTConfig
from autovla.train.data import (
    EmptyDatasetError,
    MixedStream,
    Source,
    count_samples,
    load_items,
    steps_for_epochs,
    worker_init,
)
from autovla.train.distributed import (
    check_replicas,
    is_sharded,
    make_accelerator,
    out_of_time,
    summarise,
)
from autovla.train.loss import action_soft_targets, sft_loss
from autovla.train.schedule import lr_factor
from autovla.train.tracking import Tracker

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


class SFTDataError(ValueError):
    """A training sample that cannot be turned into a batch (missing image, no future, ...)."""


@dataclass
class SFTResult:
    checkpoint: Path | None
    steps: int
    interrupted: bool = False
    is_main: bool = True
    samples_per_s: float = float("nan")
    train: dict[str, float] = field(default_factory=dict)
    val: dict[str, float] = field(default_factory=dict)


class _SafeCollate:
    """Runs in the workers; turns a failure into a message instead of a worker traceback."""

    def __init__(self, inner: SFTCollator):
        self.inner = inner

    def __call__(self, items: list[Any]) -> dict[str, Any]:
        try:
            return self.inner(items)
        except (OSError, ValueError) as e:
            return {"__error__": str(e)}


def _sources(entries: list[Any]) -> list[Source]:
    return [Source(e.path, e.weight, e.split) for e in entries]


def _check_not_empty(sources: list[Source]) -> None:
    from autovla.data.manifest import iter_samples

    for s in sources:
        if next(iter(iter_samples(s.path, s.split)), None) is None:
            split = f" (split {s.split!r})" if s.split else ""
            raise EmptyDatasetError(f"dataset {s.path}{split} has no samples")


class _Run:
    """State of one training run; methods are the steps of `train_sft`."""

    def __init__(self, cfg: SFTConfig):
        from accelerate.utils import set_seed

        self.cfg = cfg
        if cfg.train.torch_threads:
            torch.set_num_threads(cfg.train.torch_threads)
        self.acc = make_accelerator(cfg.train.device, cfg.train.precision, cfg.train.grad_accum)
        self.out = cfg.output_dir
        self.ckroot = self.out / "checkpoints"
        self.resume_from = ckpt.latest_checkpoint(self.ckroot) if cfg.output.resume else None
        set_seed(cfg.train.seed)
        self.sources = _sources(cfg.data.datasets)
        _check_not_empty(self.sources)
        self._build_model()
        self.per_step = cfg.train.batch_size * cfg.train.grad_accum * self.acc.num_processes
        self.max_steps = cfg.train.max_steps
        if cfg.train.epochs is not None:
            self.max_steps = steps_for_epochs(
                cfg.train.epochs, count_samples(self.sources), self.per_step
            )
        self.start_step = 0
        self.start_samples = 0
        self.completed = 0
        if self.resume_from is not None:
            state = ckpt.load_trainer_state(self.resume_from)
            self.start_step = int(state["step"])
            # Global samples consumed: stays right if the process count changed since.
            self.start_samples = int(state.get("samples_seen", self.start_step * self.per_step))
            if not ckpt.restore_optimizer(self.resume_from, self.optimizer):
                self.acc.print(
                    f"warning: {self.resume_from} holds no optimiser state (a sharded "
                    "run); AdamW moments start afresh"
                )
            ckpt.restore_rng(self.resume_from, state)
            self.completed = self.start_step
        self.model, self.optimizer = self.acc.prepare(self.raw_model, self.optimizer)
        self.val_items = (
            load_items(_sources(cfg.val.datasets), cfg.val.max_samples, cfg.train.seed)
            if cfg.val.datasets
            else []
        )

    # --- setup ---------------------------------------------------------------------------
    def _build_model(self) -> None:
        cfg = self.cfg
        lora = cfg.train.lora.enabled
        # With LoRA the checkpoint's model files hold merged weights: rebuild the base and
        # load the adapter instead, so resuming does not merge twice.
        from_ckpt = self.resume_from if (self.resume_from is not None and not lora) else None
        self.vla = ms.load_vla(cfg.model, from_ckpt)
        # The planner reads the system prompt kind from the model info.
        self.vla.info["system"] = "dual" if cfg.train.variant == "dual" else "action_only"
        model = self.vla.model
        # fp32 master weights: bf16 runs use autocast for the compute, and AdamW on bf16
        # weights would lose small updates (checkpoints may load in bf16).
        model.float()
        ms.set_trainable(model, cfg.train.freeze_vision, cfg.train.freeze_language)
        self.peft = None
        if lora:
            self.peft = ms.apply_lora(model, cfg.train.lora)
            if self.resume_from is not None:
                adapter = ckpt.load_adapter(self.resume_from)
                if adapter is None:
                    raise ValueError(f"{self.resume_from}: no LoRA adapter to resume from")
                ms.load_adapter_state(self.peft, adapter)
        if cfg.train.gradient_checkpointing:
            ms.enable_gradient_checkpointing(model)
        model.train()
        self.raw_model = model
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(
            ms.param_groups(model, o.weight_decay), lr=o.lr, betas=o.betas, eps=o.eps
        )
        self.trainable, self.total = ms.count_params(model)
        sigma = cfg.loss.action_sigma
        self.soft_targets = (
            action_soft_targets(self.vla.codebook.contours[:, -1], sigma).to(self.acc.device)
            if sigma > 0
            else None
        )

    def loader(self) -> Any:
        from torch.utils.data import DataLoader

        cfg = self.cfg
        stream = MixedStream(
            self.sources,
            seed=cfg.train.seed,
            batch_size=cfg.train.batch_size,
            rank=self.acc.process_index,
            world_size=self.acc.num_processes,
            shuffle_buffer=cfg.data.shuffle_buffer,
            skip=self.start_samples,
        )
        collate = _SafeCollate(
            SFTCollator(
                self.vla.processor,
                self.vla.fmt,
                self.vla.codebook,
                cfg.train.variant,
                cfg.loss.lambda_cot,
            )
        )
        nw = cfg.data.num_workers
        # The fast tokenizer's own threads do not survive the fork into workers.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        return DataLoader(
            stream,
            batch_size=cfg.train.batch_size,
            collate_fn=collate,
            num_workers=nw,
            worker_init_fn=worker_init if nw else None,
            prefetch_factor=cfg.data.prefetch_factor if nw else None,
            pin_memory=self.acc.device.type == "cuda",
        )

    # --- checkpoints ---------------------------------------------------------------------
    def save(self, step: int) -> Path | None:
        """All processes call this (FSDP gathers); the main process writes."""
        state_dict = self.acc.get_state_dict(self.model) if is_sharded(self.acc) else None
        path = None
        if self.acc.is_main_process:
            path = self._write(step, state_dict)
        self.acc.wait_for_everyone()
        return path

    def _write(self, step: int, state_dict: dict | None) -> Path:
        vla = self.vla
        model = self.raw_model
        if self.peft is not None:
            model = ms.merged_copy(self.peft)
        if state_dict is not None and self.peft is None:
            model = _StateDictModel(self.raw_model, state_dict)
        info = {**vla.info, "sft": {"step": step, "variant": self.cfg.train.variant}}
        to_save = dataclasses.replace(vla, model=model, info=info)
        state = {
            "samples_seen": self.samples_seen(step),
            "world_size": self.acc.num_processes,
            "max_steps": self.max_steps,
            "config": dump_config(self.cfg),
        }
        return ckpt.save_checkpoint(
            self.ckroot,
            step,
            to_save.save_pretrained,
            None if is_sharded(self.acc) else self.optimizer,
            state,
            adapter=ms.adapter_state(self.peft) if self.peft is not None else None,
            keep_last=self.cfg.output.keep_last,
        )

    def samples_seen(self, step: int) -> int:
        return self.start_samples + (step - self.start_step) * self.per_step

    # --- validation ----------------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        from autovla.train.validate import run_validation

        metrics: dict[str, float] = {}
        if self.val_items and self.acc.is_main_process:
            self.raw_model.eval()
            try:
                with torch.no_grad(), self.acc.autocast():
                    metrics = run_validation(
                        self.vla,
                        self.val_items,
                        self.cfg.val.batch_size,
                        self.cfg.train.variant,
                        self.cfg.val.action_choice,
                    )
            finally:
                self.raw_model.train()
        self.acc.wait_for_everyone()
        return metrics

    # --- one optimiser step --------------------------------------------------------------
    def step(self, batches: Any, step: int) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        lr = cfg.optim.lr * lr_factor(
            step, cfg.optim.warmup_steps, cfg.optim.decay_every, cfg.optim.gamma
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        sums = {
            k: torch.zeros((), device=self.acc.device)
            for k in ("loss", "lm", "action", "correct", "total", "slow", "n")
        }
        grad_norm = torch.zeros((), device=self.acc.device)
        for _ in range(cfg.train.grad_accum):
            batch = next(batches)
            if "__error__" in batch:
                raise SFTDataError(batch["__error__"])
            with self.acc.accumulate(self.model):
                inputs = {k: batch[k].to(self.acc.device) for k in MODEL_KEYS if k in batch}
                with self.acc.autocast():
                    logits = self.model(**inputs, use_cache=False).logits
                out = sft_loss(
                    logits,
                    batch["labels"].to(self.acc.device),
                    batch["action_mask"].to(self.acc.device),
                    batch["sample_weight"],
                    cfg.loss.lambda_a,
                    self.soft_targets,
                    self.vla.action_start,
                    cfg.loss.first_action_weight,
                )
                self.acc.backward(out.loss)
                if self.acc.sync_gradients and cfg.optim.clip_grad_norm is not None:
                    gn = self.acc.clip_grad_norm_(self.model.parameters(), cfg.optim.clip_grad_norm)
                    if gn is not None:
                        grad_norm = torch.as_tensor(gn, device=self.acc.device).float()
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                if self.acc.sync_gradients:
                    self.completed = step + 1
            sums["loss"] += out.loss.detach()
            sums["lm"] += out.lm
            sums["action"] += out.action
            sums["correct"] += out.action_correct
            sums["total"] += out.action_total
            sums["slow"] += batch["is_slow"].sum().to(self.acc.device)
            sums["n"] += len(batch["is_slow"])
        sums["grad_norm"] = grad_norm
        sums["lr"] = torch.tensor(lr, device=self.acc.device)
        return sums


class _StateDictModel:
    """Saves a model with a gathered (FSDP/DeepSpeed) state dict through AutoVLA's saver."""

    def __init__(self, model: Any, state_dict: dict):
        self.model, self.state_dict = model, state_dict

    def save_pretrained(self, out: Any) -> None:
        self.model.save_pretrained(out, state_dict=self.state_dict)


def train_sft(cfg: SFTConfig) -> SFTResult:
    """Run SFT to `max_steps` (resuming from the last checkpoint in the output dir)."""
    run = _Run(cfg)
    acc = run.acc
    tracker = Tracker(
        run.out,
        acc.is_main_process,
        cfg.output.tensorboard,
        cfg.output.progress,
        total=run.max_steps,
        initial=run.start_step,
    )
    if acc.is_main_process:
        (run.out / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
    tracker.message(
        f"sft: {run.trainable:,} / {run.total:,} parameters trained, {acc.num_processes} "
        f"process(es) on {acc.device}, {run.per_step} samples per step, steps "
        f"{run.start_step}->{run.max_steps}"
        + (f", resumed from {run.resume_from}" if run.resume_from else "")
    )
    result = SFTResult(run.resume_from, run.start_step, is_main=acc.is_main_process)
    step = run.start_step
    batches = iter(run.loader())
    window: list[dict[str, torch.Tensor]] = []
    t_train, n_train = 0.0, 0
    t0 = time.perf_counter()
    t_start = t0
    try:
        while step < run.max_steps:
            if cfg.train.max_minutes is not None and out_of_time(
                acc, t_start, cfg.train.max_minutes
            ):
                tracker.message(f"sft: train.max_minutes reached at step {step}")
                break
            window.append(run.step(batches, step))
            step += 1
            n_train += run.per_step
            tracker.advance()
            if step % cfg.output.log_every == 0 or step == run.max_steps:
                t_train += time.perf_counter() - t0
                metrics = summarise(window, acc, cfg.train.grad_accum)
                metrics["samples_per_s"] = n_train / max(t_train, 1e-9)
                result.train, result.samples_per_s = metrics, metrics["samples_per_s"]
                tracker.log(step, metrics)
                window = []
                t0 = time.perf_counter()
            if cfg.output.save_every and step % cfg.output.save_every == 0 and step < run.max_steps:
                t_train += time.perf_counter() - t0
                result.checkpoint = run.save(step)
                t0 = time.perf_counter()
            if cfg.val.every and step % cfg.val.every == 0 and step < run.max_steps:
                t_train += time.perf_counter() - t0
                tracker.log(step, run.validate(), kind="val")
                t0 = time.perf_counter()
    except KeyboardInterrupt:
        # Every process gets the signal; DDP replicas are identical, so the main process alone
        # writes the last completed step (no collective calls: the others may be gone).
        result.interrupted = True
        step = run.completed  # an interrupt can land between the update and the step count
        if is_sharded(acc):
            tracker.message("interrupted: sharded runs resume from the last periodic checkpoint")
        elif acc.is_main_process and step > run.start_step:
            result.checkpoint = run._write(step, None)
            tracker.message(f"interrupted: resumable checkpoint at {result.checkpoint}")
        result.steps = step
        tracker.close()
        return result
    result.steps = step
    check_replicas(acc, run.raw_model, run.out)
    if step > run.start_step or result.checkpoint is None:
        result.checkpoint = run.save(step)
    if cfg.val.at_end and run.val_items:
        result.val = run.validate()
        tracker.log(step, result.val, kind="val")
    if math.isfinite(result.samples_per_s):
        tracker.message(
            f"sft: done at step {step}, {result.samples_per_s:.2f} samples/s, "
            f"checkpoint {result.checkpoint}"
        )
    tracker.close()
    return result
