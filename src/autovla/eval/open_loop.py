"""Open-loop evaluation: run a plan function over a split, score every sample, summarise.

Writes into the run directory `results.json` (every number, the config, seeds, model path,
project version, git commit) and `samples.jsonl` (one row per sample with a `valid` flag and
the plan, so reports and comparisons need no re-run). Metrics that need data a sample lacks
(object futures, metric cache, rater preferences) are left out of that sample's row and
the means count only the samples that have them (their `n_*` says how many). A sample whose
plan the scorer cannot score (a broken metric cache, a NaN score) gets a `scoring_error`,
no PDMS, and is counted in `n_scoring_errors`: never a silent 0. A model that answers with
text waypoints gets a `parse_error` in every row (None when its text parsed); a plan whose
text did not parse is standing still, scored like any plan, and counted in `n_parse_failures`.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import subprocess
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from autovla import __version__
from autovla.data.manifest import dataset_root, iter_samples
from autovla.data.schema import DrivingSample
from autovla.eval import metrics as M
from autovla.eval.baselines import PlanFn, PlanOutput
from autovla.io import atomic_open, write_json

RESULTS = "results.json"
ROWS = "samples.jsonl"
SCORE_KEYS = ("pdms", "nc", "dac", "ddc", "ttc", "comfort", "ep")
COLLISION_STEPS = 6  # nuScenes: 3 s at 2 Hz


def approx_tokens(text: str) -> int:
    """Words and punctuation marks: a tokenizer-free stand-in for a token count."""
    return len(re.findall(r"\w+|[^\w\s]", text))


def prepare_run_dir(out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Create the run directory; refuse one that holds files unless overwrite (files are then
    replaced one by one as new ones are written; nothing is deleted)."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"run directory {out} exists and is not empty; pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    return out


def git_commit() -> str | None:
    try:
        r = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() or None if r.returncode == 0 else None


def _batches(items: Iterable, size: int) -> Iterable[list]:
    batch = []
    for it in items:
        batch.append(it)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _scorer() -> Callable | None:
    try:
        from autovla.scoring import score_sample
    except ImportError:
        return None
    return score_sample


def _rfs() -> Callable | None:
    try:
        from autovla.eval.rfs import rater_feedback_score
    except ImportError:
        return None
    return rater_feedback_score


def sample_row(
    s: DrivingSample,
    root: Path,
    plan: PlanOutput,
    count_tokens: Callable[[str], int] = approx_tokens,
    scorer: Callable | None = None,
    rfs: Callable | None = None,
    require_scoring: bool = False,
    collision_convention: str = "uniad",
) -> dict:
    """Every per-sample number for one plan (the sample carries its ground truth).

    With `require_scoring` (a run on data with metric caches) a sample without one gets a
    `scoring_error` instead of silently no PDMS."""
    traj = plan.trajectory
    row: dict = {
        "id": s.id,
        "scenario_type": s.scenario_type,
        "complex": s.complex,
        "mode": plan.mode,
        "latency": plan.latency,
        "reasoning": plan.reasoning,
        "reasoning_chars": len(plan.reasoning) if plan.reasoning else 0,
        "reasoning_tokens": count_tokens(plan.reasoning) if plan.reasoning else 0,
        "num_tokens": plan.num_tokens,
        "plan": np.round(traj, 4).tolist(),
    }
    if plan.text_answer:
        row["parse_error"] = plan.parse_error
    if not np.all(np.isfinite(traj)):
        return {**row, "valid": False, "error": "plan has non-finite values"}
    if s.future is not None:
        gt = s.future_array()
        err = M.l2_per_step(traj, gt)
        for conv in M.CONVENTIONS:
            for t, v in M.at_horizons(err, conv).items():
                row[f"l2_{conv}_{t:g}s"] = float(v[0])
        row["l2_avg"] = float(np.mean([row[f"l2_stp3_{t:g}s"] for t in M.HORIZONS_S]))
        row["ade"] = float(err.mean())
        row["fde"] = float(err[0, -1])
        row["ade_3s"] = float(err[0, :6].mean())
        if M.collision_applies(s.scene, collision_convention):
            col = M.bev_collision(traj, gt, s.scene, COLLISION_STEPS, collision_convention)[
                None
            ].astype(float)
            for conv in M.CONVENTIONS:
                for t, v in M.at_horizons(col, conv).items():
                    row[f"col_{conv}_{t:g}s"] = float(v[0])
            row["col_avg"] = float(np.mean([row[f"col_stp3_{t:g}s"] for t in M.HORIZONS_S]))
        if plan.candidates is not None and len(plan.candidates):
            cand_err = M.l2_per_step(plan.candidates, np.repeat(gt[None], len(plan.candidates), 0))
            row["bestk_ade"] = float(cand_err.mean(-1).min())
            row["candidate_ade"] = [float(v) for v in cand_err.mean(-1)]
    if scorer is not None and s.scoring is None and require_scoring:
        row["scoring_error"] = "no metric cache (field 'scoring'): the scene was not cached"
    if scorer is not None and s.scoring is not None:
        plans = (
            traj[None] if plan.candidates is None else np.concatenate([traj[None], plan.candidates])
        )
        try:
            sc = scorer(root, s, plans)
        except (OSError, ValueError, KeyError) as e:  # a broken cache: no PDMS, say why
            row["scoring_error"] = f"{type(e).__name__}: {e}"
        else:
            if not np.isfinite(np.asarray(sc.pdms, dtype=np.float64)[0]):
                row["scoring_error"] = "the scorer returned NaN for this plan"
            else:
                row.update(_score_values(sc))
            if plan.candidates is not None and len(plan.candidates):
                best = np.asarray(sc.pdms, dtype=np.float64)[1:]
                if np.isfinite(best).any():
                    row["bestk_pdms"] = float(np.nanmax(best))
                # every candidate's score, for best-of-N at any N <= K (eval/best_of_n.py)
                row["candidate_pdms"] = [float(v) if np.isfinite(v) else None for v in best]
    if rfs is not None and s.preference is not None:
        row["rfs"] = float(rfs(traj[:, :2], s.preference, s.ego.speed))
    return {**row, "valid": True, "error": None}


def _score_values(sc) -> dict[str, float]:
    out = {}
    for k in SCORE_KEYS:
        vals = getattr(sc, k, None)
        if vals is not None:
            out[k] = float(np.asarray(vals)[0])
    return out


def run_plans(
    plan_fn: PlanFn,
    samples: Iterable[DrivingSample],
    root: Path,
    batch_size: int = 8,
    total: int | None = None,
    **row_kwargs,
) -> list[dict]:
    """Plan every sample in batches and turn each into a row; a failed batch is invalid."""
    needs_answer = getattr(plan_fn, "needs_answer", False)
    rows = []
    bar = tqdm(total=total, desc="open-loop", unit="sample")
    for batch in _batches(samples, batch_size):
        inputs = batch if needs_answer else [s.without_answer() for s in batch]
        try:
            plans = plan_fn(inputs, [root] * len(batch))
            if len(plans) != len(batch):
                raise ValueError(f"planner returned {len(plans)} plans for {len(batch)} samples")
        except (ValueError, RuntimeError) as e:
            for s in batch:
                rows.append(
                    {
                        "id": s.id,
                        "scenario_type": s.scenario_type,
                        "complex": s.complex,
                        "valid": False,
                        "error": f"{type(e).__name__}: {e}",
                    }
                )
            bar.update(len(batch))
            continue
        for s, p in zip(batch, plans, strict=True):
            rows.append(sample_row(s, root, p, **row_kwargs))
        bar.update(len(batch))
    bar.close()
    return rows


def _numeric_keys(rows: list[dict]) -> list[str]:
    keys = []
    skip = {"latency", "complex", "valid", "num_tokens", "reasoning_chars", "reasoning_tokens"}
    for r in rows:
        for k, v in r.items():
            if (
                k not in keys
                and k not in skip
                and isinstance(v, (int, float))
                and not isinstance(v, bool)
            ):
                keys.append(k)
    return keys


def summarize(rows: list[dict]) -> dict:
    """Means of every numeric metric over valid rows, with counts per metric."""
    valid = [r for r in rows if r.get("valid")]
    out: dict = {"n": len(rows), "n_valid": len(valid)}
    scoring_errors = sum(1 for r in valid if r.get("scoring_error"))
    if scoring_errors:
        out["n_scoring_errors"] = scoring_errors
    if any("parse_error" in r for r in valid):  # a text-waypoint model: always say how many
        out["n_parse_failures"] = sum(1 for r in valid if r.get("parse_error"))
    for k in _numeric_keys(valid):
        vals = [r[k] for r in valid if r.get(k) is not None]
        if vals:
            out[k] = float(np.mean(vals))
            out[f"n_{k}"] = len(vals)
    return out


def complexity_name(c: bool | None) -> str:
    return "unknown" if c is None else ("complex" if c else "straightforward")


def reasoning_stats(rows: list[dict]) -> dict:
    """Share of slow thinking per complexity, reasoning length, mode-choice accuracy."""
    valid = [r for r in rows if r.get("valid") and r.get("mode") is not None]
    out: dict = {"n_with_mode": len(valid)}
    by_c: dict[str, list[dict]] = defaultdict(list)
    for r in valid:
        by_c[complexity_name(r.get("complex"))].append(r)
    out["slow_share"] = {
        c: float(np.mean([r["mode"] == "slow" for r in rs])) for c, rs in by_c.items()
    }
    labelled = [r for r in valid if r.get("complex") is not None]
    if labelled:
        out["mode_accuracy"] = float(
            np.mean([(r["mode"] == "slow") == r["complex"] for r in labelled])
        )
    slow = [r for r in valid if r["mode"] == "slow"]
    if slow:
        for k in ("reasoning_chars", "reasoning_tokens"):
            out[k] = {
                "mean": float(np.mean([r[k] for r in slow])),
                "p50": float(np.median([r[k] for r in slow])),
                "max": int(max(r[k] for r in slow)),
            }
    return out


def latency_stats(rows: list[dict]) -> dict:
    by_mode: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        if r.get("valid"):
            by_mode[r.get("mode") or "none"].append(r.get("latency") or 0.0)
            by_mode["all"].append(r.get("latency") or 0.0)
    return {m: M.latency_percentiles(v) for m, v in by_mode.items()}


def aggregate(rows: list[dict]) -> dict:
    groups: dict[str, dict[str, list[dict]]] = {
        "by_scenario": defaultdict(list),
        "by_complexity": defaultdict(list),
    }
    for r in rows:
        groups["by_scenario"][r.get("scenario_type") or "unknown"].append(r)
        groups["by_complexity"][complexity_name(r.get("complex"))].append(r)
    return {
        "overall": summarize(rows),
        "by_scenario": {k: summarize(v) for k, v in sorted(groups["by_scenario"].items())},
        "by_complexity": {k: summarize(v) for k, v in sorted(groups["by_complexity"].items())},
        "reasoning": reasoning_stats(rows),
        "latency": latency_stats(rows),
    }


def write_rows(path: Path, rows: list[dict]) -> None:
    with atomic_open(path) as f:
        for r in rows:
            f.write(json.dumps(r, sort_keys=True, allow_nan=False) + "\n")


def read_rows(run_dir: str | os.PathLike) -> list[dict]:
    path = Path(run_dir) / ROWS
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} an evaluation run directory?")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _clean(obj):
    """JSON has no NaN: write None for undefined numbers."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def run_open_loop(
    plan_fn: PlanFn,
    data_dir: str | os.PathLike,
    split: str | None,
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    batch_size: int = 8,
    limit: int | None = None,
    planner_name: str | None = None,
    model_path: str | None = None,
    config: dict | None = None,
    seed: int = 0,
    count_tokens: Callable[[str], int] | None = None,
    scene_filter: set[str] | None = None,
) -> dict:
    """Evaluate `plan_fn` on `split` of a dataset; returns the results dict it wrote.

    Reasoning tokens are counted with `count_tokens`, else the plan function's own
    `count_tokens` (the model's tokenizer), else `approx_tokens`. With `scene_filter` (scene
    tokens, NAVSIM's navtest style) only those scenes are evaluated; tokens the split lacks
    are counted in `scene_filter.missing`. When any sample has a metric cache, samples
    without one count as scoring errors: PDMS is averaged over the scored scenes only."""
    count_tokens = count_tokens or getattr(plan_fn, "count_tokens", None)
    tokens_name = "plan function tokenizer" if count_tokens else "approx (words and punctuation)"
    count_tokens = count_tokens or approx_tokens
    out = prepare_run_dir(out_dir, overwrite)
    root = dataset_root(data_dir)
    samples = list(iter_samples(data_dir, split))
    filter_info = None
    if scene_filter is not None:
        from autovla.data.scene_filter import in_filter, scene_token

        samples = [s for s in samples if in_filter(s, scene_filter)]
        found = {scene_token(s) for s in samples} | {s.id for s in samples}
        missing = sorted(t for t in scene_filter if t not in found)
        filter_info = {"tokens": len(scene_filter), "matched": len(samples),
                       "missing": len(missing), "missing_examples": missing[:20]}  # fmt: skip
    if limit is not None:
        samples = samples[:limit]
    if not samples:
        what = " matching the scene filter" if scene_filter is not None else ""
        raise ValueError(f"no samples{what} in split {split!r} of {data_dir}")
    scorer = _scorer()
    rfs = _rfs()
    rows = run_plans(
        plan_fn,
        samples,
        root,
        batch_size,
        total=len(samples),
        count_tokens=count_tokens,
        scorer=scorer,
        rfs=rfs,
        require_scoring=any(s.scoring is not None for s in samples),
    )
    results = {
        "kind": "open-loop",
        "autovla_version": __version__,
        "git_commit": git_commit(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "data": str(Path(data_dir).resolve()),
        "split": split,
        "planner": planner_name or getattr(plan_fn, "name", type(plan_fn).__name__),
        "model_path": model_path,
        "seed": seed,
        "config": {"batch_size": batch_size, "limit": limit, **(config or {})},
        "token_count": tokens_name,
        "available": {"pdms": scorer is not None, "rfs": rfs is not None},
        "scene_filter": filter_info,
        **aggregate(rows),
    }
    results = _clean(results)
    write_rows(out / ROWS, [_clean(r) for r in rows])
    write_json(out / RESULTS, results)
    return results
