"""A picture of one plan: BEV (planned vs true future) and the front camera with the plan drawn
on the road, for `autovla plan --out`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from autovla.data.schema import DrivingSample
from autovla.geometry import box_corners
from autovla.io import atomic_path, read_json
from autovla.sim.render import ground_pixels


def front_calibration(sample: DrivingSample, root: Path) -> dict[str, Any] | None:
    """The front camera model ({intrinsics, extrinsics.sensor_to_ego}) if the data has one.

    Looked up in the sample's meta (`meta.cameras.front`), then in the dataset's
    `dataset.json` (`cameras.front`).
    """
    cams = sample.meta.get("cameras") if isinstance(sample.meta, dict) else None
    if isinstance(cams, dict) and isinstance(cams.get("front"), dict):
        return cams["front"]
    info_path = root / "dataset.json"
    if info_path.exists():
        try:
            info = read_json(info_path)
        except (OSError, ValueError):
            return None
        cams = info.get("cameras") if isinstance(info, dict) else None
        if isinstance(cams, dict) and isinstance(cams.get("front"), dict):
            return cams["front"]
    return None


def save_plan_png(
    path: str | os.PathLike,
    sample: DrivingSample,
    root: str | os.PathLike,
    plan: np.ndarray,
    title: str = "",
) -> Path:
    """Write a two-panel PNG: BEV (left) and the newest front frame with the plan (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    root = Path(root)
    fig, (bev, cam) = plt.subplots(1, 2, figsize=(11, 5), gridspec_kw={"width_ratios": [1, 1.6]})
    truth = sample.future_array() if sample.future is not None else None
    if truth is not None:
        bev.plot(truth[:, 1], truth[:, 0], "o-", color="#2a9d4b", ms=3, label="true future")
    bev.plot(plan[:, 1], plan[:, 0], "o-", color="#1f5bd1", ms=3, label="plan")
    ego = box_corners(np.zeros(3), 4.8, 2.0)
    bev.fill(ego[:, 1], ego[:, 0], color="#e07b00", alpha=0.8, label="ego")
    if sample.scene is not None:
        for obj in sample.scene.objects:
            x, y, h, length, width = obj.box
            c = box_corners(np.array([x, y, h]), length, width)
            bev.fill(c[:, 1], c[:, 0], color="#888888", alpha=0.6)
    reach = max(30.0, float(np.abs(plan[:, :2]).max()) + 5.0)
    if truth is not None:
        reach = max(reach, float(np.abs(truth[:, :2]).max()) + 5.0)
    bev.set_xlim(reach / 2, -reach / 2)  # y (left) to the left of the page
    bev.set_ylim(-8, reach)
    bev.set_aspect("equal")
    bev.set_xlabel("y (m, left)")
    bev.set_ylabel("x (m, forward)")
    bev.legend(loc="lower right", fontsize=7)
    bev.set_title("bird's-eye view", fontsize=9)

    cam.axis("off")
    if "front" in sample.cameras:
        image_path = root / sample.cameras["front"][-1]
        with Image.open(image_path) as im:
            image = np.asarray(im.convert("RGB"))
        cam.imshow(image)
        calib = front_calibration(sample, root)
        uv = ground_pixels(plan, calib) if calib else None
        if uv is not None:
            cam.plot(uv[:, 0], uv[:, 1], "o-", color="#1f5bd1", ms=3)
            if truth is not None and (tv := ground_pixels(truth, calib)) is not None:
                cam.plot(tv[:, 0], tv[:, 1], "o-", color="#2a9d4b", ms=3)
            cam.set_xlim(0, image.shape[1])
            cam.set_ylim(image.shape[0], 0)
            cam.set_title("front camera, plan projected on the road", fontsize=9)
        else:
            cam.set_title("front camera (no calibration: plan not projected)", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(path)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return out
