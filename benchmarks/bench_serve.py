"""`autovla serve` on loopback: batch-1 overhead, batched throughput, memory over many requests.

The server runs as its own process (`python -m autovla serve`, as a user runs it) on a model
directory built here with random weights; clients are threads of this process using
`autovla.integrations.client`. Every phase is bounded in requests and in seconds.

    python benchmarks/bench_serve.py                                  # tiny preset, CPU
    python benchmarks/bench_serve.py --memory-requests 5000           # the memory target
    python benchmarks/bench_serve.py --preset qwen2.5-vl-3b --device cuda --frame-size 441x248

Phases (fast plans, greedy):
1. overhead: server with --max-batch 1, one client, sequential; overhead = client latency -
   the wall time of the planner call (`timings.batch`: `Planner.plan` on the decoded frames,
   processor included), i.e. HTTP, JSON, base64, image decoding, queueing and the answer's
   encoding, on both sides.
2. throughput, batch 1: the same server, 16 concurrent clients.
3. throughput, batched: a server with --max-batch 8 (flag), 16 concurrent clients.
4. memory: the batched server's RSS after a warm-up and after --memory-requests more.

Targets (tiny preset, 2 cores): phase 3 >= 3x phase 2 with zero errors, p99 reported; RSS
growth < 5 % over 5,000 requests; overhead <= 10 % of plan time.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from autovla.integrations.client import CAMERAS, PlanClient, ServiceError, plan_request  # noqa: E402


def build_model_dir(out: Path, preset: str, codebook_size: int, device: str) -> None:
    import torch

    from autovla.model.checkpoint import build_model
    from autovla.tokenizer import Codebook
    from autovla.tokenizer.contours import token_contours

    g = torch.Generator().manual_seed(0)
    ends = torch.zeros(codebook_size, 3)
    ends[1:, 0] = torch.rand(codebook_size - 1, generator=g) * 10
    ends[1:, 1] = torch.rand(codebook_size - 1, generator=g) - 0.5
    dtype = torch.bfloat16 if device.startswith("cuda") else None
    vla = build_model(preset, Codebook(token_contours(ends, 4.8, 2.0)), seed=0,
                      random_weights=True, dtype=dtype)  # fmt: skip
    vla.save_pretrained(out)


def make_bodies(n: int, size: tuple[int, int]) -> list[dict]:
    """n requests with camera-like JPEG frames (smooth gradients, edges, a little noise)."""
    rng = np.random.default_rng(0)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    bodies = []
    for i in range(n):
        cams = {}
        for c, cam in enumerate(CAMERAS):
            frames = []
            for t in range(4):
                chans = [(xx * (1 + c) + 9 * t) % 256, (yy * 2 + 40 * i) % 256,
                         ((xx + yy) // 3 + 30 * c) % 256]  # fmt: skip
                img = np.stack(chans, -1).astype(np.float64)
                img[h // 2 :, :, :] *= 0.5  # a horizon
                img += rng.normal(0, 6, img.shape)
                buf = io.BytesIO()
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
                    buf, format="JPEG", quality=90
                )
                frames.append(buf.getvalue())
            cams[cam] = frames
        bodies.append(plan_request(cams, vx=float(rng.uniform(0, 15)), instruction="go straight",
                                   mode="fast"))  # fmt: skip
    return bodies


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model: Path, args, max_batch: int, max_wait_ms: float):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "autovla", "serve", "--model", str(model),
               "--port", str(self.port), "--max-batch", str(max_batch),
               "--max-wait-ms", str(max_wait_ms), "--max-queue", str(max(32, 2 * max_batch)),
               "--device", args.device]  # fmt: skip
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        client = PlanClient(self.url, timeout=5)
        deadline = time.monotonic() + 600
        while True:
            try:
                client.health()
                break
            except ServiceError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(self.proc.stderr.read().decode()) from None
                time.sleep(0.2)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def run_load(url: str, bodies: list[dict], clients: int, total: int, max_s: float) -> dict:
    """`clients` threads send requests until `total` are answered or `max_s` passed."""
    lock = threading.Lock()
    issued = [0]
    lat, plan, over, batches, errors, images, server = [], [], [], [], [], [], []
    deadline = time.perf_counter() + max_s

    def worker(k: int) -> None:
        client = PlanClient(url, timeout=120)
        while True:
            with lock:
                if issued[0] >= total or time.perf_counter() > deadline:
                    return
                i = issued[0]
                issued[0] += 1
            t = time.perf_counter()
            try:
                out = client.call("POST", "/v1/plan", bodies[i % len(bodies)])
            except ServiceError as e:
                errors.append(str(e))
                continue
            dt = time.perf_counter() - t
            with lock:
                lat.append(dt)
                plan.append(out["timings"]["batch"])  # the planner call's wall time
                over.append(dt - out["timings"]["batch"])
                batches.append(out["batch_size"])
                images.append(out["timings"]["images"])
                server.append(out["timings"]["total"])

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    wall = time.perf_counter() - t0
    return {"n": len(lat), "errors": len(errors), "first_error": errors[:1], "wall": wall,
            "rps": len(lat) / wall, "lat": lat, "plan": plan, "over": over, "images": images,
            "server": server,
            "batch": statistics.mean(batches) if batches else 0.0}  # fmt: skip


class InProcess:
    """`Planner.plan` in this process on the same frames written as JPEG files: what planning
    costs without the service (batch 1, fast, greedy)."""

    def __init__(self, model: Path, bodies: list[dict], args, root: Path):
        import base64

        import torch

        from autovla.data.schema import DrivingSample, EgoState
        from autovla.model.checkpoint import AutoVLA
        from autovla.model.planner import Planner

        if args.threads:
            torch.set_num_threads(args.threads)
        dtype = torch.bfloat16 if args.device.startswith("cuda") else None
        self.planner = Planner(AutoVLA.from_pretrained(model, device=args.device, dtype=dtype))
        self.root = root
        self.samples = []
        for i, b in enumerate(bodies):
            cams = {}
            for cam, frames in b["cameras"].items():
                cams[cam] = []
                for t, data in enumerate(frames):
                    rel = f"{i}/{cam}_{t}.jpg"
                    (root / rel).parent.mkdir(parents=True, exist_ok=True)
                    (root / rel).write_bytes(base64.b64decode(data))
                    cams[cam].append(rel)
            self.samples.append(DrivingSample(
                id=f"s{i}", source="bench", split="test", cameras=cams,
                ego=EgoState(**b["ego"]), instruction=b["instruction"], history=[],
            ))  # fmt: skip

    def scan(self, batch_sizes: list[int], repeats: int = 3) -> dict[int, float]:
        """Best-of-`repeats` seconds per sample of one `Planner.plan` call at each batch size:
        the ceiling of what batching can give the service."""
        out = {}
        for bs in batch_sizes:
            batch = [self.samples[i % len(self.samples)] for i in range(bs)]
            self.planner.plan(batch, self.root, mode="fast")  # warm-up
            best = float("inf")
            for _ in range(repeats):
                t = time.perf_counter()
                self.planner.plan(batch, self.root, mode="fast")
                best = min(best, time.perf_counter() - t)
            out[bs] = best / bs
        return out

    def plan_s(self, i: int) -> float:
        t = time.perf_counter()
        self.planner.plan([self.samples[i % len(self.samples)]], self.root, mode="fast")
        return time.perf_counter() - t


def overhead_phase(url: str, bodies: list[dict], n: int, inproc: InProcess | None) -> dict:
    """One client, sequential; each service request right after the same sample planned in
    process (when `inproc`), so both see the same machine load."""
    client = PlanClient(url, timeout=120)
    keys = ("lat", "plan", "over", "images", "server", "inproc")
    rec: dict[str, list[float]] = {k: [] for k in keys}
    busy = 0.0
    for k in range(8 + n):
        t_in = inproc.plan_s(k) if inproc is not None else float("nan")
        t = time.perf_counter()
        out = client.call("POST", "/v1/plan", bodies[k % len(bodies)])
        dt = time.perf_counter() - t
        if k < 8:  # warm-up
            continue
        busy += dt
        tm = out["timings"]
        for key, v in zip(keys, (dt, tm["batch"], dt - tm["batch"], tm["images"], tm["total"],
                                 t_in), strict=True):  # fmt: skip
            rec[key].append(v)
    return {"n": n, "errors": 0, "first_error": [], "wall": busy, "rps": n / busy,
            "batch": 1.0, **rec}  # fmt: skip


def ms(values, q) -> float:
    return 1000 * float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="server torch threads (0: default)")
    ap.add_argument("--codebook-size", type=int, default=2048)
    ap.add_argument("--frame-size", default="224x112")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--overhead-requests", type=int, default=60)
    ap.add_argument("--throughput-requests", type=int, default=320)
    ap.add_argument("--memory-requests", type=int, default=0, help="5000 for the target")
    ap.add_argument("--max-batch", type=int, default=8, help="of the batched server")
    ap.add_argument("--max-wait-ms", type=float, default=10.0)
    ap.add_argument("--max-seconds", type=float, default=120.0, help="per phase")
    ap.add_argument("--skip-in-process", action="store_true", help="skip the reference run")
    args = ap.parse_args()
    size = tuple(int(v) for v in args.frame_size.split("x"))
    bodies = make_bodies(32, size)
    body_kb = statistics.mean(len(str(b)) for b in bodies) / 1024
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        t = time.perf_counter()
        build_model_dir(model, args.preset, args.codebook_size, args.device)
        print(f"built {args.preset} in {time.perf_counter() - t:.0f} s; request ~{body_kb:.0f} KB")

        inproc, scan = None, None
        if not args.skip_in_process:
            inproc = InProcess(model, bodies[:16], args, Path(tmp) / "frames")
            scan = inproc.scan([1, 4, 8, 16])
        single = Server(model, args, max_batch=1, max_wait_ms=0.0)
        try:
            r1 = overhead_phase(single.url, bodies, args.overhead_requests, inproc)
            del inproc
            rows.append(("1 client, max-batch 1", r1))
            rb1 = run_load(single.url, bodies, args.clients, args.throughput_requests,
                           args.max_seconds)  # fmt: skip
            rows.append((f"{args.clients} clients, max-batch 1", rb1))
        finally:
            single.stop()

        batched = Server(model, args, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms)
        try:
            run_load(batched.url, bodies, args.clients, 2 * args.clients, args.max_seconds)
            rb = run_load(batched.url, bodies, args.clients, args.throughput_requests,
                          args.max_seconds)  # fmt: skip
            rows.append((f"{args.clients} clients, max-batch {args.max_batch}", rb))
            mem = None
            if args.memory_requests:
                run_load(batched.url, bodies, args.clients, 500, args.max_seconds)
                before = batched.rss_mb()
                rm = run_load(batched.url, bodies, args.clients, args.memory_requests,
                              max(args.max_seconds, 1800))  # fmt: skip
                after = batched.rss_mb()
                mem = (rm["n"], rm["errors"], before, after, 100 * (after - before) / before)
        finally:
            batched.stop()

    print(f"\nautovla serve, {args.preset} on {args.device} ({args.threads or 'default'} torch "
          f"threads), frames {args.frame_size} JPEG, fast plans, greedy")  # fmt: skip
    print("setup | requests | errors | req/s | mean batch | p50 ms | p99 ms | planner call p50 ms")
    for name, r in rows:
        lat = f"{ms(r['lat'], 50):.1f} | {ms(r['lat'], 99):.1f} | {ms(r['plan'], 50):.1f}"
        print(f"{name} | {r['n']} | {r['errors']} | {r['rps']:.1f} | {r['batch']:.1f} | {lat}")
    speedup = rows[2][1]["rps"] / rows[1][1]["rps"]
    vs_one = rows[2][1]["rps"] / rows[0][1]["rps"]
    print(f"\nbatched throughput / batch-1 throughput (16 clients): {speedup:.2f}x "
          f"(vs one sequential client: {vs_one:.2f}x); target >= 3x")  # fmt: skip
    med = statistics.median
    ratio = med(o / p for o, p in zip(r1["over"], r1["plan"], strict=True))
    print(f"service overhead at batch 1 (median): {1000 * med(r1['over']):.1f} ms = "
          f"{100 * ratio:.1f} % of the planner call on decoded frames; target <= 10 %")  # fmt: skip
    other = [s - p - i for s, p, i in zip(r1["server"], r1["plan"], r1["images"], strict=True)]
    http = [a - s for a, s in zip(r1["lat"], r1["server"], strict=True)]
    print(f"  of which image decoding {1000 * med(r1['images']):.1f} ms, other server work "
          f"{1000 * med(other):.1f} ms, HTTP and client {1000 * med(http):.1f} ms")  # fmt: skip
    if not math.isnan(r1["inproc"][0]):
        rel = med(a / b - 1 for a, b in zip(r1["lat"], r1["inproc"], strict=True))
        print(f"in-process Planner.plan from the same JPEG files (alternating with the service "
              f"requests): {1000 * med(r1['inproc']):.1f} ms; the service answers in "
              f"{1000 * med(r1['lat']):.1f} ms, {100 * rel:+.1f} % (median of pairs)")  # fmt: skip
    if scan is not None:
        per = ", ".join(f"{bs}: {1000 * v:.1f} ms" for bs, v in scan.items())
        print(f"in-process Planner.plan per sample by batch size (from files): {per}")
    if mem is not None:
        n, err, before, after, growth = mem
        print(f"memory: {n} requests ({err} errors), server RSS {before:.0f} -> {after:.0f} MB "
              f"({growth:+.1f} %); target < 5 %")  # fmt: skip
    for _, r in rows:
        if r["first_error"]:
            print("first error:", r["first_error"][0])


if __name__ == "__main__":
    main()
