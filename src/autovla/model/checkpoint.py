"""The AutoVLA model directory: backbone + tokenizer with action tokens + processor + codebook.

One self-contained directory, loadable offline:

    config.json, model.safetensors, generation_config.json   (the Qwen2.5-VL model)
    tokenizer.json, tokenizer_config.json, processor_config.json, ...   (the processor)
    codebook.safetensors       (the action codebook)
    prompt_format.yaml         (the prompt wording the model was trained with)
    autovla.json               (format version, action-token range, trajectory settings)
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autovla.data.schema import FUTURE_STEPS, STEP_SECONDS
from autovla.io import write_json
from autovla.model.backbone import (
    QWEN_3B_ID,
    Preset,
    build_random,
    get_preset,
    load_pretrained,
    resolve_pretrained,
)
from autovla.model.directory import (
    CODEBOOK_FILE,
    INFO_FILE,
    CheckpointError,
    check_loaded,
    check_model_dir,
)
from autovla.model.prompts import PromptFormat, load_format

DIR_FORMAT_VERSION = 1


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class AutoVLA:
    """A Qwen2.5-VL model that plans with `<action_i>` tokens, and everything to run it."""

    model: Any  # Qwen2_5_VLForConditionalGeneration
    processor: Any  # Qwen2_5_VLProcessor
    codebook: Any  # autovla.tokenizer.Codebook
    fmt: PromptFormat
    action_start: int  # token id of <action_0>
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def num_actions(self) -> int:
        return int(self.codebook.size)

    @property
    def action_end(self) -> int:
        """One past the last action token id."""
        return self.action_start + self.num_actions

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    def action_ids_to_tokens(self, token_ids: list[int]) -> list[int]:
        """Codebook indices of vocabulary ids (which must be action tokens)."""
        return [int(t) - self.action_start for t in token_ids]

    # --- save / load ---------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out)
        self.processor.save_pretrained(out)
        self.codebook.save(out / CODEBOOK_FILE)
        self.fmt.save(out)
        info = dict(self.info)
        info.update(
            {
                "format": "autovla-model",
                "format_version": DIR_FORMAT_VERSION,
                "prompt_format": {"name": self.fmt.name, "version": self.fmt.version},
                "action_token_start": self.action_start,
                "num_action_tokens": self.num_actions,
                "codebook_file": CODEBOOK_FILE,
                "codebook_sha256": _sha256(out / CODEBOOK_FILE),
                "future_steps": FUTURE_STEPS,
                "step_seconds": STEP_SECONDS,
            }
        )
        write_json(out / INFO_FILE, info)
        return out

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        device: Any = "cpu",
        dtype: Any = None,
        fmt: str | os.PathLike | PromptFormat | None = None,
    ) -> AutoVLA:
        """Load a model directory; `fmt` overrides the stored prompt format."""
        from autovla.tokenizer import Codebook

        d = Path(directory)
        info_path = d / INFO_FILE
        # every file checked before transformers reads one (it fills gaps with a full-size model)
        info = check_model_dir(d, need_format=fmt is None)
        if info.get("format_version", 0) > DIR_FORMAT_VERSION:
            raise CheckpointError(
                f"{info_path}: format_version {info.get('format_version')} is newer than "
                f"this code ({DIR_FORMAT_VERSION})"
            )
        cb_path = d / info.get("codebook_file", CODEBOOK_FILE)
        if not cb_path.exists():
            raise CheckpointError(f"{d}: codebook file {cb_path.name} is missing")
        if info.get("codebook_sha256") and _sha256(cb_path) != info["codebook_sha256"]:
            raise CheckpointError(
                f"{cb_path}: the codebook differs from the one the model was saved with "
                "(sha256 mismatch); its action tokens would mean other motions"
            )
        codebook = Codebook.load(cb_path)
        fmt_obj = load_format(fmt if fmt is not None else d)
        try:  # the files passed check_model_dir; what transformers still refuses is named here
            model, processor = load_pretrained(d, dtype=dtype, device=None)
            check_chat_template(processor)
        except Exception as e:
            raise CheckpointError(
                f"{d}: transformers cannot load it: {type(e).__name__}: {e}"
            ) from e
        check_loaded(model, processor, d)
        model.to(device)
        vla = cls(model, processor, codebook, fmt_obj, int(info["action_token_start"]), info)
        check_action_tokens(vla, where=str(d))
        return vla


def is_model_dir(path: str | os.PathLike) -> bool:
    """An AutoVLA model directory (as opposed to, e.g., a pretrained Qwen2.5-VL one)."""
    return (Path(path) / INFO_FILE).is_file()


def check_chat_template(processor: Any) -> None:
    """The chat template renders a minimal conversation (a broken one would fail at plan time)."""
    messages = [{"role": "user", "content": [{"type": "text", "text": "x"}]}]
    processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def check_action_tokens(vla: AutoVLA, where: str = "model") -> None:
    """The tokenizer's <action_i> tokens, the embedding rows and the codebook must agree."""
    from autovla.model.inputs import action_id_range

    first, count = action_id_range(vla.tokenizer)
    size = vla.codebook.size
    if count == 0:
        raise CheckpointError(f"{where}: the tokenizer has no <action_i> tokens")
    if count != size:
        raise CheckpointError(
            f"{where}: the tokenizer has {count} action tokens but the codebook has {size}"
        )
    if first != vla.action_start:
        raise CheckpointError(
            f"{where}: <action_0> has id {first}, the model info says {vla.action_start}"
        )
    rows = vla.model.get_input_embeddings().weight.shape[0]
    if first + count > rows:
        raise CheckpointError(
            f"{where}: action tokens need {first + count} embedding rows, model has {rows}"
        )


def _mean_init_rows(model: Any, start: int, stop: int, reference_rows: int) -> None:
    """Set embedding (and untied output) rows [start, stop) to the mean of the first rows."""
    import torch

    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[start:stop] = emb[:reference_rows].mean(0, keepdim=True)
        head = model.get_output_embeddings()
        if head is not None and head.weight.data_ptr() != emb.data_ptr():
            head.weight[start:stop] = head.weight[:reference_rows].mean(0, keepdim=True)


def _fourier_init(model: Any, rows: Any, z: Any, seed: int, ell: float = 0.5) -> None:
    """Rows `rows` of the embedding (and untied output) matrix := the mean of the rows before
    the first of them plus random Fourier features of the standardised values `z` (N, D),
    scaled to the spread of those rows: an RBF kernel of bandwidth `ell` standard deviations,
    so rows for nearby values start alike."""
    import torch

    first = int(min(rows))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        head = model.get_output_embeddings()
        mats = [emb]
        if head is not None and head.weight.data_ptr() != emb.data_ptr():
            mats.append(head.weight)
        for w in mats:
            d = w.shape[1]
            omega = torch.randn(z.shape[1], d, generator=g, dtype=torch.float64) / ell
            phase = torch.rand(d, generator=g, dtype=torch.float64) * 2 * math.pi
            feat = torch.cos(z @ omega + phase) * math.sqrt(2.0)  # unit variance per entry
            ref = w[:first].double()
            spread = (ref - ref.mean(0)).std()
            w[list(rows)] = (ref.mean(0) + spread * feat).to(w.dtype)


def geometry_init_rows(model: Any, start: int, end_poses: Any, seed: int = 0) -> None:
    """Give the action tokens' embedding (and untied output) rows a geometric prior.

    Mean initialisation makes every action token identical, so the output layer learns each
    of the K motions on its own; a random model of a few hundred thousand weights then needs
    far more steps than it gets. Here row k is the mean row plus random Fourier features of
    token k's end pose (standardised x, y, heading): tokens for similar motions start with
    similar rows, so what is learnt for one motion carries over to its neighbours.
    """
    import torch

    poses = end_poses.detach().to("cpu", torch.float64)
    z = (poses - poses.mean(0)) / poses.std(0).clamp_min(1e-6)
    _fourier_init(model, range(start, start + len(z)), z, seed)


def number_init_rows(model: Any, tokenizer: Any, seed: int = 0) -> list[int]:
    """Give the number tokens of a random-weight tokenizer ("0".."9", "00".."99") rows that
    encode their value, so "8" starts next to "9" and far from "2": the model reads the current
    speed ("8.757" -> 8 . 75 7) by value rather than as unrelated symbols. Returns the ids."""
    import torch

    vocab = tokenizer.get_vocab()
    numbers = sorted(
        (int(t), i) for t, i in vocab.items() if t.isascii() and t.isdigit() and len(t) <= 2
    )
    if not numbers:
        return []
    values = torch.tensor([[float(v)] for v, _ in numbers], dtype=torch.float64)
    z = (values - values.mean(0)) / values.std(0).clamp_min(1e-6)
    ids = [i for _, i in numbers]
    _fourier_init(model, ids, z, seed + 1, ell=0.1)
    return ids


def add_tokens_to_model(vla_model: Any, tokenizer: Any, fmt: PromptFormat, num_actions: int) -> int:
    """Add the format's structure tokens and K action tokens; resize and mean-initialise.

    Returns the id of <action_0>.
    """
    from autovla.tokenizer.action import add_action_tokens

    before = len(tokenizer)
    missing = [t for t in fmt.structure_tokens if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing)
    ids = list(add_action_tokens(tokenizer, num_actions))
    if ids != list(range(ids[0], ids[0] + num_actions)):
        raise CheckpointError("action tokens did not get contiguous ids")
    rows = vla_model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        vla_model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    # Rows of ids added now (they may also sit in a checkpoint's unused padding rows).
    _mean_init_rows(vla_model, before, len(tokenizer), reference_rows=before)
    return ids[0]


def build_model(
    preset: str | Preset,
    codebook: Any,
    seed: int = 0,
    fmt: str | os.PathLike | PromptFormat | None = None,
    source: str | os.PathLike | None = None,
    dtype: Any = None,
    device: Any = "cpu",
    allow_random: bool = True,
    random_weights: bool = False,
    action_init: str = "mean",
    number_init: bool = False,
) -> AutoVLA:
    """A fresh AutoVLA: a preset backbone (a name, or a `Preset`, e.g. a preset with fewer
    layers) plus the codebook's action tokens.

    For `qwen2.5-vl-3b` the pretrained weights are loaded from `source` (default: the hub id,
    from the local cache only) when available; otherwise the architecture is built from its
    config with random weights when `allow_random` (speed benchmarks), else an error.
    `random_weights` skips looking for pretrained weights. `action_init` is how the new
    action-token rows start: "mean" (the mean of the existing rows) or "geometry"
    (`geometry_init_rows`); `number_init` gives number tokens value-aware rows
    (`number_init_rows`, random-weight builds only).
    """
    import torch

    p = preset if isinstance(preset, Preset) else get_preset(preset)
    fmt_obj = load_format(fmt)
    info: dict[str, Any] = {"preset": p.name, "pixels": p.pixels, "seed": seed}
    resolved = None
    if not random_weights and (p.pretrained is not None or source is not None):
        resolved = resolve_pretrained(source or p.pretrained or QWEN_3B_ID)
        if resolved is None and not allow_random:
            raise CheckpointError(
                f"pretrained weights {source or p.pretrained!r} are not available offline"
            )
    if resolved is not None:
        model, processor = load_pretrained(resolved, pixels=p.pixels, dtype=dtype)
        info["base_model"] = str(source or p.pretrained)
    else:
        model, processor = build_random(p, fmt_obj, seed=seed, device=device, dtype=dtype)
        info["base_model"] = f"random:{p.name}"
    torch.manual_seed(seed)
    start = add_tokens_to_model(model, processor.tokenizer, fmt_obj, codebook.size)
    if action_init == "geometry":
        geometry_init_rows(model, start, codebook.end_poses, seed=seed)
    elif action_init != "mean":
        raise ValueError(f"action_init must be 'mean' or 'geometry', got {action_init!r}")
    info["action_init"] = action_init
    if number_init:
        if resolved is not None:
            raise ValueError("number_init is for random-weight builds (pretrained rows are kept)")
        number_init_rows(model, processor.tokenizer, seed=seed)
    info["number_init"] = number_init
    # Created (or loaded) in `dtype` already; `model.to(dtype)` would also round the rotary
    # embeddings' float32 inverse frequencies, which a reloaded model keeps in float32.
    model.to(device)
    model.eval()
    vla = AutoVLA(model, processor, codebook, fmt_obj, start, info)
    check_action_tokens(vla)
    return vla
