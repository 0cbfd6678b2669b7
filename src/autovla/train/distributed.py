"""Process-level helpers of the training loop: the accelerator, decisions all processes agree
on (a time budget, a signal, a bad step), and the replica check."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

REPLICA_FILE = "replicas.json"


def is_sharded(acc: Any) -> bool:
    """FSDP / DeepSpeed: parameters and optimiser state are split across processes."""
    from accelerate.utils import DistributedType

    return acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


class LaunchError(ValueError):
    """A launch configuration this machine cannot run as asked."""


def is_deepspeed(acc: Any) -> bool:
    from accelerate.utils import DistributedType

    return acc.distributed_type == DistributedType.DEEPSPEED


def check_launch(acc: Any) -> None:
    """accelerate runs FSDP and DeepSpeed on GPUs only: launched with such a config on the CPU
    it quietly trains with plain DDP (`Accelerator(cpu=True)` never selects them). Say so."""
    for name, env in (("FSDP", "ACCELERATE_USE_FSDP"), ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED")):
        if os.environ.get(env, "").lower() == "true" and not is_sharded(acc):
            raise LaunchError(
                f"launched with an accelerate {name} config, but accelerate runs {name} on GPUs "
                f"only: on the CPU (train.device=cpu, or no GPU) this would train with plain "
                "DDP, unsharded; launch with configs/accelerate/cpu-2proc.yaml instead (see "
                "docs/distributed.md)"
            )


def make_accelerator(device: str, precision: str) -> Any:
    """CPU (fp32 unless asked) when there is no GPU or device='cpu'; bf16 on GPU by default.
    Gradient accumulation is the stages' own (explicit loss scaling and `no_sync`)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    cpu = device == "cpu" or not torch.cuda.is_available()
    precision = {"auto": "no" if cpu else "bf16", "fp32": "no", "bf16": "bf16"}[precision]
    # accelerate keeps one precision and device per process: a second run in the same process
    # (the demo, a notebook) that wants others starts from a fresh state
    old = AcceleratorState._shared_state
    if old and (old.get("_mixed_precision") != precision or (cpu and old["device"].type != "cpu")):
        AcceleratorState._reset_state()
    acc = Accelerator(cpu=cpu, mixed_precision=precision)
    check_launch(acc)
    return acc


def agree(acc: Any, flags: list[bool]) -> list[bool]:
    """Each flag true on every process when it is true on any, so that all processes take the
    same branch (stop, skip a step) and none waits alone in a collective."""
    if acc.num_processes < 2:
        return list(flags)
    local = torch.tensor([float(f) for f in flags], device=acc.device)
    return [bool(x > 0) for x in acc.reduce(local, reduction="sum").tolist()]


def parameter_checksum(model: Any) -> float:
    """Sum of |w| weighted by position; differs when any replica's weights drift."""
    total = torch.zeros((), dtype=torch.float64)
    for i, p in enumerate(model.parameters()):
        total += (i + 1) * p.detach().double().abs().sum().cpu()
    return float(total)


def check_replicas(acc: Any, model: Any, out_dir: Path) -> None:
    """Gather every process's parameter checksum; the main process records them (DDP sanity)."""
    if acc.num_processes < 2:
        return
    if is_sharded(acc):
        return  # sharded: replicas hold different shards by design
    local = torch.tensor([parameter_checksum(model)], device=acc.device, dtype=torch.float64)
    sums = acc.gather(local).tolist()
    if acc.is_main_process:
        from autovla.io import write_json

        write_json(out_dir / REPLICA_FILE, {"checksums": sums, "identical": len(set(sums)) == 1})


def out_of_time(t_start: float, max_minutes: float | None) -> bool:
    """This process's wall-clock budget (combine the processes' answers with `agree`)."""
    return max_minutes is not None and (time.perf_counter() - t_start) / 60.0 >= max_minutes
