"""Training checkpoints: the self-contained model directory plus a small `trainer/` folder.

    <out>/final -> checkpoints/step-00000100   a relative link to the last checkpoint written
    <out>/checkpoints/step-00000100/      loadable with AutoVLA.from_pretrained
        ...model files...
        trainer/state.json                stage, step, samples seen, how the run stopped,
                                          config, world size, python/numpy RNG
        trainer/optimizer.safetensors     AdamW moments by parameter name (+ optimizer.json)
        trainer/optimizer/                FSDP2 runs instead: every process's own slices of
                                          the moments (+ optimizer.json); DeepSpeed: none
        trainer/rng.safetensors           torch CPU (and CUDA) generator states, per process
        trainer/adapter.safetensors       LoRA weights (only with LoRA)

No pickle: tensors go to safetensors, everything else to JSON. The optimiser state goes through
torch.distributed.checkpoint's state-dict API. An FSDP2 run does not gather it: each process
writes its slices with torch.distributed.checkpoint (its safetensors storage, whose files name
the slices they hold), and a resumed run reads back the slices it needs, whatever the number
of processes (one process, DDP or FSDP); such a checkpoint needs a folder every process can
write. A checkpoint is written under a temporary name, fsynced and renamed, so a crash or a
kill never leaves a half-written one that looks complete; `latest_checkpoint` only considers
directories with trainer/state.json, and the next run removes the temporary leftovers.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autovla.io import read_json, write_json

TRAINER_DIR = "trainer"
STATE_FILE = "state.json"
LOCK_FILE = ".lock"
FINAL = "final"  # <out>/final: the link to the last checkpoint (what later stages read)
_STEP_RE = re.compile(r"^step-(\d+)$")
_TEMP_RE = re.compile(r"^\.step-\d+\.(tmp|old)-(\d+)$")


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
OPTIMIZER_FORMAT = 2  # keyed by parameter name (format 1, by position, is not read any more)
SHARDED_OPTIMIZER_FORMAT = 3  # the same names, the tensors in trainer/optimizer/ (DCP shards)
OPTIMIZER_SHARDS = "optimizer"


def gather_optimizer_state(model: Any, optimizer: Any, sharded: bool) -> dict[str, Any]:
    """The optimiser state keyed by parameter name, through torch.distributed.checkpoint's
    state-dict API, which gathers FSDP shards: call on every process. With `sharded` only
    the main process gets the state (on the CPU); the others get an empty dict."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=sharded, cpu_offload=sharded)
    return get_optimizer_state_dict(model, optimizer, options=opts)


def _split_state(
    state: dict[str, Any], fmt: int = OPTIMIZER_FORMAT
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimiser state dict as tensors named `<parameter>.<key>` and the plain rest."""
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, Any] = {"format": fmt, "param_groups": state["param_groups"], "state": {}}
    for pid, entry in state["state"].items():
        meta = {}
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{name}"] = value
                meta[name] = "tensor"
            else:
                meta[name] = value
        plain["state"][str(pid)] = meta
    return tensors, plain


def optimizer_to_flat(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimiser state dict into tensors (safetensors) and plain data (JSON)."""
    tensors, plain = _split_state(state)
    storages: set[int] = set()
    for key, value in tensors.items():
        value = value.detach().cpu().contiguous()
        ptr = value.untyped_storage().data_ptr()
        if ptr in storages:  # gathered FSDP states can be views of one buffer
            value = value.clone()
        storages.add(ptr)
        tensors[key] = value
    return tensors, plain


def save_sharded_optimizer(model: Any, optimizer: Any, trainer_dir: Path, is_main: bool) -> None:
    """FSDP2: every process writes its own slices of the optimiser state into
    `trainer_dir/optimizer/` through torch.distributed.checkpoint (nothing is gathered);
    the main process writes optimizer.json. Call on every process, with the same folder."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageWriter
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    tensors, plain = _split_state(
        get_optimizer_state_dict(model, optimizer), SHARDED_OPTIMIZER_FORMAT
    )
    shards = trainer_dir / OPTIMIZER_SHARDS
    dcp.save(tensors, storage_writer=HuggingFaceStorageWriter(str(shards), save_distributed=True))
    if is_main:
        write_json(trainer_dir / "optimizer.json", plain)


def optimizer_from_flat(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> dict[str, Any]:
    state = {
        pid: {
            name: tensors[f"{pid}.{name}"] if value == "tensor" else value
            for name, value in meta.items()
        }
        for pid, meta in plain["state"].items()
    }
    # JSON turned tuples (AdamW's betas) into lists
    groups = [
        {k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
        for g in plain["param_groups"]
    ]
    return {"state": state, "param_groups": groups}


def rng_state() -> dict[str, Any]:
    """This process's generator states: torch CPU (and CUDA) tensors, python and numpy."""
    version, inner, gauss = random.getstate()
    out: dict[str, Any] = {
        "torch_cpu": torch.get_rng_state(),
        "python": [version, list(inner), gauss],
        "numpy": _jsonable(np.random.get_state(legacy=False)),
    }
    if torch.cuda.is_available():
        out["torch_cuda"] = torch.cuda.get_rng_state()
    return out


def _rank_key(key: str, rank: int) -> str:
    return key if rank == 0 else f"{key}.rank{rank}"


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
    optimizer_state: dict[str, Any] | None,
    state: dict[str, Any],
    adapter: dict[str, torch.Tensor] | None = None,
    keep_last: int | None = None,
    tmp: Path | None = None,
    rng: list[dict[str, Any]] | None = None,
) -> Path:
    """Write checkpoint `step` under `root` (model via `save_model(dir)`); returns its path.

    Everything is written under a temporary name, fsynced, renamed into place and the folder
    fsynced, before older checkpoints are rotated away: a crash at any point leaves the
    previous complete checkpoint. Main process only (gather the optimiser state first, or let
    every process write its shards into `tmp`, from `temp_dir`, before). `rng`: every
    process's `rng_state()` (default: this process's), so each resumes its own draws.
    """
    root = Path(root)
    final = root / checkpoint_name(step)
    tmp = tmp or temp_dir(root, step)
    try:
        _write_into(tmp, step, save_model, optimizer_state, state, adapter, rng or [rng_state()])
    except BaseException:  # a full disk, Ctrl-C: leave nothing half-written behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():  # the same step again: set the old one aside until the new one is in
        old = root / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(root)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    if keep_last:
        for _, stale in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def link_final(out: str | os.PathLike, checkpoint: str | os.PathLike) -> Path:
    """Point `out/final` at `checkpoint` (a folder under `out`) with a relative symbolic link,
    replaced atomically (a new link under a temporary name, then renamed over the old one), so
    a reader never finds `final` missing or half made, and the run folder can be moved."""
    out = Path(out)
    link = out / FINAL
    check_final_link(out)
    target = os.path.relpath(Path(checkpoint), out)
    tmp = out / f".{FINAL}.tmp-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target, target_is_directory=True)
    os.replace(tmp, link)
    _fsync_dir(out)
    return link


def check_final_link(out: str | os.PathLike) -> None:
    """`out/final` is the trainer's link, or absent; anything else there is refused (the
    trainer would replace it)."""
    link = Path(out) / FINAL
    if link.exists() and not link.is_symlink():
        raise OutputDirError(
            f"{link} is not a link: the trainer keeps {FINAL} pointing at the last checkpoint "
            "of the run; move it away, or set output.dir to another folder"
        )


def temp_dir(root: str | os.PathLike, step: int) -> Path:
    """The folder checkpoint `step` is written into before its rename, cleared (main
    process); the writers create it."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{checkpoint_name(step)}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    return tmp


def _write_into(
    tmp: Path,
    step: int,
    save_model: Callable[[Path], Any],
    optimizer_state: dict[str, Any] | None,
    state: dict[str, Any],
    adapter: dict[str, torch.Tensor] | None,
    rng: list[dict[str, Any]],
) -> None:
    from safetensors.torch import save_file

    save_model(tmp)
    tdir = tmp / TRAINER_DIR
    tdir.mkdir(parents=True, exist_ok=True)
    if optimizer_state is not None:
        tensors, plain = optimizer_to_flat(optimizer_state)
        save_file(tensors, str(tdir / "optimizer.safetensors"))
        write_json(tdir / "optimizer.json", plain)
    # process 0 under the plain names, process r under `<name>.rank<r>`
    rng_tensors = {_rank_key(k, r): v for r, st in enumerate(rng) for k, v in st.items()
                   if isinstance(v, torch.Tensor)}  # fmt: skip
    save_file(rng_tensors, str(tdir / "rng.safetensors"))
    if adapter is not None:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in adapter.items()},
            str(tdir / "adapter.safetensors"),
        )
    # state.json last: its presence marks the checkpoint complete.
    plain_rng = [{k: st[k] for k in ("python", "numpy")} for st in rng]
    state = {**state, "step": step, "rng": plain_rng[0]}
    if len(rng) > 1:
        state["rng_ranks"] = plain_rng[1:]
    write_json(tdir / STATE_FILE, state)
    _fsync_tree(tmp)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder under `root` to disk (model savers do not fsync)."""
    for folder, _dirs, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(folder))


def remove_stale_temps(root: str | os.PathLike, every: bool = True) -> list[Path]:
    """Remove what killed saves left under `root` (`.step-N.tmp-PID`, `.step-N.old-PID`).

    `every`: all of them, for a caller that holds the output folder's lock (no save can be in
    progress); otherwise only those whose process is gone from this machine.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    stale = []
    for d in root.iterdir():
        m = _TEMP_RE.match(d.name)
        if m and d.is_dir() and (every or not _alive(int(m.group(2)))):
            shutil.rmtree(d, ignore_errors=True)
            stale.append(d)
    return stale


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class OutputDirError(ValueError):
    """An output folder a run cannot use: another run holds it, or it holds another run."""


@contextlib.contextmanager
def lock_output_dir(out: str | os.PathLike) -> Iterator[bool]:
    """Hold an exclusive lock on `out` for a run, so a second run on the same folder fails at
    once instead of interleaving checkpoints. The lock dies with its process (flock): a killed
    run never leaves the folder locked. Yields False where the file system has no locks."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK_FILE, "a+", encoding="utf-8") as f:
        try:
            import fcntl

            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise OutputDirError(
                f"{out}: another run is using this output folder (process {holder}); "
                "wait for it or set output.dir to another folder"
            ) from None
        except (ImportError, OSError):  # no flock here (another platform, some network disks)
            yield False
            return
        f.seek(0)
        f.truncate()
        f.write(f"{socket.gethostname()}:{os.getpid()}\n")
        f.flush()
        yield True


def load_trainer_state(ckpt: str | os.PathLike) -> dict[str, Any]:
    path = Path(ckpt) / TRAINER_DIR / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{ckpt}: not a training checkpoint (no {TRAINER_DIR}/{STATE_FILE})"
        )
    return read_json(path)


def restore_optimizer(
    ckpt: str | os.PathLike, model: Any, optimizer: Any, sharded: bool, is_main: bool
) -> bool:
    """Load the saved optimiser state into `optimizer` (of the prepared `model`), through
    torch.distributed.checkpoint's state-dict API: call on every process. With `sharded` the
    main process reads the file and the state is scattered to the shards. False when the
    checkpoint holds no state in the current format (the moments then start afresh)."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    tdir = Path(ckpt) / TRAINER_DIR
    meta = tdir / "optimizer.json"
    if not meta.is_file():
        return False
    plain = read_json(meta)
    fmt = plain.get("format")
    if fmt not in (OPTIMIZER_FORMAT, SHARDED_OPTIMIZER_FORMAT):
        return False
    try:
        if fmt == SHARDED_OPTIMIZER_FORMAT:
            _load_sharded_optimizer(tdir / OPTIMIZER_SHARDS, model, optimizer, plain)
        else:
            loaded: dict[str, Any] = {}
            if is_main or not sharded:
                loaded = optimizer_from_flat(load_file(str(tdir / "optimizer.safetensors")), plain)
            opts = StateDictOptions(full_state_dict=sharded, broadcast_from_rank0=sharded)
            set_optimizer_state_dict(model, optimizer, loaded, options=opts)
        if not sharded:
            _check_shapes(model, optimizer)
    except (ValueError, KeyError, RuntimeError) as e:
        raise ValueError(
            f"{ckpt}: optimiser state does not fit this run (were other parameters frozen or "
            f"LoRA toggled?): {e}"
        ) from e
    return True


def _load_sharded_optimizer(shards: Path, model: Any, optimizer: Any, plain: dict) -> None:
    """Read the slices this process holds (all of it when not sharded) from the shards that
    torch.distributed.checkpoint wrote, in place into this optimiser's state; every process."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    # this run's state as the template: its tensor names, shapes and sharding
    tensors, _ = _split_state(get_optimizer_state_dict(model, optimizer))
    saved = {f"{pid}.{name}" for pid, meta in plain["state"].items() for name, v in meta.items()
             if v == "tensor"}  # fmt: skip
    if saved != set(tensors):
        missing, extra = sorted(set(tensors) - saved), sorted(saved - set(tensors))
        raise ValueError(f"state of other parameters (not saved: {missing[:3]}, not in this "
                         f"run: {extra[:3]})")  # fmt: skip
    dcp.load(tensors, storage_reader=HuggingFaceStorageReader(str(shards)))
    set_optimizer_state_dict(model, optimizer, optimizer_from_flat(tensors, plain))


def _check_shapes(model: Any, optimizer: Any) -> None:
    """torch checks names, not shapes: every moment must have its parameter's shape."""
    names = {id(p): n for n, p in model.named_parameters()}
    for p, entry in optimizer.state.items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape != p.shape:
                raise ValueError(
                    f"state {key!r} of parameter {names.get(id(p), '?')}: shape "
                    f"{tuple(value.shape)} vs parameter {tuple(p.shape)}"
                )


def load_adapter(ckpt: str | os.PathLike) -> dict[str, torch.Tensor] | None:
    from safetensors.torch import load_file

    path = Path(ckpt) / TRAINER_DIR / "adapter.safetensors"
    return load_file(str(path)) if path.is_file() else None


def restore_rng(ckpt: str | os.PathLike, state: dict[str, Any], rank: int = 0) -> None:
    """Restore process `rank`'s generators (process 0's where the checkpoint has no states of
    that process: another number of processes, or a checkpoint from before per-process
    states)."""
    from safetensors.torch import load_file

    tensors = load_file(str(Path(ckpt) / TRAINER_DIR / "rng.safetensors"))
    own = rank > 0 and _rank_key("torch_cpu", rank) in tensors
    r = rank if own else 0
    torch.set_rng_state(tensors[_rank_key("torch_cpu", r)])
    if _rank_key("torch_cuda", r) in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors[_rank_key("torch_cuda", r)])
    ranks = state.get("rng_ranks") or []
    rng = (ranks[rank - 1] if own and rank - 1 < len(ranks) else state.get("rng")) or {}
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
