"""Process-level helpers of the training loop: the accelerator, decisions all processes agree
on (a time budget, a signal, a bad step), and the replica check."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

REPLICA_FILE = "replicas.json"


def is_sharded(acc: Any) -> bool:
    """FSDP / DeepSpeed: parameters and optimiser state are split across processes."""
    from accelerate.utils import DistributedType

    return acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


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
    return Accelerator(cpu=cpu, mixed_precision=precision)


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
