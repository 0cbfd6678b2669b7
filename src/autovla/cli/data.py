"""`autovla data ...`: validate and describe datasets (converters register here too).

Text that comes from data (paths, ids, category names) is printed without rich markup: an id
like `[red]` or `a[/b]` is shown as written, never interpreted or crashing the printer.
"""

from __future__ import annotations

from pathlib import Path

import typer

from autovla.cli.common import console, fail, table

app = typer.Typer(no_args_is_help=True)


@app.command()
def validate(
    path: Path = typer.Argument(..., help="Dataset directory or manifest file."),
    images: bool = typer.Option(True, help="Check that every image exists and decodes."),
    max_errors: int = typer.Option(200, help="Print at most this many errors (all are counted)."),
) -> None:
    """Check every record, id and image of a dataset; exit 1 on any error."""
    from autovla.data.validate import validate_dataset

    try:
        valid, errors = validate_dataset(path, check_images=images)
    except FileNotFoundError as e:
        raise fail(str(e)) from None
    for e in errors[:max_errors]:
        typer.echo(str(e))  # plain: a person greps these, rich would wrap them
    if len(errors) > max_errors:
        console.print(f"... and {len(errors) - max_errors} more")
    if errors:
        bad = len({(e.file, e.line) for e in errors if e.line > 0})  # line 0: the whole dataset
        if bad == 0 and valid == 0:
            raise fail(f"{path}: no records")
        raise fail(
            f"{_count(len(errors), 'error')} in {_count(bad, 'record')} "
            f"({_count(valid, 'record')} valid)"
        )
    console.print(f"ok: {_count(valid, 'record')} valid")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n:,} {noun}s"


@app.command()
def stats(path: Path = typer.Argument(..., help="Dataset directory or manifest file.")) -> None:
    """Counts by source, split, scenario, instruction, complexity; speed and path length."""
    from autovla.data.manifest import ManifestError
    from autovla.data.stats import CATEGORIES, dataset_stats

    try:
        st = dataset_stats(path)
    except (FileNotFoundError, ManifestError) as e:
        raise fail(str(e)) from None
    typer.echo(f"{st.total} samples in {path}")
    for cat in CATEGORIES:
        rows = [
            (k, n, f"{100 * n / max(st.total, 1):.1f}%") for k, n in st.counts[cat].most_common()
        ]
        console.print(table(cat, [cat, "count", "share"], rows))
    for name, values, unit in (
        ("speed now", st.speeds, "m/s"),
        ("future path length", st.path_lengths, "m"),
    ):
        q = st.quantiles(values)
        if q:
            console.print(table(f"{name} ({unit})", ["", *q], [(name, *q.values())]))


# --- converters from real datasets -------------------------------------------------------
convert_app = typer.Typer(
    no_args_is_help=True,
    help="Convert NAVSIM/OpenScene, nuScenes and Waymo E2E data to DrivingSample datasets.",
)
app.add_typer(convert_app, name="convert")

_WORKERS = typer.Option(1, "--workers", help="Processes converting units in parallel.")
_SHARD = typer.Option(
    None, "--shard", help="I/N: convert only this shard of the units (1-based; SLURM arrays)."
)
_SKIP_BAD = typer.Option(
    False, "--skip-bad", help="Skip bad records/files, count them and go on (default: stop)."
)
_COPY = typer.Option(False, "--copy-images", help="Copy images under --out (default: in place).")
_SIZE = typer.Option(None, "--size", help="WxH: resize copied images, e.g. 640x360.")
_QUIET = typer.Option(False, "--quiet", help="No progress bar.")


def _run_convert(make, out: Path, workers: int, shard, skip_bad: bool, copy, size, quiet, desc):
    """Shared body of the convert commands: options, run, summary, errors to the user."""
    from autovla.data.sources.runner import (
        ConvertError,
        ImageOptions,
        parse_shard,
        parse_size,
        run_conversion,
    )

    try:
        shard_t = parse_shard(shard)
        images = ImageOptions(copy=copy or size is not None, size=parse_size(size))
        conv = make(images)
        units = conv.units()
        summary = run_conversion(
            units,
            conv,
            out,
            shard=shard_t,
            workers=workers,
            skip_bad=skip_bad,
            progress=not quiet,
            desc=desc,
        )
    except ConvertError as e:
        raise fail(f"{e}\n(use --skip-bad to skip bad input and go on)") from None
    except (FileNotFoundError, ValueError) as e:
        raise fail(str(e)) from None
    rows = [
        ("units converted", summary.units_done),
        ("units already done", summary.units_resumed),
        ("samples written", summary.written),
    ]
    rows += [(f"skipped: {why}", n) for why, n in summary.skipped.most_common()]
    console.print(table(f"{desc} -> {out}", ["", "count"], rows))
    for ex in summary.examples[:5]:
        typer.echo(f"  e.g. {ex}")


@convert_app.command()
def navsim(
    logs: Path = typer.Option(
        ...,
        "--logs",
        help="navsim_logs/ (or navsim_logs/<split>/). Log pickles can run code: "
        "convert only logs from a trusted source (they are read with a restricted unpickler).",
    ),
    sensor_blobs: Path = typer.Option(..., "--sensor-blobs", help="sensor_blobs/ directory."),
    out: Path = typer.Option(..., "--out", help="Output dataset directory."),
    split: str | None = typer.Option(
        None,
        "--split",
        help="Split name written to the samples (default: the logs' folder, navsim_logs/<split>/).",
    ),
    stride: int | None = typer.Option(
        None,
        "--stride",
        help="Frames between scene starts (default 14, no overlap; 1 with --scene-filter, since "
        "NAVSIM's filters list scenes starting at every frame).",
    ),
    scene_filter: Path | None = typer.Option(
        None,
        "--scene-filter",
        help="Convert only these scenes: tokens one per line, or NAVSIM's scene-filter YAML "
        "with a `tokens` list (navtrain.yaml, navtest.yaml).",
    ),
    roadblocks: bool = typer.Option(
        True,
        "--require-roadblocks/--any-frame",
        help="Keep only scenes whose frame has roadblocks.",
    ),
    trust_pickles: bool = typer.Option(
        False, "--trust-pickles", help="Allow any class in the pickles (trusted logs only)."
    ),
    workers: int = _WORKERS,
    shard: str | None = _SHARD,
    skip_bad: bool = _SKIP_BAD,
    copy_images: bool = _COPY,
    size: str | None = _SIZE,
    quiet: bool = _QUIET,
) -> None:
    """NAVSIM / OpenScene log pickles -> samples (4 history + 10 future frames per scene)."""
    from autovla.data.scene_filter import read_scene_filter
    from autovla.data.sources.navsim import NavsimConverter

    tokens = read_scene_filter(scene_filter) if scene_filter is not None else None
    if stride is None:
        stride = 1 if tokens is not None else 14
    if stride < 1:
        raise fail(f"--stride must be at least 1, got {stride}")

    def make(images):
        return NavsimConverter(
            logs,
            sensor_blobs,
            out,
            split=split,
            stride=stride,
            require_roadblocks=roadblocks,
            images=images,
            trust_pickles=trust_pickles,
            scene_filter=tokens,
        )

    _run_convert(make, out, workers, shard, skip_bad, copy_images, size, quiet, "navsim")


@convert_app.command()
def nuscenes(
    dataroot: Path = typer.Option(..., "--dataroot", help="nuScenes root (samples/, v1.0-*/)."),
    version: str = typer.Option("v1.0-mini", "--version", help="v1.0-mini | v1.0-trainval."),
    out: Path = typer.Option(..., "--out", help="Output dataset directory."),
    split: str | None = typer.Option(
        None, "--split", help="Split name written to the samples (default from --version)."
    ),
    scenes: Path | None = typer.Option(
        None,
        "--scenes",
        help="Convert only the scenes named in this file, one per line (e.g. the official "
        "train or val list, docs/real-datasets.md); give --split with it.",
    ),
    can_bus: Path | None = typer.Option(
        None, "--can-bus", help="CAN-bus expansion dir (default: <dataroot>/can_bus if present)."
    ),
    drivelm: Path | None = typer.Option(None, "--drivelm", help="DriveLM-nuScenes QA JSON."),
    instruction_rule: str = typer.Option(
        "reference",
        "--instruction-rule",
        help="reference: lateral offset 8 s ahead (AutoVLA's preprocessing, the default); "
        "uniad: offset at 3 s (UniAD / ST-P3).",
    ),
    workers: int = _WORKERS,
    shard: str | None = _SHARD,
    skip_bad: bool = _SKIP_BAD,
    copy_images: bool = _COPY,
    size: str | None = _SIZE,
    quiet: bool = _QUIET,
) -> None:
    """nuScenes keyframes -> samples (JSON tables read directly, no devkit)."""
    from autovla.data.scene_filter import read_scene_filter
    from autovla.data.sources.nuscenes import NuScenesConverter

    names = read_scene_filter(scenes) if scenes is not None else None  # one name per line
    if names is not None and split is None:
        raise fail("--scenes needs --split: the split name those scenes get (e.g. train, val)")

    def make(images):
        return NuScenesConverter(
            dataroot,
            version,
            out,
            split=split,
            can_bus=can_bus,
            drivelm=drivelm,
            images=images,
            instruction_rule=instruction_rule,
            scenes=names,
        )

    _run_convert(make, out, workers, shard, skip_bad, copy_images, size, quiet, "nuscenes")


@convert_app.command()
def waymo(
    tfrecords: list[str] = typer.Option(
        ..., "--tfrecords", help="Glob(s) of WOD-E2E tfrecord files (quote them)."
    ),
    out: Path = typer.Option(..., "--out", help="Output dataset directory."),
    split: str | None = typer.Option(None, "--split", help="Split (default from the file name)."),
    clusters: Path | None = typer.Option(
        None, "--clusters", help="JSON {context name: scenario cluster} for per-cluster RFS."
    ),
    workers: int = _WORKERS,
    shard: str | None = _SHARD,
    skip_bad: bool = _SKIP_BAD,
    size: str | None = typer.Option(
        None, "--size", help="WxH: resize the JPEGs written under --out, e.g. 640x360."
    ),
    quiet: bool = _QUIET,
) -> None:
    """Waymo E2E tfrecords -> samples (own record reader with CRC checks; no TensorFlow).

    The camera images live inside the records, so their JPEGs are always written under
    --out (there is nothing to reference in place); --size resizes them.
    """
    import glob

    from autovla.data.sources.waymo import WaymoConverter
    from autovla.io import read_json

    files = sorted({Path(f) for pattern in tfrecords for f in glob.glob(pattern)})
    if not files:
        raise fail(f"no files match {' '.join(tfrecords)}")
    cluster_map = read_json(clusters) if clusters else None

    def make(images):
        return WaymoConverter(files, out, split=split, images=images, clusters=cluster_map)

    _run_convert(make, out, workers, shard, skip_bad, False, size, quiet, "waymo")


# --- metric caches (PDM-score inputs) ----------------------------------------------------
metric_cache_app = typer.Typer(
    no_args_is_help=True,
    help="Build metric caches (what the PDM score needs) for converted datasets.",
)
app.add_typer(metric_cache_app, name="metric-cache")


@metric_cache_app.command("navsim")
def metric_cache_navsim(
    logs: Path = typer.Option(
        ...,
        "--logs",
        help="navsim_logs/ (or navsim_logs/<split>/) the dataset was converted from. Log "
        "pickles can run code: use logs from a trusted source only.",
    ),
    maps: Path = typer.Option(
        ...,
        "--maps",
        help="nuPlan maps root: <location>/<version>/map.gpkg and "
        "nuplan-maps-v1.0.json (docs/navsim.md).",
    ),
    data: Path = typer.Option(..., "--data", help="The converted NAVSIM dataset (updated)."),
    scene_filter: Path | None = typer.Option(
        None,
        "--scene-filter",
        help="Only these scenes: tokens one per line, or a NAVSIM "
        "scene-filter YAML with a `tokens` list (e.g. navtest.yaml).",
    ),
    trust_pickles: bool = typer.Option(
        False, "--trust-pickles", help="Allow any class in the pickles (trusted logs only)."
    ),
    workers: int = _WORKERS,
    shard: str | None = _SHARD,
    skip_bad: bool = _SKIP_BAD,
    quiet: bool = _QUIET,
) -> None:
    """NAVSIM scenes + nuPlan maps -> metric caches for PDMS; sets each sample's `scoring`.

    A cache per scene (route, centerline, drivable map, interpolated tracks, PDM-Closed
    reference) goes to <data>/metric_cache/<log>/<token>.npz (docs/navsim.md)."""
    from autovla.data.manifest import ManifestError
    from autovla.data.scene_filter import read_scene_filter
    from autovla.data.sources.runner import ConvertError, parse_shard, run_conversion
    from autovla.scoring.cache_job import CACHE_DIR, MetricCacheJob, attach_caches

    try:
        shard_t = parse_shard(shard)
        tokens = read_scene_filter(scene_filter) if scene_filter is not None else None
        job = MetricCacheJob(logs, maps, data, tokens, trust_pickles)
        units = job.units()
        if not units:
            raise ValueError(
                f"no NAVSIM samples{' in the scene filter' if tokens else ''} in {data}"
            )
        if workers > 1:
            job.preload()
        summary = run_conversion(
            units,
            job,
            job.root / CACHE_DIR,
            shard=shard_t,
            workers=workers,
            skip_bad=skip_bad,
            progress=not quiet,
            desc="metric cache",
            done=job.done,
            manifests=False,
        )
        updated = attach_caches(data)
    except ConvertError as e:
        import contextlib

        with contextlib.suppress(OSError, ValueError):  # caches built so far stay referenced
            attach_caches(data)
        raise fail(f"{e}\n(use --skip-bad to skip bad scenes and go on)") from None
    except (FileNotFoundError, ValueError, ManifestError) as e:
        raise fail(str(e)) from None
    rows = [
        ("logs done now", summary.units_done),
        ("logs already done", summary.units_resumed),
        ("caches written", summary.written),
        ("samples given a cache", updated),
    ]
    rows += [(f"skipped: {why}", n) for why, n in summary.skipped.most_common()]
    console.print(table(f"metric cache -> {job.root / CACHE_DIR}", ["", "count"], rows))
    for ex in summary.examples[:5]:
        typer.echo(f"  e.g. {ex}")
