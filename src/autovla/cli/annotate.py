"""`autovla annotate ...`: write reasoning text for complex scenes."""

from __future__ import annotations

from pathlib import Path

import typer

from autovla.cli.common import console, fail

app = typer.Typer(no_args_is_help=True)


@app.command()
def rules(
    path: Path = typer.Argument(..., help="Dataset directory or manifest file (updated in place)."),
    all_samples: bool = typer.Option(
        False, "--all", help="Annotate every sample, not only those marked complex."
    ),
    seed: int = typer.Option(0, help="Seed for the wording (same seed, same bytes)."),
) -> None:
    """Four-part chain of thought from each sample's scene facts and future (no model needed)."""
    from autovla.annotate.rules import annotate_dataset
    from autovla.data.manifest import ManifestError

    try:
        summary = annotate_dataset(path, seed=seed, all_samples=all_samples)
    except (FileNotFoundError, ManifestError) as e:
        raise fail(str(e)) from None
    if summary.total == 0:
        raise fail(f"no samples found in {path}")
    console.print(
        f"annotated {summary.annotated} of {summary.total} samples "
        f"({summary.changed} records changed; eligible samples skipped: "
        f"{summary.skipped_no_future} without future or meta-action, "
        f"{summary.skipped_no_scene} without scene facts)"
    )


@app.command()
def complexity(
    path: Path = typer.Argument(..., help="Dataset directory or manifest file (updated in place)."),
    relabel: bool = typer.Option(
        False, "--relabel", help="Also relabel samples that already carry a complexity flag."
    ),
) -> None:
    """Label each sample complex or straightforward by the documented rule (docs/annotation.md)."""
    from autovla.annotate.complexity import label_complexity
    from autovla.data.manifest import rewrite_manifest

    total = 0

    def update(s):
        nonlocal total
        total += 1
        return label_complexity(s.model_copy(update={"complex": None}) if relabel else s)

    changed = rewrite_manifest(path, update)
    if total == 0:
        raise fail(f"no samples found in {path}")
    console.print(f"labelled {total} samples ({changed} records changed); see `autovla data stats`")


@app.command()
def vlm(
    data: Path = typer.Option(
        ..., "--data", help="Dataset directory or manifest (updated in place)."
    ),
    endpoint: str = typer.Option(
        ..., "--endpoint", help="Base URL of an OpenAI-compatible API, e.g. http://host:8000/v1."
    ),
    model: str = typer.Option(..., "--model", help="Model name the server serves."),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="OPENAI_API_KEY", help="Bearer token (or $OPENAI_API_KEY)."
    ),
    template: str = typer.Option("vlm-v1", help="Prompt template: a shipped name or a YAML path."),
    concurrency: int = typer.Option(32, min=1, help="Requests in flight."),
    timeout: float = typer.Option(120.0, min=1.0, help="Seconds per request."),
    max_retries: int = typer.Option(
        5, min=0, help="Retries per request on 429/5xx/connection errors."
    ),
    repair: int = typer.Option(2, min=0, help="Re-asks after an answer fails validation."),
    frames: str = typer.Option("latest", help="latest: one frame per camera; all: four."),
    image_size: int = typer.Option(448, min=28, help="Longer side of each image sent (px)."),
    max_tokens: int = typer.Option(512, min=16, help="Answer length cap (tokens)."),
    temperature: float = typer.Option(0.2, min=0.0),
    seed: int = typer.Option(0),
    limit: int | None = typer.Option(None, min=1, help="At most this many samples."),
    shard: str | None = typer.Option(None, help="I/N: only this shard of the samples."),
    all_samples: bool = typer.Option(
        False, "--all", help="Every sample, not only those labelled complex."
    ),
    overwrite: bool = typer.Option(False, help="Also samples that already have reasoning."),
    judge_complexity: bool = typer.Option(
        False, "--judge-complexity", help="Ask the VLM to judge complexity; report agreement."
    ),
    retry_rejected: bool = typer.Option(False, help="Ask again for samples rejected before."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Four-part chain of thought from a large VLM over an OpenAI-compatible API (resumable)."""
    from autovla.annotate.vlm import VLMOptions, annotate_vlm
    from autovla.data.sources.runner import parse_shard

    if frames not in ("latest", "all"):
        raise fail(f"--frames must be latest or all, got {frames!r}")
    opts = VLMOptions(
        endpoint=endpoint,
        model=model,
        api_key=api_key,
        template=template,
        concurrency=concurrency,
        timeout=timeout,
        max_retries=max_retries,
        repair_attempts=repair,
        frames=frames,  # type: ignore[arg-type]
        image_size=image_size,
        max_tokens=max_tokens,
        temperature=temperature,
        seed=seed,
        limit=limit,
        shard=parse_shard(shard),
        all_samples=all_samples,
        overwrite=overwrite,
        judge_complexity=judge_complexity,
        retry_rejected=retry_rejected,
        progress=not quiet,
    )
    s = annotate_vlm(data, opts)
    rejected = ", ".join(f"{k} {v}" for k, v in s.rejected.most_common()) or "none"
    rate = f", {s.sent / s.seconds:.1f} samples/s" if s.sent and s.seconds > 0 else ""
    typer.echo(
        f"{s.selected} samples selected: {s.cached} answered before, {s.sent} asked{rate}; "
        f"accepted {s.accepted} ({s.repaired} after a re-ask), rejected: {rejected}, "
        f"no answer: {s.unreachable}; "
        f"{s.requests} requests ({s.retries} retries), tokens in {s.tokens_in:,} / out "
        f"{s.tokens_out:,}; {s.written} manifest records updated"
    )
    if s.judged:
        typer.echo(f"complexity: the VLM agrees with the rule on {s.agree}/{s.judged} samples")
    if s.unreachable:
        raise fail(
            f"{s.unreachable} samples got no answer from {endpoint} after every retry (not "
            "cached); rerun the same command to ask them again"
        )
