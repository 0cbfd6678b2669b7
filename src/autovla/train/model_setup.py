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


def load_vla(src: ModelSource, checkpoint: str | Path | None = None) -> Any:
    """The AutoVLA to train: from `checkpoint` when given, else from the configured source."""
    from autovla.model.checkpoint import AutoVLA, build_model, is_model_dir

    if checkpoint is not None:
        vla = AutoVLA.from_pretrained(checkpoint)
        where = str(checkpoint)
    elif src.path is not None and is_model_dir(src.path):
        vla = AutoVLA.from_pretrained(src.path)
        where = src.path
    else:
        if src.codebook is None:  # only a path: checked by the config
            raise ValueError(
                f"model.path {src.path} is not an AutoVLA directory (no autovla.json); to build "
                "one from pretrained Qwen2.5-VL weights there, also give model.codebook"
            )
        return build_model(
            src.preset or "qwen2.5-vl-3b",  # a pretrained path without a preset
            load_codebook(src.codebook),
            seed=src.seed,
            source=src.path,
            allow_random=src.path is None,
            action_init=src.action_init,
            number_init=src.number_init,
        )
    if src.codebook is not None:
        check_codebook(vla, src.codebook, where)
    return vla


def set_trainable(model: Any, freeze_vision: bool, freeze_language: bool) -> None:
    """requires_grad per part: vision encoder (with its merger) / language model + output head."""
    model.requires_grad_(True)
    if freeze_vision:
        model.model.visual.requires_grad_(False)
    if freeze_language:
        model.model.language_model.requires_grad_(False)
        model.lm_head.requires_grad_(False)


def apply_lora(model: Any, cfg: LoraConfig) -> Any:
    """Inject LoRA adapters in place (the base model object now carries them); returns the
    PeftModel, which is used only to read and write the adapter weights."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    pcfg = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        bias="none",
    )
    return get_peft_model(model, pcfg)


def adapter_state(peft_model: Any) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(peft_model)


def load_adapter_state(peft_model: Any, state: dict[str, torch.Tensor]) -> None:
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(peft_model, state)


def merged_copy(peft_model: Any) -> Any:
    """A deep copy with the adapters merged into the weights (a plain HF model to save)."""
    import copy

    return copy.deepcopy(peft_model).merge_and_unload()


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
