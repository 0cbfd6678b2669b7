"""Save a LoRA-trained model with its adapters merged, without a second copy of the model.

The saved model files hold W + scaling * B @ A for every LoRA-targeted weight (a plain
Qwen2.5-VL that loads without peft). peft's `merge_and_unload` on a deep copy would need a
second model in memory (15 GB for the 3B model in float32); instead transformers'
`save_pretrained` gets the base weights (names, tied weights, key conversions and sharding stay
its own) and the safetensors writer below merges each targeted weight as it writes it, in the
weight's own dtype: one merged tensor in memory at a time. The file is byte for byte what
merging first and saving gives (tests/test_train_lora_merge.py).

Only plain LoRA on linear layers is merged this way; `check_mergeable` refuses the rest when
the adapters are made, not at the first save.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

_ALIGN = 8  # safetensors pads its header so the data starts 8-byte aligned


@dataclass(frozen=True)
class LoraDelta:
    """What one base weight gains on merging: transpose(B @ A) * scaling (peft's formula)."""

    a: torch.Tensor
    b: torch.Tensor
    scaling: float
    fan_in_fan_out: bool

    def merged(self, weight: torch.Tensor) -> torch.Tensor:
        delta = self.b.to(weight.device) @ self.a.to(weight.device)
        if self.fan_in_fan_out:
            delta = delta.T
        delta = delta * self.scaling
        # peft adds in place (`weight += delta`): computed in the wider dtype, rounded to the
        # weight's dtype once
        return (weight.to(delta.dtype) + delta).to(weight.dtype)


def check_mergeable(model: Any) -> None:
    """Every LoRA layer is a plain `lora.Linear` (no DoRA, no LoRA bias): what we can merge."""
    from peft.tuners.lora import Linear, LoraLayer

    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        if type(module) is not Linear:
            raise ValueError(
                f"train.lora.target_modules: {name} is a {type(module.get_base_layer()).__name__}"
                "; LoRA is supported on linear layers only (q_proj, k_proj, v_proj, o_proj, "
                "gate_proj, up_proj, down_proj, ...)"
            )
        for adapter in module.active_adapters:
            if adapter in module.lora_variant or module.lora_bias.get(adapter, False):
                raise ValueError(f"{name}: only plain LoRA adapters can be merged on saving")


def split_lora_state(
    model: Any, state_dict: Mapping[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[int, LoraDelta]]:
    """The base model's state dict out of one with LoRA layers in it (`...q_proj.base_layer.
    weight` -> `...q_proj.weight`, adapter tensors dropped), and for each targeted base weight
    (by tensor identity) the delta to merge into it. `state_dict` is `model.state_dict()` or
    a gathered (FSDP) full state dict with the same keys."""
    from peft.tuners.lora import LoraLayer

    plain = dict(state_dict)
    deltas: dict[int, LoraDelta] = {}
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        prefix = f"{name}." if name else ""
        for key in [k for k in plain if k.startswith(prefix)]:
            rest = key[len(prefix) :]
            if rest.startswith("base_layer."):
                plain[prefix + rest[len("base_layer.") :]] = plain.pop(key)
            elif rest.startswith("lora_"):
                del plain[key]
        weight = plain[prefix + "weight"]
        for adapter in module.active_adapters:
            if module.merged or adapter not in module.lora_A:
                continue
            if id(weight) in deltas:
                raise ValueError(f"{name}: more than one active LoRA adapter to merge")
            deltas[id(weight)] = LoraDelta(
                a=state_dict[f"{prefix}lora_A.{adapter}.weight"],
                b=state_dict[f"{prefix}lora_B.{adapter}.weight"],
                scaling=float(module.scaling[adapter]),
                fan_in_fan_out=bool(module.fan_in_fan_out),
            )
    return plain, deltas


def write_safetensors(
    path: str | os.PathLike,
    tensors: Mapping[str, torch.Tensor],
    metadata: dict[str, str] | None = None,
    transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
) -> None:
    """`safetensors.torch.save_file`, one tensor at a time: `transform(name, tensor)` (same
    shape and dtype) is applied as each tensor is written. The header's layout (tensor order,
    dtype names, metadata) comes from the library itself, so the bytes are the library's."""
    from safetensors.torch import save

    if sys.byteorder != "little":
        raise NotImplementedError("safetensors files are little-endian; this machine is not")
    # The library orders the tensors (by dtype, then name) and names the dtypes: ask it with
    # empty tensors of the same names and dtypes, then fill in the real shapes and offsets.
    probe = save({k: torch.empty(0, dtype=v.dtype) for k, v in tensors.items()}, metadata)
    (n,) = struct.unpack("<Q", probe[:8])
    header = json.loads(probe[8 : 8 + n])
    offset = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        t = tensors[name]
        size = t.numel() * t.element_size()
        entry["shape"] = list(t.shape)
        entry["data_offsets"] = [offset, offset + size]
        offset += size
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % _ALIGN)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name in header:
            if name == "__metadata__":
                continue
            t = tensors[name]
            if transform is not None:
                t = transform(name, t)
            data = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
            f.write(memoryview(data.numpy()))
            del data, t


@contextlib.contextmanager
def _merging_writer(deltas: dict[int, LoraDelta]) -> Iterator[set[int]]:
    """transformers writes its safetensors shards through the streaming writer, merging the
    base weights in `deltas`; yields the ids of the weights merged."""
    import transformers.modeling_utils as mu

    done: set[int] = set()

    def merge(name: str, tensor: torch.Tensor) -> torch.Tensor:
        delta = deltas.get(id(tensor))
        if delta is None:
            return tensor
        done.add(id(tensor))
        return delta.merged(tensor)

    def save_file(tensors: dict[str, torch.Tensor], filename: Any, metadata: Any = None) -> None:
        write_safetensors(filename, tensors, metadata, merge)

    original = mu.safe_save_file
    mu.safe_save_file = save_file
    try:
        yield done
    finally:
        mu.safe_save_file = original


class MergedSaver:
    """Something with `save_pretrained(dir)` that writes `model` (a transformers model with LoRA
    layers injected) with its adapters merged. `state_dict`: a gathered full state dict
    (FSDP) to write instead of `model.state_dict()`."""

    def __init__(self, model: Any, state_dict: Mapping[str, torch.Tensor] | None = None):
        self.model, self.state_dict = model, state_dict

    def save_pretrained(self, out: str | os.PathLike) -> None:
        state = self.state_dict if self.state_dict is not None else self.model.state_dict()
        plain, deltas = split_lora_state(self.model, state)
        with _merging_writer(deltas) as done:
            self.model.save_pretrained(out, state_dict=plain)
        if len(done) != len(deltas):  # never leave a checkpoint with unmerged weights
            raise RuntimeError(
                f"{out}: {len(deltas) - len(done)} of {len(deltas)} LoRA-targeted weights were "
                "not merged while saving (transformers wrote copies of them?)"
            )
