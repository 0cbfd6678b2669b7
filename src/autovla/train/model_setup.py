"""Model side of training: load or build the AutoVLA, freeze parts, add LoRA, checkpointing.

All model construction goes through `autovla.model.checkpoint` (AutoVLA / build_model); this
module only decides what is trained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from autovla.train.config import LoraConfig, ModelSource


class CodebookMismatchError(ValueError):
    """The codebook given in the config is not the one the model's action tokens mean."""


def load_codebook(path: str) -> Any:
    from autovla.tokenizer import Codebook

    return Codebook.load(path)


def check_codebook(vla: Any, codebook_path: str, where: str) -> None:
    given = load_codebook(codebook_path)
    ours = vla.codebook
    if given.size != ours.size or not torch.allclose(
        given.contours.cpu(), ours.contours.cpu(), atol=1e-6
    ):
        raise CodebookMismatchError(
            f"codebook {codebook_path} ({given.size} tokens) does not match the codebook of "
            f"{where} ({ours.size} tokens): the action tokens would mean other motions"
        )


def load_vla(src: ModelSource, checkpoint: str | Path | None = None, dtype: Any = None) -> Any:
    """The AutoVLA to train: from `checkpoint` when given (in `dtype`; None: the dtype its
    config names), else from the configured source."""
    from autovla.model.checkpoint import AutoVLA, build_model, is_model_dir

    if checkpoint is not None:
        vla = AutoVLA.from_pretrained(checkpoint, dtype=dtype)
        where = str(checkpoint)
    elif src.path is not None and is_model_dir(src.path):
        vla = AutoVLA.from_pretrained(src.path)
        where = src.path
    else:
        preset = src.preset or "qwen2.5-vl-3b"  # a pretrained path without a preset
        check_weights_available(src, preset)
        return build_model(
            preset,
            load_codebook(src.codebook),
            seed=src.seed,
            source=src.path,
            allow_random=src.path is None and src.random_weights,
            random_weights=src.random_weights,
            action_init=src.action_init,
            number_init=src.number_init,
        )
    if src.codebook is not None:
        check_codebook(vla, src.codebook, where)
    return vla


def check_weights_available(src: ModelSource, preset: str) -> None:
    """The weights a fresh build starts from exist here (nothing is downloaded): errors name
    the config field and say what to give instead."""
    from autovla.model.backbone import get_preset, resolve_pretrained
    from autovla.model.checkpoint import CheckpointError

    if src.path is not None:
        if not Path(src.path).exists() and resolve_pretrained(src.path) is None:
            raise CheckpointError(
                f"model.path {src.path}: no such directory (nor a model id in the local "
                "Hugging Face cache)"
            )
        if src.codebook is None:  # an existing directory without autovla.json
            raise CheckpointError(
                f"model.path {src.path} is not an AutoVLA directory (no autovla.json); to "
                "build one from pretrained Qwen2.5-VL weights there, also give model.codebook"
            )
        return
    published = get_preset(preset).pretrained
    if published is None or src.random_weights or resolve_pretrained(published) is not None:
        return
    raise CheckpointError(
        f"model.preset {preset}: its weights ({published}) are not in the local Hugging Face "
        f"cache; give model.path=/path/to/{published.rsplit('/', 1)[-1]} (a downloaded copy), "
        "or model.random_weights=true to train random weights (benchmarks only)"
    )


def describe_source(vla: Any, src: ModelSource, checkpoint: str | Path | None = None) -> str:
    """Where the weights about to be trained come from, for the opening log line."""
    from autovla.model.checkpoint import is_model_dir

    base = vla.info.get("base_model")
    if base is None:
        first = ""
    elif str(base).startswith("random:"):
        first = f"random {str(base).removeprefix('random:')} weights"
    else:
        first = str(base)
    if checkpoint is not None:
        where = f"checkpoint {checkpoint}"
    elif src.path is not None and is_model_dir(src.path):
        where = f"AutoVLA directory {src.path}"
    else:
        return f"a new model from {first}"
    return f"{where} (first built from {first})" if first else where


def set_trainable(model: Any, freeze_vision: bool, freeze_language: bool) -> None:
    """requires_grad per part: vision encoder (with its merger) / language model + output head."""
    model.requires_grad_(True)
    if freeze_vision:
        model.model.visual.requires_grad_(False)
    if freeze_language:
        model.model.language_model.requires_grad_(False)
        model.lm_head.requires_grad_(False)


def master_precision(model: Any, frozen_to: torch.dtype | None = None) -> None:
    """Trainable parameters in float32 (AdamW on bfloat16 weights would lose small updates;
    bf16 runs compute under autocast); frozen ones stay in the dtype they were loaded in (a
    bfloat16 base under float32 LoRA adapters: half the memory of an all-float32 model), or
    go to `frozen_to` (a resumed run putting them back). Buffers are left as they are."""
    for p in model.parameters():
        if not p.is_floating_point():
            continue
        dtype = torch.float32 if p.requires_grad else frozen_to
        if dtype is not None and p.dtype != dtype:
            p.data = p.data.to(dtype)


def frozen_dtype(model: Any) -> str | None:
    """The dtype of the frozen floating-point parameters (None when everything trains)."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point() and not p.requires_grad}
    if len(dtypes) > 1:
        raise ValueError(f"frozen parameters in several dtypes: {sorted(map(str, dtypes))}")
    return str(dtypes.pop()).removeprefix("torch.") if dtypes else None


def apply_lora(model: Any, cfg: LoraConfig) -> Any:
    """Inject LoRA adapters in place (the base model object now carries them); returns the
    PeftModel, which is used only to read and write the adapter weights. Adapters are made in
    float32 whatever the base's dtype (peft's default)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    from autovla.train.lora_merge import check_mergeable

    pcfg = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        bias="none",
    )
    peft_model = get_peft_model(model, pcfg)
    check_mergeable(peft_model)
    return peft_model


def adapter_state(
    peft_model: Any, state_dict: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """The adapter weights (peft's naming); from `state_dict` when given: a gathered (FSDP)
    full state dict of the base model with its LoRA layers."""
    from peft import get_peft_model_state_dict

    if state_dict is not None:
        state_dict = {f"base_model.model.{k}": v for k, v in state_dict.items()}
    return get_peft_model_state_dict(peft_model, state_dict=state_dict)


def load_adapter_state(peft_model: Any, state: dict[str, torch.Tensor]) -> None:
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(peft_model, state)


def enable_gradient_checkpointing(model: Any) -> None:
    # Non-reentrant: works with frozen inputs (a frozen vision encoder / embeddings).
    opts = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # the newer transformers name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=opts)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=opts)
    model.config.use_cache = False


def param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters: decay on matrices, none on biases and norms (the usual AdamW split)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise ValueError("no trainable parameters (check train.freeze_* and train.lora)")
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def count_params(model: Any) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
