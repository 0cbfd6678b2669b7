"""Training checkpoints: the self-contained model directory plus a small `trainer/` folder.

    <out>/checkpoints/step-00000100/      loadable with AutoVLA.from_pretrained
        ...model files...
        trainer/state.json                step, samples consumed, world size, python/numpy RNG
        trainer/optimizer.safetensors     optimiser tensors  (+ optimizer.json: the rest)
        trainer/rng.safetensors           torch CPU (and CUDA) generator states
        trainer/adapter.safetensors       LoRA weights (only with LoRA)

No pickle: tensors go to safetensors, everything else to JSON. A checkpoint is written under a
temporary name and renamed, so a crash or Ctrl-C never leaves a half-written one that looks
complete; `latest_checkpoint` only considers directories with trainer/state.json.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autovla.io import read_json, write_json

TRAINER_DIR = "trainer"
STATE_FILE = "state.json"
_STEP_RE = re.compile(r"^step-(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def list_checkpoints(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        m = _STEP_RE.match(d.name)
        if m and (d / TRAINER_DIR / STATE_FILE).is_file():
            found.append((int(m.group(1)), d))
    return sorted(found)


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    found = list_checkpoints(root)
    return found[-1][1] if found else None


# --- optimiser state <-> safetensors + JSON ----------------------------------------------------
def optimizer_to_flat(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimiser state_dict into tensors (safetensors) and plain data (JSON)."""
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for pid, entry in state["state"].items():
        meta = {}
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{name}"] = value.detach().cpu().contiguous()
                meta[name] = "tensor"
            else:
                meta[name] = value
        plain["state"][str(pid)] = meta
    return tensors, plain


def optimizer_from_flat(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for pid, meta in plain["state"].items():
        state[int(pid)] = {
            name: tensors[f"{pid}.{name}"] if value == "tensor" else value
            for name, value in meta.items()
        }
    return {"state": state, "param_groups": plain["param_groups"]}


def _rng_tensors() -> dict[str, torch.Tensor]:
    out = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["torch_cuda"] = torch.cuda.get_rng_state()
    return out


def _python_numpy_rng() -> dict[str, Any]:
    version, inner, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    return {"python": [version, list(inner), gauss], "numpy": _jsonable(np_state)}


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.integer):
        return int(x)
    return x


def save_checkpoint(
    root: str | os.PathLike,
    step: int,
    save_model: Callable[[Path], Any],
    optimizer: torch.optim.Optimizer | None,
    state: dict[str, Any],
    adapter: dict[str, torch.Tensor] | None = None,
    keep_last: int | None = None,
) -> Path:
    """Write checkpoint `step` under `root` (model via `save_model(dir)`); returns its path."""
    from safetensors.torch import save_file

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = root / f".{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    save_model(tmp)
    tdir = tmp / TRAINER_DIR
    tdir.mkdir(parents=True, exist_ok=True)
    if optimizer is not None:  # None: sharded runs (FSDP/DeepSpeed) keep no optimiser state
        tensors, plain = optimizer_to_flat(optimizer.state_dict())
        save_file(tensors, str(tdir / "optimizer.safetensors"))
        write_json(tdir / "optimizer.json", plain)
    save_file(_rng_tensors(), str(tdir / "rng.safetensors"))
    if adapter is not None:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in adapter.items()},
            str(tdir / "adapter.safetensors"),
        )
    # state.json last: its presence marks the checkpoint complete.
    write_json(tdir / STATE_FILE, {**state, "step": step, "rng": _python_numpy_rng()})
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    if keep_last:
        for _, old in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_trainer_state(ckpt: str | os.PathLike) -> dict[str, Any]:
    path = Path(ckpt) / TRAINER_DIR / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{ckpt}: not a training checkpoint (no {TRAINER_DIR}/{STATE_FILE})"
        )
    return read_json(path)


def restore_optimizer(ckpt: str | os.PathLike, optimizer: torch.optim.Optimizer) -> bool:
    """Load the saved optimiser state; False when the checkpoint holds none."""
    from safetensors.torch import load_file

    tdir = Path(ckpt) / TRAINER_DIR
    if not (tdir / "optimizer.json").is_file():
        return False
    plain = read_json(tdir / "optimizer.json")
    tensors = load_file(str(tdir / "optimizer.safetensors"))
    try:
        loaded = optimizer_from_flat(tensors, plain)
        _check_shapes(loaded, optimizer)
        optimizer.load_state_dict(loaded)
    except (ValueError, KeyError) as e:
        raise ValueError(
            f"{ckpt}: optimiser state does not fit this run (were other parameters frozen or "
            f"LoRA toggled?): {e}"
        ) from e
    return True


def _check_shapes(loaded: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
    """torch checks only group sizes; per-parameter tensors must also have the right shapes."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    saved = [i for g in loaded["param_groups"] for i in g["params"]]
    if len(saved) != len(params):
        raise ValueError(f"{len(saved)} saved parameters, {len(params)} in the optimiser")
    index = {pid: n for n, pid in enumerate(saved)}
    for pid, entry in loaded["state"].items():
        shape = params[index[pid]].shape
        for name, value in entry.items():
            if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape != shape:
                raise ValueError(
                    f"state {name!r} of parameter {pid}: shape "
                    f"{tuple(value.shape)} vs parameter {tuple(shape)}"
                )


def load_adapter(ckpt: str | os.PathLike) -> dict[str, torch.Tensor] | None:
    from safetensors.torch import load_file

    path = Path(ckpt) / TRAINER_DIR / "adapter.safetensors"
    return load_file(str(path)) if path.is_file() else None


def restore_rng(ckpt: str | os.PathLike, state: dict[str, Any]) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(Path(ckpt) / TRAINER_DIR / "rng.safetensors"))
    torch.set_rng_state(tensors["torch_cpu"])
    if "torch_cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["torch_cuda"])
    rng = state.get("rng") or {}
    if "python" in rng:
        version, inner, gauss = rng["python"]
        random.setstate((version, tuple(inner), gauss))
    if "numpy" in rng:
        np_state = dict(rng["numpy"])
        inner_np = np_state["state"]
        np_state["state"] = {
            "key": np.asarray(inner_np["key"], dtype=np.uint32),
            "pos": int(inner_np["pos"]),
        }
        np.random.set_state(np_state)
