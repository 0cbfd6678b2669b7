"""Closed-loop evaluation: drive embedded-world scenarios with a planner replanning at 2 Hz.

Per episode the world's metrics (CARLA-leaderboard style: route completion x infraction
penalty = driving score, success); summed up overall and per scenario type, with the
planner's latency per replanning step and its choice of thinking mode. Writes `results.json`
and `episodes.jsonl` into the run directory, and optionally an animated GIF per chosen
episode (front camera beside a bird's-eye view).
"""

from __future__ import annotations

import datetime as _dt
import json
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from autovla import __version__
from autovla.eval import metrics as M
from autovla.eval.baselines import PlanFn
from autovla.eval.open_loop import git_commit, prepare_run_dir
from autovla.io import atomic_open, write_json

RESULTS = "results.json"
EPISODES = "episodes.jsonl"


def episode_plan(types: list[str], n: int, seed: int) -> list[tuple[str, int]]:
    """(scenario type, seed) of each episode: types in turn, seeds counting up from `seed`."""
    return [(types[i % len(types)], seed + i) for i in range(n)]


def _drive(ep, plan_fn: PlanFn | None, frames: list[Image.Image] | None) -> dict:
    """Run one episode to its end; returns its per-step statistics."""
    latencies, modes = [], []
    while not ep.done:
        if plan_fn is None:  # the expert: reads the world, not the cameras
            t0 = time.perf_counter()
            plan = ep.expert_plan()
            latencies.append(time.perf_counter() - t0)
            sample, root = ep.observe() if frames is not None else (None, None)
        else:
            sample, root = ep.observe()
            t0 = time.perf_counter()
            out = plan_fn([sample], [root])[0]
            latencies.append(time.perf_counter() - t0)
            plan = out.trajectory
            modes.append(out.mode)
        if frames is not None:
            frames.append(_gif_frame(sample, root, plan))
        ep.step(np.asarray(plan, dtype=np.float64))
    slow = [m == "slow" for m in modes if m is not None]
    return {
        "latency": latencies,
        "slow_share": float(np.mean(slow)) if slow else None,
    }


def _gif_frame(sample, root: Path, plan: np.ndarray) -> Image.Image:
    """The current front-camera frame with the plan drawn on a bird's-eye inset."""
    front = Image.open(Path(root) / sample.cameras["front"][-1]).convert("RGB")
    w, h = front.size
    canvas = Image.new("RGB", (w + h, h), (30, 30, 30))
    canvas.paste(front, (0, 0))
    from PIL import ImageDraw

    d = ImageDraw.Draw(canvas)
    scale = h / 60.0  # 60 m of road ahead fit the inset's height

    def px(x: float, y: float) -> tuple[float, float]:
        return (w + h / 2 - y * scale, h - 6 - x * scale)

    for obj in sample.scene.objects if sample.scene else []:
        x, y = obj.box[0], obj.box[1]
        d.rectangle([*px(x + 2, y + 1), *px(x - 2, y - 1)], outline=(220, 160, 60))
    d.rectangle([*px(2.4, 1.0), *px(-2.4, -1.0)], fill=(90, 160, 255))
    d.line([px(0, 0), *(px(p[0], p[1]) for p in plan)], fill=(80, 230, 120), width=2)
    return canvas


def _summary(rows: list[dict]) -> dict:
    if not rows:
        return {"n": 0}
    kinds = sorted({k for r in rows for k in r["infractions"]})
    lat = [v for r in rows for v in r["latency"]]
    slow = [r["slow_share"] for r in rows if r.get("slow_share") is not None]
    return {
        "n": len(rows),
        "driving_score": float(np.mean([r["driving_score"] for r in rows])),
        "route_completion": float(np.mean([r["route_completion"] for r in rows])),
        "infraction_penalty": float(np.mean([r["infraction_penalty"] for r in rows])),
        "success_rate": float(np.mean([r["success"] for r in rows])),
        "off_road_fraction": float(np.mean([r["off_road_fraction"] for r in rows])),
        "infractions_per_episode": {
            k: float(np.mean([r["infractions"].get(k, 0) for r in rows])) for k in kinds
        },
        "slow_share": float(np.mean(slow)) if slow else None,
        "latency": M.latency_percentiles(lat),
    }


def run_closed_loop(
    plan_fn: PlanFn | None,
    scenarios: int,
    seed: int,
    out_dir: str | Path,
    *,
    types: list[str] | None = None,
    overwrite: bool = False,
    gif_episodes: tuple[int, ...] = (),
    planner_name: str = "expert",
    model_path: str | None = None,
    image_size: tuple[int, int] = (224, 112),
    progress: bool = True,
) -> dict:
    """Drive `scenarios` episodes; `plan_fn=None` drives the world's expert."""
    from autovla.sim.closed_loop import ClosedLoopEpisode
    from autovla.sim.scenarios import SCENARIO_TYPES

    types = list(types or SCENARIO_TYPES)
    unknown = [t for t in types if t not in SCENARIO_TYPES]
    if unknown:
        raise ValueError(f"unknown scenario type(s) {unknown}; valid: {', '.join(SCENARIO_TYPES)}")
    if scenarios < 1:
        raise ValueError("--scenarios must be at least 1")
    out = prepare_run_dir(out_dir, overwrite)
    rows = []
    plan = episode_plan(types, scenarios, seed)
    for i, (scen, s) in enumerate(
        tqdm(plan, desc=f"closed loop ({planner_name})", unit="episode", disable=not progress)
    ):
        frames: list[Image.Image] | None = [] if i in gif_episodes else None
        with tempfile.TemporaryDirectory(prefix="autovla-cl-") as work:
            ep = ClosedLoopEpisode(scen, s, Path(work), image_size)
            stats = _drive(ep, plan_fn, frames)
            res = asdict(ep.result())
        row = {"episode": i, **res, **stats, "complex": SCENARIO_TYPES[scen]}
        if frames:
            gif = out / f"episode-{i:03d}-{scen}.gif"
            with atomic_open(gif, "wb") as f:
                frames[0].save(
                    f, format="GIF", save_all=True, append_images=frames[1:], duration=500, loop=0
                )
            row["gif"] = gif.name
        rows.append(row)
    by_type: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_type[r["scenario_type"]].append(r)
    results = {
        "kind": "closed_loop",
        "autovla_version": __version__,
        "git_commit": git_commit(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "planner": planner_name,
        "model_path": model_path,
        "seed": seed,
        "config": {"scenarios": scenarios, "types": types, "image_size": list(image_size)},
        "overall": _summary(rows),
        "by_scenario": {k: _summary(v) for k, v in sorted(by_type.items())},
        "by_complexity": {
            name: _summary([r for r in rows if r["complex"] == flag])
            for name, flag in (("complex", True), ("straightforward", False))
        },
    }
    with atomic_open(out / EPISODES) as f:
        for r in rows:
            f.write(json.dumps({k: v for k, v in r.items() if k != "latency"}) + "\n")
    write_json(out / RESULTS, results)
    return results


CL_KEYS = (
    "n", "driving_score", "route_completion", "infraction_penalty", "success_rate",
    "off_road_fraction", "slow_share",
)  # fmt: skip


def render_closed_loop_report(run_dir: str | Path) -> Path:
    """report.html of a closed-loop run: tables, a chart per scenario type, infractions, GIFs."""
    import base64
    import html

    from autovla.eval.report import CSS, REPORT, bar_chart, html_table, img_tag

    run = Path(run_dir)
    res = json.loads((run / RESULTS).read_text())
    overall = res["overall"]
    infractions = {k: {"per episode": v} for k, v in overall["infractions_per_episode"].items()}
    lat = {"all": overall.get("latency", {})}
    chart = bar_chart(res["by_scenario"], "driving_score")
    gifs = []
    for line in (run / EPISODES).read_text().splitlines():
        row = json.loads(line)
        if row.get("gif") and (run / row["gif"]).is_file():
            b64 = base64.b64encode((run / row["gif"]).read_bytes()).decode("ascii")
            gifs.append(
                f'<figure><img alt="episode {row["episode"]}" src="data:image/gif;base64,'
                f'{b64}"><figcaption>episode {row["episode"]}: {html.escape(row["scenario_type"])}'
                f", driving score {row['driving_score']:.3f}</figcaption></figure>"
            )
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>closed loop: {html.escape(res["planner"])}</title><style>{CSS}</style></head><body>
<h1>Closed loop: {html.escape(res["planner"])}</h1>
<p>{overall["n"]} episodes, seed {res["seed"]}, autovla {html.escape(res["autovla_version"])}
(commit {html.escape(str(res.get("git_commit")))}).</p>
<h2>Overall</h2>{html_table({"all": overall}, CL_KEYS)}
<h2>By complexity</h2>{html_table(res["by_complexity"], CL_KEYS)}
<h2>By scenario type</h2>{html_table(res["by_scenario"], CL_KEYS)}
{img_tag(chart, "driving score per scenario type") if chart else ""}
<h2>Infractions</h2>{html_table(infractions, ("per episode",)) if infractions else "<p>none</p>"}
<h2>Latency per replanning step (s)</h2>{html_table(lat, ("p50", "p90", "p99", "mean", "n"))}
{"<h2>Episodes</h2>" + "".join(gifs) if gifs else ""}
</body></html>"""
    path = run / REPORT
    with atomic_open(path) as f:
        f.write(page)
    return path
