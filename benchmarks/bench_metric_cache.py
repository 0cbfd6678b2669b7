"""Speed of NAVSIM metric caching on the test fixture's nuPlan map (one process, one core).

Writes the fixture map (tests/_nuplan_fixtures.py, GDAL through pyogrio) and a long log over
it (the ego drives 200 m, one scene per frame), then times: reading the map; building each
scene's inputs (route, centerline, drivable map, interpolated tracks); PDM-Closed; writing the
cache file; and the whole `autovla data metric-cache navsim` job with one worker (log read,
every scene, manifest rewrite). Usage:
    python benchmarks/bench_metric_cache.py [--frames 50] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from autovla.data.sources.navsim import NavsimConverter
from autovla.data.sources.runner import run_conversion
from autovla.scoring.cache_job import CACHE_DIR, MetricCacheJob, attach_caches
from autovla.scoring.navsim_cache import build_cache, scene_inputs, scene_window
from autovla.scoring.nuplan_map import NuPlanMap, map_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import _nuplan_fixtures as F  # the tests' map and log writers


def best(fn, repeats: int) -> float:
    out = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=50, help="log length (scenes = frames - 13)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        F.write_map(root / "maps")
        frames = F.make_log(n=args.frames, ego_x0=15.0, blobs=root / "blobs" / "test")
        F.write_log(root / "logs", frames)
        path = map_file(root / "maps", F.LOCATION)
        t_map = best(lambda: NuPlanMap(path), args.repeats)
        m = NuPlanMap(path)
        tokens = [f["token"] for f in frames[3 : len(frames) - 10]]
        windows = [scene_window(frames, t) for t in tokens]
        n = len(windows)
        t_inputs = best(lambda: [scene_inputs(w, m) for w in windows], args.repeats)
        inputs = [scene_inputs(w, m) for w in windows]
        t_build = best(lambda: [build_cache(i) for i in inputs], args.repeats)
        caches = [build_cache(i) for i in inputs]
        t_save = best(lambda: [c.save(root / "c" / f"{c.token}.npz") for c in caches], args.repeats)

        data = root / "data"
        conv = NavsimConverter(root / "logs", root / "blobs", data, split="test", stride=1)
        run_conversion(conv.units(), conv, data, progress=False)

        def job() -> None:
            import shutil

            shutil.rmtree(data / CACHE_DIR, ignore_errors=True)
            j = MetricCacheJob(root / "logs", root / "maps", data)
            run_conversion(j.units(), j, data / CACHE_DIR, progress=False, done=j.done,
                           manifests=False)  # fmt: skip
            attach_caches(data)

        t_job = best(job, args.repeats)
    rows = [
        ("read the fixture map (once per worker)", f"{1e3 * t_map:.1f} ms"),
        ("scene inputs (route, map, tracks)", f"{1e3 * t_inputs / n:.2f} ms/scene"),
        ("PDM-Closed (15 proposals scored)", f"{1e3 * t_build / n:.2f} ms/scene"),
        ("write the cache (.npz)", f"{1e3 * t_save / n:.2f} ms/scene"),
        ("cache build per core (inputs + PDM-Closed + write)",
         f"{n / (t_inputs + t_build + t_save):.1f} scenes/s"),
        (f"whole job, 1 worker, {n} scenes (log, map, manifests)", f"{n / t_job:.1f} scenes/s"),
    ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    print(f"| {'measure':<{width}} | value |\n|{'-' * (width + 2)}|---|")
    for name, value in rows:
        print(f"| {name:<{width}} | {value} |")


if __name__ == "__main__":
    main()
