"""Process-level helpers shared by the trainers: the accelerator, cross-process metric
reduction, the replica check and a wall-clock budget all processes agree on."""

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


def make_accelerator(device: str, precision: str, grad_accum: int) -> Any:
    """CPU (fp32 unless asked) when there is no GPU or device='cpu'; bf16 on GPU by default."""
    from accelerate import Accelerator

    cpu = device == "cpu" or not torch.cuda.is_available()
    precision = {"auto": "no" if cpu else "bf16", "fp32": "no", "bf16": "bf16"}[precision]
    return Accelerator(cpu=cpu, mixed_precision=precision, gradient_accumulation_steps=grad_accum)


def summarise(window: list[dict[str, torch.Tensor]], acc: Any, accum: int) -> dict[str, float]:
    keys = ("loss", "lm", "action", "correct", "total", "slow", "n")
    total = {k: sum(w[k] for w in window) for k in keys}
    stacked = torch.stack([total[k].float() for k in keys])
    stacked = acc.reduce(stacked, reduction="sum")  # over processes
    t = dict(zip(keys, stacked.tolist(), strict=True))
    micro = len(window) * accum * acc.num_processes
    return {
        "loss": t["loss"] / micro,
        "lm_loss": t["lm"] / micro,
        "action_loss": t["action"] / micro,
        "act_acc": t["correct"] / max(t["total"], 1.0),
        "slow_frac": t["slow"] / max(t["n"], 1.0),
        "grad_norm": float(window[-1]["grad_norm"]),
        "lr": float(window[-1]["lr"]),
    }


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


def out_of_time(acc: Any, t_start: float, max_minutes: float | None) -> bool:
    """Wall-clock budget check that all processes agree on (so none waits in a collective)."""
    if max_minutes is None:
        return False
    late = (time.perf_counter() - t_start) / 60.0 >= max_minutes
    if acc.num_processes > 1:
        flag = acc.reduce(torch.tensor([float(late)], device=acc.device), reduction="sum")
        late = bool(flag.item() > 0)
    return late
