"""Speed of the open-loop metrics and of rule-based annotation (CPU, one process).

.venv/bin/python benchmarks/eval_metrics.py
"""

from __future__ import annotations

import time

import numpy as np

from autovla.annotate.rules import build_reasoning
from autovla.data.schema import DrivingSample, EgoState, SceneFacts, SceneObject
from autovla.eval.metrics import at_horizons, bev_collision, l2_per_step


def _sample(i: int, rng: np.random.Generator) -> DrivingSample:
    v = 5.0 + rng.random() * 10
    objs = []
    for k in range(12):
        x, y = rng.uniform(-20, 50), rng.uniform(-10, 10)
        vx = rng.uniform(0, 10)
        fut = [(x + vx * 0.5 * (t + 1), y, 0.0) for t in range(10)]
        objs.append(SceneObject(id=f"o{k}", kind="vehicle", box=(x, y, 0, 4.5, 1.9),
                                velocity=(vx, 0), future=fut))  # fmt: skip
    return DrivingSample(
        id=f"b{i}", source="synthetic", split="test",
        cameras={c: ["x.png"] for c in ("front", "front_left", "front_right")},
        ego=EgoState(vx=v), instruction="go straight",
        history=[(-v * 0.5 * k, 0.0, 0.0) for k in (3, 2, 1, 0)],
        future=[(v * 0.5 * (t + 1), 0.0, 0.0) for t in range(10)], complex=True,
        scene=SceneFacts(objects=objs, traffic_light="red", traffic_light_distance=30.0,
                         road="straight", lanes=3, ego_lane=1, lighting="day"),
    )  # fmt: skip


def main() -> None:
    rng = np.random.default_rng(0)
    samples = [_sample(i, rng) for i in range(200)]
    rows = []
    gt = np.stack([s.future_array() for s in samples])
    pred = gt + rng.normal(0, 0.5, gt.shape)
    t0 = time.perf_counter()
    for _ in range(100):
        for conv in ("stp3", "uniad"):
            at_horizons(l2_per_step(pred, gt), conv)
    rows.append(("L2 both conventions, batch of 200", (time.perf_counter() - t0) / 100 / 200))
    t0 = time.perf_counter()
    for s, p in zip(samples, pred, strict=True):
        bev_collision(p, s.future_array(), s.scene)
    rows.append(("BEV collision, 12 objects, 6 steps", (time.perf_counter() - t0) / len(samples)))
    t0 = time.perf_counter()
    for s in samples:
        build_reasoning(s, 0)
    rows.append(("rule-based reasoning text", (time.perf_counter() - t0) / len(samples)))
    print(f"{'operation':40s} {'per sample':>12s}")
    for name, sec in rows:
        print(f"{name:40s} {sec * 1e6:9.1f} us")


if __name__ == "__main__":
    main()
