"""The training loop every stage shares. A stage (SFT, RFT) brings its data and its step;
everything else is here, once:

    run = Run(cfg)              accelerator, model (LoRA, freezing, gradient checkpointing,
                                resume), AdamW, the output folder's lock
    stage = SFT(run) | RFT(run) the stage's data and step function (train/sft.py, train/rft.py)
    result = fit(stage)

`fit`, every step: stop? (train.max_steps done, train.max_minutes spent, SIGINT or SIGTERM
received; all processes agree) -> lr from the schedule -> `stage.step(batch, step)`, which
calls `run.update(loss)` for each optimiser update -> log, save, validate on their periods.
At the end: one checkpoint of the last step (never the same step twice), validation, and a
summary on the main process. How the run ended (`steps`, `time` or `interrupt`) is in the log,
the result and the checkpoint.

The run folder (`output.dir`):

    config.yaml                  the full config the run used (recipe + overrides)
    metrics.jsonl                one JSON line per logged window ("kind": train | val)
    tensorboard/                 the same scalars (output.tensorboard)
    checkpoints/step-00000200/   model directory + trainer/ (train/checkpointing.py); the last
                                 output.keep_last are kept
    final -> checkpoints/step-N  relative link to the last checkpoint written, replaced
                                 atomically at every save: the path later stages read

Guards: an update with a non-finite loss or gradient is skipped and counted; more than
`train.max_bad_steps` of them stop the run with `TrainingDivergedError`, and weights that are
not finite are never saved (so `keep_last` never rotates a good checkpoint away for them).
SIGINT (Ctrl-C) and SIGTERM (what SLURM and `kill` send) finish the current step, save it and
return; a second Ctrl-C stops at once, keeping the last checkpoint. Under SLURM, ask for the
signal early enough for one step and one save (`#SBATCH --signal=TERM@120`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from autovla.config import dump_config
from autovla.io import atomic_open, read_json, write_json
from autovla.model.prompts import SystemKind
from autovla.train import checkpointing as ckpt
from autovla.train import model_setup as ms
from autovla.train.config import RunConfig
from autovla.train.data import check_sources, sources_of
from autovla.train.distributed import (
    agree,
    check_replicas,
    is_deepspeed,
    is_sharded,
    make_accelerator,
    out_of_time,
)
from autovla.train.lora_merge import MergedSaver
from autovla.train.schedule import lr_at
from autovla.train.tracking import Tracker

StopReason = Literal["steps", "time", "interrupt"]
# checkpoint info keys of earlier layouts, dropped when a model trained with them is saved again
_OLD_INFO_KEYS = ("sft", "stage", "rft_step")


# torch.distributed.checkpoint cannot read DeepSpeed's ZeRO optimiser, and DeepSpeed's own
# checkpoints are pickles: DeepSpeed runs keep no optimiser state (docs/distributed.md)
_DEEPSPEED_OPTIMIZER = (
    "DeepSpeed: checkpoints hold the weights but not the AdamW moments, which start afresh "
    "on resuming; launch with configs/accelerate/fsdp.yaml to keep them"
)


class TrainingDivergedError(ValueError):
    """Non-finite losses, gradients or weights: the run stopped without saving them."""


@dataclass
class Result:
    stage: str
    checkpoint: Path | None
    steps: int
    stopped_by: StopReason = "steps"
    signal: str | None = None  # SIGINT / SIGTERM when a signal stopped the run
    is_main: bool = True
    samples_per_s: float = float("nan")  # RFT: prompts per second
    train: dict[str, float] = field(default_factory=dict)  # the last logged window
    val: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)  # every logged window

    @property
    def interrupted(self) -> bool:
        return self.stopped_by == "interrupt"


class Run:
    """One run's accelerator, model, optimiser and output folder.

    `wrap` puts a module around the model before `accelerate.prepare` (the forward DDP must
    see); `refuse_sharded` is the message for stages that cannot run under FSDP / DeepSpeed;
    `system` is the prompt kind the model is trained with (None: the one the model was saved
    with); `micro_batch` the samples per process of one forward (DeepSpeed's bookkeeping).
    """

    def __init__(
        self,
        cfg: RunConfig,
        wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
        refuse_sharded: str | None = None,
        system: SystemKind | None = None,
        micro_batch: int = 1,
    ):
        from accelerate.utils import set_seed

        self.cfg, self.name = cfg, cfg.stage
        t = cfg.train
        if t.torch_threads:
            torch.set_num_threads(t.torch_threads)
        self.acc = make_accelerator(t.device, t.precision)
        self.sharded = is_sharded(self.acc)
        self.deepspeed = is_deepspeed(self.acc)
        # FSDP2 runs write their own slices of the optimiser state; FSDP1 (ShardedTensor
        # states, deprecated by torch) gathers it on the main process
        self.slices = self.sharded and not self.deepspeed and bool(self.acc.is_fsdp2)
        self.micro_batch = micro_batch
        if self.sharded and refuse_sharded:
            raise ValueError(refuse_sharded)
        self.out = cfg.output_dir
        self.ckroot = self.out / "checkpoints"
        self._exit = contextlib.ExitStack()
        with self.closed_on_error():
            self._open()
            self.resume_from = self._resume_point()
            self.resume_state: dict[str, Any] = {}
            if self.resume_from is not None:
                self.resume_state = ckpt.load_trainer_state(self.resume_from)
            check_sources(sources_of(cfg.data.datasets))  # before the slow model load
            set_seed(t.seed)
            self._build_model()
            self.system: SystemKind = system or self.vla.info.get("system", "dual")
            self._prepare(wrap)
        self.bad_steps = 0  # updates skipped for a non-finite loss or gradient
        self.begin_step(self.start_step)

    @contextlib.contextmanager
    def closed_on_error(self) -> Iterator[None]:
        """Release the output folder when set-up fails (a stage's too)."""
        try:
            yield
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        """Lock the output folder (main process) and clear what killed saves left there."""
        if self.acc.is_main_process:
            locked = self._exit.enter_context(ckpt.lock_output_dir(self.out))
            ckpt.check_final_link(self.out)  # refused now, not after hours of training
            removed = ckpt.remove_stale_temps(self.ckroot, every=locked)
            if removed:
                self.acc.print(f"removed {len(removed)} unfinished checkpoint(s) of killed runs")

    def _prepare(self, wrap: Callable[[torch.nn.Module], torch.nn.Module] | None) -> None:
        """accelerate.prepare, then the trainer state of the checkpoint resumed from."""
        self.start_step, self.start_samples = 0, 0
        if self.resume_from is not None:
            self.start_step = int(self.resume_state["step"])
            self.start_samples = int(self.resume_state.get("samples_seen", 0))
        module = wrap(self.raw) if wrap is not None else self.raw
        if self.deepspeed:
            # The stages accumulate gradients themselves (`sync` marks the last micro-batch);
            # DeepSpeed sees one micro-batch per optimiser step and must not scale the loss
            # again. Its batch size is bookkeeping only (we hand it no data loader).
            ds = self.acc.state.deepspeed_plugin.deepspeed_config
            ds["train_micro_batch_size_per_gpu"] = self.micro_batch
            ds["gradient_accumulation_steps"] = 1
            ds["train_batch_size"] = self.micro_batch * self.acc.num_processes
        self.model, self.optimizer = self.acc.prepare(module, self.optimizer)
        if self.deepspeed:
            self.acc.print(f"warning: {_DEEPSPEED_OPTIMIZER}")
        elif self.resume_from is not None and not ckpt.restore_optimizer(
            self.resume_from,
            self.model,
            self.optimizer.optimizer,
            self.sharded,
            self.acc.is_main_process,
        ):
            self.acc.print(
                f"warning: {self.resume_from} holds no optimiser state this version reads; "
                "AdamW moments start afresh"
            )

    def _resume_point(self) -> Path | None:
        last = ckpt.latest_checkpoint(self.ckroot)
        if last is not None and not self.cfg.output.resume:
            raise ckpt.OutputDirError(
                f"{self.ckroot} already holds checkpoints (last: {last.name}) and output.resume "
                "is false: a new run there would mix with them; set output.dir to another "
                "folder, or output.resume=true to continue"
            )
        return last

    def _build_model(self) -> None:
        t = self.cfg.train
        lora = t.lora.enabled
        # With LoRA the checkpoint's model files hold merged weights: rebuild the base and
        # load the adapter instead, so resuming does not merge twice.
        from_ckpt = self.resume_from if (self.resume_from is not None and not lora) else None
        # A checkpoint holds the trained weights in float32 and the frozen ones in the dtype
        # they were loaded in: read all in float32, then put the frozen ones back (both exact).
        self.vla = ms.load_vla(self.cfg.model, from_ckpt, torch.float32 if from_ckpt else None)
        self.source = ms.describe_source(self.vla, self.cfg.model, from_ckpt)
        model = self.vla.model
        ms.set_trainable(model, t.freeze_vision, t.freeze_language)
        self.peft = None
        if lora:
            self.peft = ms.apply_lora(model, t.lora)
            if self.resume_from is not None:
                adapter = ckpt.load_adapter(self.resume_from)
                if adapter is None:
                    raise ValueError(f"{self.resume_from}: no LoRA adapter to resume from")
                ms.load_adapter_state(self.peft, adapter)
        # float32 master weights for what trains; what does not keeps its loaded dtype (a
        # bf16 base computes in bf16, also on the CPU), unless precision fp32 asks for float32
        frozen = self.resume_state.get("frozen_dtype") if from_ckpt else None
        if t.precision == "fp32":
            frozen = "float32"
        ms.master_precision(model, getattr(torch, frozen) if frozen else None)
        if t.gradient_checkpointing:
            ms.enable_gradient_checkpointing(model)
        model.train()
        self.raw = model
        o = self.cfg.optim
        self.optimizer = torch.optim.AdamW(
            ms.param_groups(model, o.weight_decay), lr=o.lr, betas=o.betas, eps=o.eps
        )
        self.trainable, self.total = ms.count_params(model)

    # --- during a step -------------------------------------------------------------------
    def begin_step(self, step: int) -> None:
        """Set the scheduled learning rate of optimiser step `step` (0-based)."""
        o = self.cfg.optim
        self.step = step
        self.lr = lr_at(step, o.lr, o.warmup_steps, o.decay_every, o.gamma)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr

    def sync(self, last: bool) -> contextlib.AbstractContextManager:
        """Gradient accumulation: under DDP all-reduce the gradients on the last backward only;
        under DeepSpeed (whose `backward` also steps) step after the last one only."""
        if self.deepspeed:
            self.acc.gradient_state._set_sync_gradients(last)
        return contextlib.nullcontext() if last else self.acc.no_sync(self.model)

    def update(self, loss: torch.Tensor | float) -> float:
        """Clip, check and apply the accumulated gradients: the one place the weights change.
        Returns the gradient norm, NaN for a skipped update (a non-finite loss or gradient)."""
        clip = self.cfg.optim.clip_grad_norm
        norm = self.acc.clip_grad_norm_(
            self.model.parameters(), clip if clip is not None else math.inf
        )
        norm = float(norm) if norm is not None else 0.0
        (bad,) = agree(self.acc, [not (math.isfinite(float(loss)) and math.isfinite(norm))])
        if not bad:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if not bad:
            return norm
        self.bad_steps += 1
        limit = self.cfg.train.max_bad_steps
        if self.bad_steps > limit:
            raise TrainingDivergedError(
                f"{self.name}: non-finite loss or gradient at step {self.step + 1} "
                f"({self.bad_steps} such update(s), train.max_bad_steps={limit}); stopped "
                f"without saving, the last checkpoint is {ckpt.latest_checkpoint(self.ckroot)}. "
                "Lower optim.lr, or raise train.max_bad_steps to skip such updates"
            )
        self.acc.print(f"{self.name}: step {self.step + 1}: non-finite update skipped")
        return float("nan")

    # --- checkpoints ---------------------------------------------------------------------
    def save(self, record: dict[str, Any]) -> Path | None:
        """Checkpoint `record["step"]`; every process calls this (FSDP gathers), the main
        process writes. Refuses weights that are not finite."""
        acc, step = self.acc, record["step"]
        bad = next((n for n, p in self.model.named_parameters() if not p.isfinite().all()), None)
        if agree(acc, [bad is not None])[0]:
            raise TrainingDivergedError(
                f"{self.name}: weights are not finite at step {step} (first: "
                f"{bad or 'on another process'}): not saved, the last checkpoint "
                f"{ckpt.latest_checkpoint(self.ckroot)} is kept"
            )
        state_dict = acc.get_state_dict(self.model) if self.sharded else None  # gathered
        optim, tmp = None, None  # DeepSpeed: no optimiser state (_DEEPSPEED_OPTIMIZER)
        if self.slices:  # every process writes its slices of the optimiser state
            from accelerate.utils import broadcast_object_list

            where = [str(ckpt.temp_dir(self.ckroot, step)) if acc.is_main_process else None]
            tmp = Path(broadcast_object_list(where)[0])
            trainer_dir = tmp / ckpt.TRAINER_DIR
            ckpt.save_sharded_optimizer(
                self.model, self.optimizer.optimizer, trainer_dir, acc.is_main_process
            )
        elif not self.deepspeed and (self.sharded or acc.is_main_process):  # FSDP1 gathers
            optim = ckpt.gather_optimizer_state(self.model, self.optimizer.optimizer, self.sharded)
        rng = [ckpt.rng_state()]
        if acc.num_processes > 1:  # every process's generators, so each resumes its own draws
            from accelerate.utils import gather_object

            rng = gather_object(rng)
        path = None
        if acc.is_main_process:
            model: Any = self.raw
            if self.peft is not None:  # merged while written: no second model in memory
                model = MergedSaver(self.raw, state_dict)
            elif state_dict is not None:
                model = _StateDictModel(self.raw, state_dict)
            info = {k: v for k, v in self.vla.info.items() if k not in _OLD_INFO_KEYS}
            info.update(system=self.system, training=record)
            state = {**record, "world_size": acc.num_processes, "config": dump_config(self.cfg),
                     "frozen_dtype": ms.frozen_dtype(self.raw)}  # fmt: skip
            path = ckpt.save_checkpoint(
                self.ckroot,
                step,
                dataclasses.replace(self.vla, model=model, info=info).save_pretrained,
                optim,
                state,
                adapter=ms.adapter_state(self.peft, state_dict) if self.peft is not None else None,
                keep_last=self.cfg.output.keep_last,
                tmp=tmp,
                rng=rng,
            )
            ckpt.link_final(self.out, path)
        acc.wait_for_everyone()
        return path

    def mark_stopped(self, path: Path, stopped_by: StopReason) -> None:
        """Record how the run ended in the checkpoint already written at its last step."""
        if not self.acc.is_main_process:
            return
        state_file = path / ckpt.TRAINER_DIR / ckpt.STATE_FILE
        write_json(state_file, {**read_json(state_file), "stopped_by": stopped_by})
        from autovla.model.checkpoint import INFO_FILE

        info = read_json(path / INFO_FILE)
        info["training"] = {**info.get("training", {}), "stopped_by": stopped_by}
        write_json(path / INFO_FILE, info)

    def close(self) -> None:
        """Release the output folder."""
        self._exit.close()


class _StateDictModel:
    """Saves a model with a gathered (FSDP/DeepSpeed) state dict through AutoVLA's saver."""

    def __init__(self, model: Any, state_dict: dict):
        self.model, self.state_dict = model, state_dict

    def save_pretrained(self, out: Any) -> None:
        self.model.save_pretrained(out, state_dict=self.state_dict)


class Stage:
    """What a training stage gives the loop. A subclass sets the attributes in its __init__."""

    run: Run
    max_steps: int
    per_step: int  # global samples (RFT: prompts) one optimiser step consumes
    unit: str = "samples"
    shown: tuple[str, ...] = ("loss", "lr")  # metrics on the progress bar
    val_every: int = 0  # validate every N steps; 0 = never during the run
    val_at_end: bool = False

    def describe(self) -> str:
        """The stage's part of the opening log line (batch sizes, ...)."""
        return ""

    def batches(self, skip: int) -> Iterator[Any]:
        """Endless step batches, after the first `skip` global samples."""
        raise NotImplementedError

    def step(self, batch: Any, step: int) -> dict[str, Any]:
        """One optimiser step (calling `run.update`); returns sums for `summarise`."""
        raise NotImplementedError

    def summarise(self, window: list[dict[str, Any]]) -> dict[str, float]:
        """Metrics of the steps since the last log line, over all processes."""
        raise NotImplementedError

    def validate(self) -> dict[str, float]:
        return {}


class _StopSignals:
    """SIGINT and SIGTERM ask the loop to stop after the current step; a second SIGINT raises
    KeyboardInterrupt at once. Handlers can only be set from the main thread: elsewhere the
    signals keep their defaults."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def fit(stage: Stage) -> Result:
    """Train `stage` to its max_steps (resuming from the run's last checkpoint); see above."""
    run = stage.run
    try:
        return _fit(run, stage)
    finally:
        run.close()


def _fit(run: Run, stage: Stage) -> Result:
    cfg, acc, name = run.cfg, run.acc, run.name
    out = cfg.output
    result = Result(name, run.resume_from, run.start_step, is_main=acc.is_main_process)
    if run.start_step >= stage.max_steps:
        acc.print(f"{name}: {run.resume_from} is at step {run.start_step}: nothing to train")
        if acc.is_main_process and run.resume_from is not None:
            ckpt.link_final(run.out, run.resume_from)  # e.g. a run folder from before the link
        return result
    tracker = Tracker(
        run.out,
        acc.is_main_process,
        out.tensorboard,
        out.progress,
        total=stage.max_steps,
        initial=run.start_step,
        label=name,
        shown=stage.shown,
    )
    if acc.is_main_process:
        with atomic_open(run.out / "config.yaml") as f:
            f.write(dump_config(cfg))
    tracker.message(
        f"{name}: {run.trainable:,} / {run.total:,} parameters trained, {acc.num_processes} "
        f"process(es) on {acc.device}, {stage.describe()}, steps "
        f"{run.start_step}->{stage.max_steps}"
        + (f", resumed from {run.resume_from}" if run.resume_from else "")
    )
    tracker.message(f"{name}: weights: {run.source}")

    def record(step: int, stopped_by: StopReason | None) -> dict[str, Any]:
        samples = run.start_samples + (step - run.start_step) * stage.per_step
        return {"stage": name, "step": step, "samples_seen": samples,
                "max_steps": stage.max_steps, "stopped_by": stopped_by}  # fmt: skip

    step = run.start_step
    saved = run.start_step if run.resume_from is not None else None  # step of the last save
    window: list[dict[str, Any]] = []
    t_train = 0.0
    batches = stage.batches(run.start_samples)
    if run.resume_from is not None:  # after all set-up, so the steps draw as they would have
        ckpt.restore_rng(run.resume_from, run.resume_state, acc.process_index)
    t_start = time.perf_counter()
    try:
        with _StopSignals() as signals:
            while True:
                interrupt, late = agree(
                    acc,
                    [signals.received is not None, out_of_time(t_start, cfg.train.max_minutes)],
                )
                stop: StopReason | None = "interrupt" if interrupt else "time" if late else None
                if step >= stage.max_steps:
                    stop = "steps"
                if stop is not None:
                    break
                run.begin_step(step)
                t0 = time.perf_counter()
                window.append(stage.step(next(batches), step))
                t_train += time.perf_counter() - t0
                step += 1
                tracker.advance()
                if step % out.log_every == 0 or step == stage.max_steps:
                    result.samples_per_s = (step - run.start_step) * stage.per_step / t_train
                    metrics = {**stage.summarise(window), "bad_steps": float(run.bad_steps),
                               f"{stage.unit}_per_s": result.samples_per_s}  # fmt: skip
                    result.train = metrics
                    result.history.append({"step": float(step), **metrics})
                    tracker.log(step, metrics)
                    window = []
                if out.save_every and step % out.save_every == 0 and step < stage.max_steps:
                    result.checkpoint, saved = run.save(record(step, None)), step
                if stage.val_every and step % stage.val_every == 0 and step < stage.max_steps:
                    tracker.log(step, stage.validate(), kind="val")
            result.stopped_by, result.signal, result.steps = stop, signals.received, step
            if stop == "time":
                tracker.message(
                    f"{name}: stopped by the time budget (train.max_minutes="
                    f"{cfg.train.max_minutes}) at step {step} of {stage.max_steps}"
                )
            elif stop == "interrupt":
                tracker.message(f"{name}: {signals.received} at step {step}: saving")
            check_replicas(acc, run.raw, run.out)
            if saved != step and step > 0:
                result.checkpoint = run.save(record(step, stop))
            elif result.checkpoint is not None:
                run.mark_stopped(result.checkpoint, stop)
        if stage.val_at_end and stop != "interrupt":
            result.val = stage.validate()
            tracker.log(step, result.val, kind="val")
    except KeyboardInterrupt:  # a second Ctrl-C: no saving, the step may be half done
        result.stopped_by, result.signal, result.steps = "interrupt", "SIGINT", step
        result.checkpoint = ckpt.latest_checkpoint(run.ckroot)
        tracker.message(f"{name}: stopped at once, last checkpoint {result.checkpoint}")
        return result
    finally:
        tracker.close()
    how = {"steps": "done", "time": "stopped by the time budget"}.get(stop, "interrupted")
    rate = f", {result.samples_per_s:.2f} {stage.unit}/s" if t_train > 0 else ""
    if acc.is_main_process:  # the summary, once
        print(f"{name}: {how} at step {step} of {stage.max_steps}{rate}, checkpoint "
              f"{result.checkpoint}", flush=True)  # fmt: skip
    return result
