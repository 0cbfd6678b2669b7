"""`autovla model ...`: build and inspect AutoVLA model directories."""

from __future__ import annotations

from pathlib import Path

import typer

from autovla.cli.common import console, fail, table

app = typer.Typer(no_args_is_help=True)


@app.command()
def init(
    preset: str = typer.Option("tiny", help="Backbone preset: tiny, small or qwen2.5-vl-3b."),
    codebook: Path = typer.Option(..., help="Action codebook (.safetensors)."),
    out: Path = typer.Option(..., help="Model directory to write."),
    seed: int = typer.Option(0, help="Seed for random weights and the tokenizer corpus."),
    prompt_format: str = typer.Option(
        "autovla-v1",
        "--format",
        "--prompt-format",
        help="Prompt format: a bundled name (autovla-v1; autovla-waypoints-v1 answers with "
        "text waypoints instead of action tokens) or a YAML file.",
    ),
    action_init: str = typer.Option(
        "mean", help="New action-token rows: mean, or geometry (a prior from the codebook)."
    ),
    number_init: bool = typer.Option(
        False, help="Number tokens start with rows that encode their value (random weights)."
    ),
    source: str = typer.Option(
        None, help="Pretrained weights (hub id or directory); default: the preset's, if cached."
    ),
    random_ok: bool = typer.Option(
        True,
        "--random-ok/--require-pretrained",
        help="For qwen2.5-vl-3b: build random weights when the pretrained ones are not at hand.",
    ),
    dtype: str = typer.Option(
        "auto",
        help="Weight dtype: float32, bfloat16, or auto (bfloat16 for qwen2.5-vl-3b, as the "
        "published weights; float32 for the small presets). Weights are created in it "
        "directly (no float32 copy of a 3B model).",
    ),
    force: bool = typer.Option(False, help="Overwrite a non-empty output directory."),
) -> None:
    """Build a fresh AutoVLA (backbone + action tokens + processor + codebook) and save it."""
    import torch

    from autovla.model.backbone import PRESETS, quiet_transformers
    from autovla.model.checkpoint import build_model
    from autovla.tokenizer import Codebook

    quiet_transformers()
    if preset not in PRESETS:
        raise fail(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    if out.exists() and any(out.iterdir()) and not force:
        raise fail(f"{out} is not empty (use --force to overwrite)")
    if dtype not in ("auto", "float32", "bfloat16"):
        raise fail(f"--dtype must be auto, float32 or bfloat16, got {dtype!r}")
    if dtype == "auto":
        dtype = "bfloat16" if preset == "qwen2.5-vl-3b" else "float32"
    if action_init not in ("mean", "geometry"):
        raise fail(f"--action-init must be mean or geometry, got {action_init!r}")
    cb = Codebook.load(codebook)
    vla = build_model(
        preset,
        cb,
        seed=seed,
        fmt=prompt_format,
        source=source,
        allow_random=random_ok,
        dtype=getattr(torch, dtype),
        action_init=action_init,
        number_init=number_init,
    )
    vla.save_pretrained(out)
    _print_info(vla, out)


@app.command()
def info(model: Path = typer.Argument(..., help="AutoVLA model directory.")) -> None:
    """Describe a model directory: backbone size, tokens, pixel budget, prompt format."""
    from autovla.model.backbone import quiet_transformers
    from autovla.model.checkpoint import AutoVLA

    quiet_transformers()
    vla = AutoVLA.from_pretrained(model)
    _print_info(vla, model)


def _print_info(vla, where: Path) -> None:
    params = sum(p.numel() for p in vla.model.parameters())
    vision = sum(p.numel() for p in vla.model.model.visual.parameters())
    text = vla.model.config.text_config
    size = vla.processor.video_processor.size
    rows = [
        ("directory", str(where)),
        ("base model", vla.info.get("base_model", "?")),
        ("parameters", f"{params:,} ({vision:,} vision)"),
        ("text layers x hidden", f"{text.num_hidden_layers} x {text.hidden_size}"),
        ("vocabulary", f"{len(vla.tokenizer):,} tokens, {text.vocab_size:,} embedding rows"),
        ("action tokens", f"{vla.num_actions} from id {vla.action_start}"),
        ("pixels per frame", f"{size.shortest_edge} - {size.longest_edge}"),
        ("prompt format", f"{vla.fmt.name} v{vla.fmt.version} (answers: {vla.fmt.answer_kind})"),
    ]
    console.print(table("AutoVLA model", ["field", "value"], rows))
