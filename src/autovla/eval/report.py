"""A self-contained HTML report of a run: tables, charts, best and worst cases.

Images are PNGs embedded as base64, so the one file opens anywhere without a network.
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

import numpy as np

from autovla.data.manifest import dataset_root, iter_samples
from autovla.data.schema import DrivingSample
from autovla.eval.open_loop import RESULTS, read_rows
from autovla.io import atomic_open, read_json
from autovla.sim.render import ground_pixels

REPORT = "report.html"
TABLE_KEYS = (
    "n_valid", "n_parse_failures", "l2_stp3_1s", "l2_stp3_2s", "l2_stp3_3s", "l2_avg",
    "l2_uniad_1s", "l2_uniad_2s", "l2_uniad_3s", "ade", "fde", "col_avg", "pdms", "nc", "dac",
    "ttc", "comfort", "ep", "rfs", "bestk_ade", "bestk_pdms",
)  # fmt: skip
CASES = 3  # best and worst cases shown

CSS = """body{font-family:sans-serif;margin:2em}
table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}img{max-width:100%}
.case{border:1px solid #ddd;padding:1em;margin:1em 0}
pre{white-space:pre-wrap;background:#f6f6f6;padding:.5em}"""


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fig_png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    pyplot().close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def img_tag(b64: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return html.escape(str(v)) if v is not None else "-"


def html_table(rows: dict[str, dict], keys: tuple[str, ...] = TABLE_KEYS, first: str = "") -> str:
    """A table with one row per entry of `rows` and the columns of `keys` any row has."""
    cols = [k for k in keys if any(k in r for r in rows.values())]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in [first, *cols])
    body = "".join(
        f"<tr><td>{html.escape(name)}</td>"
        + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in cols)
        + "</tr>"
        for name, r in rows.items()
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def bar_chart(groups: dict[str, dict], key: str) -> str | None:
    names = [n for n, g in groups.items() if g.get(key) is not None]
    if not names:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(names) + 2), 3))
    ax.bar(range(len(names)), [groups[n][key] for n in names], color="#4c72b0")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel(key)
    ax.set_title(f"{key} per scenario type")
    return fig_png(fig)


def latency_histogram(rows: list[dict]) -> str | None:
    by_mode: dict[str, list[float]] = {}
    for r in rows:
        if r.get("valid") and r.get("latency") is not None:
            by_mode.setdefault(r.get("mode") or "none", []).append(r["latency"])
    if not by_mode:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3))
    for mode, v in by_mode.items():
        ax.hist(np.asarray(v) * 1000, bins=20, alpha=0.6, label=mode)
    ax.set_xlabel("latency per plan (ms)")
    ax.set_ylabel("plans")
    ax.legend()
    return fig_png(fig)


def bev_plot(plan: np.ndarray, sample: DrivingSample | None) -> str:
    """Plan (blue) vs truth (green) vs other agents (grey boxes, dashed futures), ego frame."""
    from autovla.geometry import box_corners

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4, 4))
    if sample is not None and sample.scene is not None:
        for o in sample.scene.objects:
            c = box_corners(np.asarray(o.box[:3]), o.box[3], o.box[4])
            ax.fill(c[:, 1], c[:, 0], color="#999", alpha=0.6)
            known = [p for p in o.future or [] if p is not None]  # null: not annotated then
            if known:
                f = np.asarray(known)
                ax.plot(f[:, 1], f[:, 0], "--", color="#999", lw=1)
    if sample is not None and sample.future is not None:
        g = sample.future_array()
        ax.plot(g[:, 1], g[:, 0], "o-", color="#2a9d4b", ms=3, label="truth")
    ax.plot(plan[:, 1], plan[:, 0], "o-", color="#1f5bd1", ms=3, label="plan")
    ego = box_corners(np.zeros(3), 4.084, 1.85)
    ax.fill(ego[:, 1], ego[:, 0], color="#e07b00", alpha=0.8, label="ego")
    reach = float(np.abs(plan[:, :2]).max())
    if sample is not None and sample.future is not None:
        reach = max(reach, float(np.abs(sample.future_array()[:, :2]).max()))
    top = max(50.0, reach + 5.0)
    ax.set_xlim(top / 2, -top / 2)  # y to the left, as seen from above driving up the page
    ax.set_ylim(-10, top)
    ax.set_aspect("equal")
    ax.set_xlabel("y (m, left)")
    ax.set_ylabel("x (m, forward)")
    ax.legend(loc="lower right", fontsize=7)
    return fig_png(fig)


def front_camera(plan: np.ndarray, sample: DrivingSample | None, root: Path | None) -> str | None:
    """The newest front image with the plan (blue) and truth (green) drawn on the ground.

    The camera model comes from the sample's meta or the dataset's dataset.json
    (`cameras.front`, the sim's format); without one the raw image is shown.
    """
    if sample is None or root is None or "front" not in sample.cameras:
        return None
    path = root / sample.cameras["front"][-1]
    if not path.is_file():
        return None
    from PIL import Image, ImageDraw

    from autovla.model.visualize import front_calibration

    image = Image.open(path).convert("RGB")
    camera = front_calibration(sample, root)
    if camera is not None:
        draw = ImageDraw.Draw(image)
        lines = [(plan, (31, 91, 209))]
        if sample.future is not None:
            lines.insert(0, (sample.future_array(), (42, 157, 75)))
        for poses, colour in lines:
            uv = ground_pixels(np.concatenate([np.zeros((1, 3)), poses]), camera)
            if uv is None:
                continue
            pts = [tuple(p) for p in uv if np.all(np.isfinite(p))]
            if len(pts) > 1:
                draw.line(pts, fill=colour, width=max(1, image.width // 160))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _load_samples(results: dict, ids: set[str]) -> tuple[dict[str, DrivingSample], Path | None]:
    data = results.get("data")
    if not data or not Path(data).exists():
        return {}, None
    found = {s.id: s for s in iter_samples(data, results.get("split")) if s.id in ids}
    return found, dataset_root(data)


def pick_cases(rows: list[dict], n: int = CASES) -> tuple[str, list[dict], list[dict]]:
    """Best and worst valid rows by PDMS when scored, else by average L2."""
    valid = [r for r in rows if r.get("valid")]
    key = "pdms" if any("pdms" in r for r in valid) else "l2_avg"
    scored = [r for r in valid if r.get(key) is not None]
    scored.sort(key=lambda r: r[key], reverse=(key == "pdms"))
    return key, scored[:n], scored[::-1][:n]


def _case_html(r: dict, key: str, sample: DrivingSample | None, root: Path | None) -> str:
    plan = np.asarray(r["plan"], dtype=np.float64)
    parts = [
        f"<div class='case'><h4>{html.escape(r['id'])} ({html.escape(str(r.get('scenario_type')))}"
        f", {key} = {_fmt(r.get(key))}, mode {html.escape(str(r.get('mode')))})</h4>",
        img_tag(bev_plot(plan, sample), f"BEV {r['id']}"),
    ]
    cam = front_camera(plan, sample, root)
    if cam:
        parts.append(img_tag(cam, f"front camera {r['id']}"))
    if r.get("reasoning"):
        parts.append(f"<pre>{html.escape(r['reasoning'])}</pre>")
    parts.append("</div>")
    return "\n".join(parts)


def _parse_failure_note(overall: dict) -> list[str]:
    """A text-waypoint model: how many answers did not parse, and what was scored instead."""
    if "n_parse_failures" not in overall:
        return []
    return [
        f"<p>waypoint answers that did not parse: {overall['n_parse_failures']} of "
        f"{overall['n_valid']} (each planned as standing still and scored as such; the reason "
        "is the parse_error of its row in samples.jsonl)</p>"
    ]


def render_report(run_dir: str | os.PathLike) -> Path:
    """Write `report.html` into a run directory from its results.json and samples.jsonl."""
    run = Path(run_dir)
    results = read_json(run / RESULTS)
    rows = read_rows(run)
    key, best, worst = pick_cases(rows)
    samples, root = _load_samples(results, {r["id"] for r in best + worst})
    meta = {
        k: results.get(k)
        for k in (
            "planner",
            "model_path",
            "data",
            "split",
            "seed",
            "autovla_version",
            "git_commit",
            "created",
        )
    }
    body = [
        f"<h1>autovla {html.escape(results.get('kind', 'evaluation'))}: "
        f"{html.escape(str(results.get('planner')))}</h1>",
        "<table>"
        + "".join(f"<tr><td>{k}</td><td>{_fmt(v)}</td></tr>" for k, v in meta.items())
        + "</table>",
        "<h2>Overall</h2>",
        html_table({"all": results["overall"]}),
        *_parse_failure_note(results["overall"]),
        "<h2>By complexity</h2>",
        html_table(results["by_complexity"], first="complexity"),
        "<h2>By scenario type</h2>",
        html_table(results["by_scenario"], first="scenario"),
    ]
    for k in ("pdms", "l2_avg", "col_avg"):
        chart = bar_chart(results["by_scenario"], k)
        if chart:
            body.append(img_tag(chart, f"{k} per scenario type"))
    rs = results.get("reasoning", {})
    if rs.get("n_with_mode"):
        body += [
            "<h2>Reasoning</h2>",
            html_table(
                {"slow share": rs.get("slow_share", {})},
                keys=("complex", "straightforward", "unknown"),
            ),
            f"<p>mode-choice accuracy: {_fmt(rs.get('mode_accuracy'))}</p>",
        ]
    body += [
        "<h2>Latency per plan (ms)</h2>",
        html_table(
            {
                m: {k: (v * 1000 if k != "n" else v) for k, v in p.items()}
                for m, p in results.get("latency", {}).items()
            },
            keys=("n", "p50", "p90", "p95", "p99", "mean", "max"),
            first="mode",
        ),
    ]
    hist = latency_histogram(rows)
    if hist:
        body.append(img_tag(hist, "latency histogram"))
    for title, cases in ((f"Best cases (by {key})", best), (f"Worst cases (by {key})", worst)):
        body.append(f"<h2>{html.escape(title)}</h2>")
        body += [_case_html(r, key, samples.get(r["id"]), root) for r in cases]
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>autovla report</title>"
        f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>"
    )
    out = run / REPORT
    with atomic_open(out) as f:
        f.write(page)
    return out
