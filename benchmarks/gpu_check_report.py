"""Gather the parts of benchmarks/gpu_check.sh into gpu_check.json and gpu_check.md.

python benchmarks/gpu_check_report.py WORKDIR OUTDIR [--seconds N] [--preset NAME]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

TARGETS = (
    "targets on one H100: fast plan p50 <= 60 ms, slow plan p50 <= 400 ms (batch 1); "
    "SFT MFU >= 35 %"
)


def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _clean(x):
    """NaN and infinities become null (strict JSON)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return x


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--seconds", type=float)
    ap.add_argument("--preset", default="qwen2.5-vl-3b")
    args = ap.parse_args()
    from bench_planner import markdown_table
    from bench_planner_gpu import COLUMNS

    parts = []
    tsv = args.work / "parts.tsv"
    if tsv.exists():
        for line in tsv.read_text().splitlines():
            name, code, secs, limit = line.split("\t")
            status = "ok" if code == "0" else ("timed out" if code in ("124", "137") else "failed")
            parts.append({"part": name, "status": status, "exit_code": int(code),
                          "seconds": int(secs), "limit_s": int(limit)})  # fmt: skip
    report = {
        "preset": args.preset,
        "total_seconds": args.seconds,
        "parts": parts,
        "env": _load(args.work / "env.json"),
        "planner": _load(args.work / "planner.json"),
        "planner_compiled": _load(args.work / "planner_compiled.json"),
        "sft": _load(args.work / "sft.json"),
        "rft": _load(args.work / "rft.json"),
    }
    report = _clean(report)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))

    env = report["env"] or {}
    md = [f"# GPU check ({args.preset})", ""]
    md.append(
        f"{env.get('gpu') or env.get('nvidia_smi') or 'no GPU'}; torch {env.get('torch')}, "
        f"transformers {env.get('transformers')}, CUDA {env.get('cuda')}; commit "
        f"{env.get('commit')}; {_fmt(args.seconds)} s in all. {TARGETS}."
    )
    md += ["", "| part | status | seconds | limit |", "|---|---|---|---|"]
    md += [f"| {p['part']} | {p['status']} | {p['seconds']} | {p['limit_s']} |" for p in parts]
    rows = []
    for key in ("planner", "planner_compiled"):
        if report[key]:
            rows += report[key].get("rows") or []
    if rows:
        md += ["", "## Planner", ""]
        facts = report["planner"] or report["planner_compiled"]
        md.append(
            f"{facts.get('vision_tokens')} vision tokens per sample, prompt "
            f"{facts.get('prompt_tokens')} tokens, slow plans reason "
            f"{facts.get('reasoning_tokens')} tokens; model = vision + prefill + decode on the "
            "device, inputs = image loading and processor on the CPU."
        )
        md += ["", markdown_table(rows, COLUMNS)]
    if report["sft"]:
        s = report["sft"]
        md += ["", "## SFT throughput", ""]
        md += ["| trained | frozen | batch x tokens | ms/step | tokens/s | MFU | GPU memory GB |",
               "|---|---|---|---|---|---|---|"]  # fmt: skip
        mfu = s.get("mfu")
        md.append(
            f"| {s['params_trained']:,} | {s['params_frozen']:,} | {s['batch_size']} x "
            f"{s['tokens_per_step'] // s['batch_size']} | {1000 * s['step_s']:.0f} | "
            f"{s['tokens_per_s']:,.0f} | {'-' if mfu is None else f'{100 * mfu:.1f} %'} | "
            f"{_fmt(s.get('max_memory_gb'))} |"
        )
    if report["rft"]:
        r = report["rft"]
        md += ["", "## RFT step", ""]
        md += ["| G | reasoning cap | slow share | step s | sampling s | scoring s | update s |",
               "|---|---|---|---|---|---|---|"]  # fmt: skip
        md.append(
            f"| {r.get('group_size')} | {r.get('reasoning_cap')} | {_fmt(r.get('slow_share'))} "
            f"| {_fmt(r.get('step_s'))} | {_fmt(r.get('sampling_s'))} | "
            f"{_fmt(r.get('scoring_s'))} | {_fmt(r.get('update_s'))} |"
        )
    text = "\n".join(md) + "\n"
    (args.out / "gpu_check.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
