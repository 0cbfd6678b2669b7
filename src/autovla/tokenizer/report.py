"""Reconstruction quality of a codebook on a dataset: ADE/FDE per step and by speed and
curvature, coverage, usage, and PNG plots (`autovla codebook report`)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from autovla.io import write_json
from autovla.tokenizer.codebook import Codebook
from autovla.tokenizer.fit import coverage_usage, segments_from_datasets

SPEED_BINS = [(0.0, 2.0), (2.0, 8.0), (8.0, 15.0), (15.0, float("inf"))]  # m/s now
CURVATURE_BINS = [(0.0, 0.005), (0.005, 0.02), (0.02, float("inf"))]  # 1/m: |dheading|/length


def reconstruction_errors(
    codebook: Codebook, trajectories: np.ndarray, batch: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Position errors (N, T) of decode(encode(trajectories)), and the reconstructions."""
    errs, recs = [], []
    for s in range(0, len(trajectories), batch):
        traj = trajectories[s : s + batch]
        rec = codebook.decode(codebook.encode(traj)).double().cpu().numpy()
        errs.append(np.linalg.norm(rec[..., :2] - traj[..., :2], axis=-1))
        recs.append(rec)
    return np.concatenate(errs), np.concatenate(recs)


def curvature(trajectories: np.ndarray) -> np.ndarray:
    """Mean absolute curvature (1/m): total |heading change| over path length."""
    p = np.concatenate([np.zeros((len(trajectories), 1, 3)), trajectories], 1)
    dh = np.abs(np.mod(np.diff(p[..., 2], axis=1) + np.pi, 2 * np.pi) - np.pi).sum(1)
    length = np.linalg.norm(np.diff(p[..., :2], axis=1), axis=-1).sum(1)
    return dh / np.maximum(length, 1.0)


def _summary(err: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    e = err[mask]
    if len(e) == 0:
        return {"count": 0}
    return {"count": len(e), "ade": float(e.mean()), "fde": float(e[:, -1].mean())}


def _bin_name(lo: float, hi: float) -> str:
    return f"{lo:g}-{hi:g}" if np.isfinite(hi) else f">={lo:g}"


def quality(codebook: Codebook, trajectories: np.ndarray, speeds: np.ndarray) -> dict[str, Any]:
    """ADE/FDE overall, per step, by current speed and by curvature."""
    err, _ = reconstruction_errors(codebook, trajectories)
    curv = curvature(trajectories)
    every = np.ones(len(err), dtype=bool)
    return {
        **_summary(err, every),
        "max_error": float(err.max()) if err.size else 0.0,
        "per_step_ade": [float(v) for v in err.mean(0)],
        "by_speed": {
            _bin_name(lo, hi): _summary(err, (speeds >= lo) & (speeds < hi))
            for lo, hi in SPEED_BINS
        },
        "by_curvature": {
            _bin_name(lo, hi): _summary(err, (curv >= lo) & (curv < hi))
            for lo, hi in CURVATURE_BINS
        },
    }


def load_futures(
    dirs: Iterable[str | os.PathLike], split: str | None = None, max_samples: int | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Future trajectories (N, 10, 3), current speeds (N,) and ids of samples with a future."""
    from autovla.data.manifest import iter_samples

    futures, speeds, ids = [], [], []
    for d in dirs:
        for s in iter_samples(d, split=split, check_duplicates=False):
            if s.future is None:
                continue
            futures.append(s.future_array())
            speeds.append(s.ego.speed)
            ids.append(s.id)
            if max_samples is not None and len(ids) >= max_samples:
                break
        if max_samples is not None and len(ids) >= max_samples:
            break
    if not ids:
        raise ValueError(f"no samples with a future in {[str(d) for d in dirs]}")
    return np.stack(futures), np.asarray(speeds), ids


def plot_token_ends(codebook: Codebook, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end = codebook.end_poses.cpu().numpy()
    fig, ax = plt.subplots(figsize=(7, 6))
    sc = ax.scatter(end[:, 1], end[:, 0], c=np.degrees(end[:, 2]), s=4, cmap="coolwarm")
    ax.scatter([0], [0], marker="x", c="k", s=40, label="token 0")
    fig.colorbar(sc, ax=ax, label="dtheta (deg)")
    ax.set_xlabel("dy (m, left)")
    ax.set_ylabel("dx (m, forward)")
    ax.invert_xaxis()  # left on the left, as seen from behind the car
    ax.set_title(f"{codebook.size} token end points (0.5 s)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reconstructions(
    trajectories: np.ndarray, recs: np.ndarray, err: np.ndarray, path: Path, n: int = 16
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # half the worst, half evenly spread over the rest: both the failures and the typical case
    order = np.argsort(-err.mean(1))
    n = min(n, len(order))  # a small dataset: every sample once
    worst, rest = order[: n // 2], order[n // 2 :]
    spread = rest[np.linspace(0, len(rest) - 1, n - len(worst)).astype(int)] if len(rest) else rest
    picks = np.unique(np.concatenate([worst, spread]))[:n]
    cols = 4
    rows = int(np.ceil(len(picks) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    for ax, i in zip(axes.flat, picks, strict=False):
        gt = np.concatenate([[[0, 0, 0]], trajectories[i]])
        rc = np.concatenate([[[0, 0, 0]], recs[i]])
        ax.plot(-gt[:, 1], gt[:, 0], "k.-", label="ground truth")
        ax.plot(-rc[:, 1], rc[:, 0], "r.--", label="tokens")
        ax.set_title(f"#{i} ADE {err[i].mean():.3f} m", fontsize=8)
        ax.set_aspect("equal", adjustable="datalim")
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(picks) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def codebook_report(
    codebook: Codebook,
    dirs: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    *,
    split: str | None = None,
    max_samples: int | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Write report.json (+ token_ends.png, reconstructions.png) under `out`; return it."""
    dirs = [str(d) for d in dirs]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    futures, speeds, _ = load_futures(dirs, split, max_samples)
    q = quality(codebook, futures, speeds)
    tol = float(codebook.meta.get("tol", 0.05))
    seg = segments_from_datasets(
        dirs, None if max_samples is None else max_samples * 14, split, progress=False
    )
    cu = coverage_usage(codebook, seg, tol)
    report = {
        "codebook_size": codebook.size,
        "datasets": dirs,
        "samples": len(futures),
        "tol": tol,
        **cu,
        "reconstruction": q,
    }
    write_json(out / "report.json", report)
    if plots:
        plot_token_ends(codebook, out / "token_ends.png")
        err, recs = reconstruction_errors(codebook, futures[:4096])
        plot_reconstructions(futures[:4096], recs, err, out / "reconstructions.png")
    return report
