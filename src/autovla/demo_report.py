"""The demo's summary: the headline table (printed and in HTML) and one report page."""

from __future__ import annotations

import html
import json
from pathlib import Path

from autovla.eval.report import CSS, fig_png, img_tag, pyplot

PLANNERS = ("constant-velocity", "sft", "rft", "expert")
COLUMNS = ("PDMS", "L2 avg (m)", "driving score", "success", "slow share", "latency p50 (s)")


def _results(path: Path) -> dict | None:
    f = path / "results.json"
    return json.loads(f.read_text()) if f.is_file() else None


def headline(out: Path) -> dict[str, dict[str, float | None]]:
    """planner -> column -> value, from the runs the demo wrote."""
    table: dict[str, dict[str, float | None]] = {}
    for name in PLANNERS:
        ol = _results(out / "runs" / f"open-loop-{name}") or {}
        cl = _results(out / "runs" / f"closed-loop-{name}") or {}
        overall = ol.get("overall", {})
        slow = ol.get("reasoning", {}).get("slow_share", {})
        n_slow = [v for v in slow.values() if v is not None]
        table[name] = {
            "PDMS": overall.get("pdms"),
            "L2 avg (m)": overall.get("l2_avg"),
            "driving score": cl.get("overall", {}).get("driving_score"),
            "success": cl.get("overall", {}).get("success_rate"),
            "slow share": (sum(n_slow) / len(n_slow)) if n_slow else None,
            "latency p50 (s)": ol.get("latency", {}).get("all", {}).get("p50"),
        }
    return table


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def headline_rows(out: Path, stages=None) -> list[str]:
    """The headline table as fixed-width text lines."""
    table = headline(out)
    width = max(len(p) for p in PLANNERS) + 2
    lines = [" " * width + "".join(f"{c:>17}" for c in COLUMNS)]
    for name, row in table.items():
        lines.append(f"{name:<{width}}" + "".join(f"{_fmt(row[c]):>17}" for c in COLUMNS))
    return lines


STOPPED = {
    "steps": "all steps done",
    "time": "stopped early by the time budget (train.max_minutes)",
    "interrupt": "interrupted",
}


def training_lines(out: Path) -> list[str]:
    """How each training stage ended, from the metadata of its final checkpoint."""
    lines = []
    for stage in ("sft", "rft"):
        info = out / stage / "final" / "autovla.json"
        t = json.loads(info.read_text()).get("training") if info.is_file() else None
        if t:
            how = STOPPED.get(t.get("stopped_by"), "stopped")
            lines.append(f"{stage}: step {t['step']} of {t['max_steps']}, {how}")
    return lines


def _scenario_chart(out: Path) -> str | None:
    plt = pyplot()
    per: dict[str, dict[str, float]] = {}
    for name in PLANNERS:
        res = _results(out / "runs" / f"open-loop-{name}") or {}
        for scen, vals in res.get("by_scenario", {}).items():
            if vals.get("pdms") is not None:
                per.setdefault(scen, {})[name] = vals["pdms"]
    if not per:
        return None
    scen = sorted(per)
    fig, ax = plt.subplots(figsize=(max(6, len(scen) * 0.9), 3.2))
    w = 0.8 / len(PLANNERS)
    for i, name in enumerate(PLANNERS):
        ax.bar(
            [x + i * w for x in range(len(scen))],
            [per[s].get(name, 0) for s in scen],
            width=w,
            label=name,
        )
    ax.set_xticks([x + 0.4 - w / 2 for x in range(len(scen))], scen, rotation=30, ha="right")
    ax.set_ylabel("PDMS")
    ax.legend(fontsize=7)
    return img_tag(fig_png(fig), "PDMS per scenario type")


def write_demo_report(out: Path, stages, cfg) -> Path:
    from autovla.io import atomic_open

    table = headline(out)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ("planner", *COLUMNS))
    body = "".join(
        "<tr><td>"
        + html.escape(n)
        + "</td>"
        + "".join(f"<td>{_fmt(r[c])}</td>" for c in COLUMNS)
        + "</tr>"
        for n, r in table.items()
    )
    links = "".join(
        f'<li><a href="runs/{p.name}/report.html">{html.escape(p.name)}</a></li>'
        for p in sorted((out / "runs").glob("*"))
        if (p / "report.html").is_file()
    )
    steps = "".join(
        f"<li><code>autovla {html.escape(' '.join(s.args))}</code></li>" for s in stages
    )
    chart = _scenario_chart(out) or ""
    training = "".join(f"<li>{html.escape(line)}</li>" for line in training_lines(out))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>autovla demo</title>
<style>{CSS}</style></head><body>
<h1>autovla demo: {html.escape(cfg.label)}</h1>
<p>Embedded driving world, tiny Qwen2.5-VL-shaped model. Open loop on the test split;
closed loop in fresh scenarios.</p>
<h2>Headline</h2><table><tr>{head}</tr>{body}</table>
<h2>Training</h2><ul>{training}</ul>
<h2>PDMS per scenario type</h2>{chart}
<h2>Detailed reports</h2><ul>{links}</ul>
<h2>What ran</h2><ol>{steps}</ol>
</body></html>"""
    path = out / "report.html"
    with atomic_open(path) as f:
        f.write(page)
    return path
