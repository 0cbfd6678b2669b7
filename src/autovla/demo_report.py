"""The demo's summary: the headline table (printed, in Markdown and in HTML) and one report page.

Everything here is read back from what the stages wrote (each run's `results.json`, each
training run's `final/autovla.json`, the demo's `stages.json`), so the report can be rebuilt
at any time and always shows the current output.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from autovla.demo import stage_seconds
from autovla.eval.report import CSS, fig_png, img_tag, pyplot

PLANNERS = ("constant-velocity", "sft", "rft", "expert")
TRAINED = ("sft", "rft")

# (column, loop, one-line definition); loop says where the number comes from
COLUMNS: tuple[tuple[str, str, str], ...] = (
    (
        "PDMS",
        "open",
        "PDM score (NAVSIM v1.1 rules, docs/scoring.md): NC x DAC x (5 EP + 5 TTC + 2 C) / 12, "
        "mean over the test samples; 1 is best (the logged expert scores below 1: ego "
        "progress is measured against the PDM-Closed reference planner)",
    ),
    (
        "L2 avg (m)",
        "open",
        "mean distance to the logged future over the 0.5 s steps up to 1, 2 and 3 s (ST-P3 "
        "convention), averaged over the three horizons; lower is better",
    ),
    (
        "slow complex",
        "open",
        "share of complex test samples on which the planner chose slow thinking (reasoning)",
    ),
    (
        "slow straightf.",
        "open",
        "the same on straightforward samples; a good model reasons more on complex ones",
    ),
    (
        "latency p50 (s)",
        "open",
        "median planning time per sample in the open-loop run (a batch of 8 samples' wall "
        "time / 8, on the device the run used)",
    ),
    (
        "driving score",
        "closed",
        "route completion x infraction penalty (each infraction multiplies it by its factor, "
        "driving off road by 1 - off-road share) per episode, mean over the scenarios",
    ),
    (
        "success",
        "closed",
        "share of episodes that complete the route with no infraction and never off road",
    ),
)
LOOP_NAMES = {"open": "open loop, test split", "closed": "closed loop, fresh scenarios"}

STOPPED = {
    "steps": "all steps done",
    "time": "CUT SHORT by the time budget (train.max_minutes)",
    "interrupt": "INTERRUPTED",
}


def _results(path: Path) -> dict | None:
    """A run's results.json, or None when it is missing or unreadable (shown as "-")."""
    f = path / "results.json"
    try:
        data = json.loads(f.read_text()) if f.is_file() else None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _get(d: object, *keys: str) -> object:
    """d[k1][k2]..., or None where a level is missing or not a dict."""
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def headline(out: Path) -> dict[str, dict[str, float | None]]:
    """planner -> column -> value, from the runs the demo wrote."""
    table: dict[str, dict[str, float | None]] = {}
    for name in PLANNERS:
        ol = _results(out / "runs" / f"open-loop-{name}")
        cl = _results(out / "runs" / f"closed-loop-{name}")
        table[name] = {
            "PDMS": _get(ol, "overall", "pdms"),
            "L2 avg (m)": _get(ol, "overall", "l2_avg"),
            "slow complex": _get(ol, "reasoning", "slow_share", "complex"),
            "slow straightf.": _get(ol, "reasoning", "slow_share", "straightforward"),
            "latency p50 (s)": _get(ol, "latency", "all", "p50"),
            "driving score": _get(cl, "overall", "driving_score"),
            "success": _get(cl, "overall", "success_rate"),
        }
    return table


def _fmt(v: object) -> str:
    """Three decimals; "-" for a value that is missing, not a number or not finite."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return "-"
    return f"{v:.3f}"


def training(out: Path) -> dict[str, dict]:
    """stage -> {step, max_steps, stopped_by, seconds} for the training stages that ran."""
    state_file = out / "stages.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    info: dict[str, dict] = {}
    for stage in TRAINED:
        meta = out / stage / "final" / "autovla.json"
        try:
            t = json.loads(meta.read_text()).get("training") if meta.is_file() else None
        except (OSError, ValueError, AttributeError):
            t = None
        if isinstance(t, dict) and "step" in t and "max_steps" in t:
            if "stopped_by" not in t:  # checkpoints of older versions: judge by the count
                t["stopped_by"] = "steps" if t["step"] >= t["max_steps"] else "unknown"
            info[stage] = {**t, "seconds": _get(state, stage, "seconds")}
    return info


def cut_short(out: Path) -> list[str]:
    """The training stages that did not run all their steps, and the ones trained from them
    (RFT starts from the SFT model: a short SFT makes its RFT row incomparable too)."""
    info = training(out)
    cut = [s for s, t in info.items() if t.get("stopped_by") != "steps"]
    if "sft" in cut and "rft" in info and "rft" not in cut:
        cut.append("rft")
    return cut


def _mark(name: str, cut: list[str]) -> str:
    return f"{name} (cut short)" if name in cut else name


def headline_rows(out: Path) -> list[str]:
    """The headline table as fixed-width text lines, loop of each column above it."""
    table = headline(out)
    cut = cut_short(out)
    names = [_mark(n, cut) for n in PLANNERS]
    width = max(len(n) for n in names) + 2
    loops = " " * width + "".join(f"{c[1] + ' loop':>17}" for c in COLUMNS)
    lines = [loops, " " * width + "".join(f"{c[0]:>17}" for c in COLUMNS)]
    for name, shown in zip(PLANNERS, names, strict=True):
        row = table[name]
        lines.append(f"{shown:<{width}}" + "".join(f"{_fmt(row[c[0]]):>17}" for c in COLUMNS))
    for stage in cut:
        lines.append(
            f"WARNING: {stage} did not run all its steps (or started from a model that did "
            "not): its row is not comparable; rerun with --fresh and no time budget"
        )
    return lines


def headline_markdown(out: Path) -> str:
    """The headline table in Markdown (the README's table is this output)."""
    table = headline(out)
    cut = cut_short(out)
    head = "| planner | " + " | ".join(f"{c[0]} ({c[1]})" for c in COLUMNS) + " |"
    rule = "|---" * (len(COLUMNS) + 1) + "|"
    rows = [
        f"| {_mark(n, cut)} | " + " | ".join(_fmt(table[n][c[0]]) for c in COLUMNS) + " |"
        for n in PLANNERS
    ]
    return "\n".join([head, rule, *rows]) + "\n"


def training_lines(out: Path) -> list[str]:
    """How each training stage ended (steps run of planned, why it stopped, wall time)."""
    lines = []
    for stage, t in training(out).items():
        how = STOPPED.get(t.get("stopped_by"), "stopped")
        took = f", {t['seconds'] / 60:.1f} min" if t.get("seconds") is not None else ""
        lines.append(f"{stage}: step {t['step']} of {t['max_steps']}, {how}{took}")
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
    ax.set_ylabel("PDMS (open loop)")
    ax.legend(fontsize=7)
    return img_tag(fig_png(fig), "PDMS per scenario type")


def _stage_times(out: Path, stages) -> str:
    state_file = out / "stages.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    rows = []
    total = 0.0
    for s in stages:
        secs = _get(state, s.name, "seconds")
        secs = secs if isinstance(secs, (int, float)) else None
        total += secs or 0.0
        rows.append(
            f"<tr><td>{html.escape(s.name)}</td><td>{stage_seconds(_get(state, s.name))}"
            f"</td><td><code>autovla {html.escape(' '.join(s.args))}</code></td></tr>"
        )
    # the invocations that finished (a resumed training shows its interrupted parts beside)
    rows.append(f"<tr><td><b>total</b></td><td><b>{total:.0f}</b></td><td></td></tr>")
    return (
        "<table><tr><th>stage</th><th>seconds</th><th>command</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def write_demo_report(out: Path, stages, cfg) -> Path:
    from autovla.io import atomic_open

    table = headline(out)
    cut = cut_short(out)
    loops = "".join(
        f'<th colspan="{sum(1 for c in COLUMNS if c[1] == loop)}">{LOOP_NAMES[loop]}</th>'
        for loop in ("open", "closed")
    )
    head = "".join(f"<th>{html.escape(c[0])}</th>" for c in COLUMNS)
    body = "".join(
        "<tr><td>"
        + html.escape(_mark(n, cut))
        + "</td>"
        + "".join(f"<td>{_fmt(r[c[0]])}</td>" for c in COLUMNS)
        + "</tr>"
        for n, r in table.items()
    )
    warning = "".join(
        f'<p style="color:#b00;font-weight:bold">WARNING: the {html.escape(s)} stage did not '
        "run all its steps (time budget or interrupt), or started from a model that did not: "
        "its row is not comparable with a full run. Rerun the demo with --fresh.</p>"
        for s in cut
    )
    defs = "".join(
        f"<li><b>{html.escape(c[0])}</b> ({c[1]} loop): {html.escape(c[2])}</li>" for c in COLUMNS
    )
    links = "".join(
        f'<li><a href="runs/{p.name}/report.html">{html.escape(p.name)}</a></li>'
        for p in sorted((out / "runs").glob("*"))
        if (p / "report.html").is_file()
    )
    chart = _scenario_chart(out) or ""
    train = "".join(f"<li>{html.escape(line)}</li>" for line in training_lines(out))
    sizes = html.escape(
        f"{cfg.scenes} scenes, codebook of up to {cfg.codebook_size} tokens, "
        f"{cfg.sft_steps} SFT steps of {cfg.sft_batch} samples, {cfg.rft_steps} RFT steps of "
        f"{cfg.rft_prompts} prompts x {cfg.rft_group} completions, "
        f"{cfg.closed_loop_scenarios} closed-loop scenarios"
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>autovla demo</title>
<style>{CSS}</style></head><body>
<h1>autovla demo: {html.escape(cfg.label)}</h1>
<p>Embedded driving world, tiny Qwen2.5-VL-shaped model; {sizes}.</p>
{warning}
<h2>Headline</h2>
<table><tr><th></th>{loops}</tr><tr><th>planner</th>{head}</tr>{body}</table>
<p>Open loop: each planner plans once per sample of the held-out test split and is scored
against the logged future. Closed loop: each planner drives fresh scenarios of the embedded
world, replanning as it goes.</p>
<ul>{defs}</ul>
<h2>Training</h2><ul>{train}</ul>
<h2>PDMS per scenario type</h2>{chart}
<h2>Detailed reports</h2><ul>{links}</ul>
<h2>What ran, and how long it took</h2>{_stage_times(out, stages)}
</body></html>"""
    path = out / "report.html"
    with atomic_open(path) as f:
        f.write(page)
    md = out / "headline.md"
    with atomic_open(md) as f:
        f.write(headline_markdown(out))
    return path
