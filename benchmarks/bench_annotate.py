"""VLM annotation overhead and throughput against a server that answers instantly.

    .venv/bin/python benchmarks/bench_annotate.py [--samples 200] [--width 1920 --height 1080]

1. Client-side work per sample on one core: building the request (three camera frames read,
   shrunk to --image-size and encoded as JPEG data URLs, the hint text) and parsing/checking
   an answer. Target <= 20 ms.
2. Whole runs of `annotate_vlm` against a stand-in server in another process that answers
   at once: samples/s with --concurrency requests in flight. Target >= 50 samples/s at 32.
Camera frames are synthetic JPEGs of the given size (NAVSIM's are 1920 x 1080).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import re
import statistics
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image

from autovla.annotate.vlm import VLMOptions, annotate_vlm
from autovla.annotate.vlm_parse import check_answer
from autovla.annotate.vlm_prompt import build_messages, hint_action, load_template
from autovla.data.manifest import load_samples, write_manifest
from autovla.data.schema import STANDARD_CAMERAS, DrivingSample, EgoState

ANSWER = (
    "Scene: A straight two-lane road in daylight.\nCritical objects: a car 12 m ahead, "
    "braking; a cyclist on the right, riding on.\nIntent: The instruction is to {i}; keep a "
    "safe gap.\nAction: {a}"
)


def make_dataset(root: Path, n: int, width: int, height: int) -> None:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, (height // 8, width // 8, 3), dtype=np.uint8)
    img = Image.fromarray(noise).resize((width, height), Image.BILINEAR)
    for cam in STANDARD_CAMERAS:  # one file per camera and frame slot, shared by samples
        for t in range(4):
            p = root / "img" / f"{cam}_{t}.jpg"
            p.parent.mkdir(parents=True, exist_ok=True)
            img.save(p, quality=90)
    samples = []
    for k in range(n):
        v = 5.0 + k % 7
        samples.append(
            DrivingSample(
                id=f"b{k:05d}",
                source="bench",
                split="train",
                cameras={c: [f"img/{c}_{t}.jpg" for t in range(4)] for c in STANDARD_CAMERAS},
                ego=EgoState(vx=v),
                instruction="go straight",
                history=[(-v * 0.5 * j, 0.0, 0.0) for j in (3, 2, 1, 0)],
                future=[(v * 0.5 * (j + 1), 0.0, 0.0) for j in range(10)],
                complex=True,
            )
        )
    write_manifest(root, samples)


class _Instant(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = req["messages"][-1]["content"][-1]["text"]
        a = re.search(r"Action taken \(ground truth\): (.+?)\.\n", text).group(1)
        i = re.search(r"Instruction: (.+?)\.\n", text).group(1)
        content = ANSWER.format(i=i, a=a)
        body = json.dumps(
            {
                "choices": [{"message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": 600, "completion_tokens": 90},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _serve(port_q: mp.Queue) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Instant)
    server.daemon_threads = True
    port_q.put(server.server_address[1])
    server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--image-size", type=int, default=448)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ds"
        make_dataset(root, args.samples, args.width, args.height)
        samples = load_samples(root)
        tpl = load_template()
        build, parse = [], []
        for s in samples[:50]:
            t0 = time.perf_counter()
            build_messages(tpl, s, root, "latest", args.image_size)
            t1 = time.perf_counter()
            check_answer(ANSWER.format(i=s.instruction, a=hint_action(s)), s.instruction,
                         hint_action(s), tpl.max_chars)  # fmt: skip
            t2 = time.perf_counter()
            build.append(t1 - t0)
            parse.append(t2 - t1)
        b, p = statistics.median(build) * 1e3, statistics.median(parse) * 1e3
        print(f"| step (one core, {args.width}x{args.height} JPEGs -> {args.image_size} px) "
              "| median ms |")  # fmt: skip
        print("|---|---|")
        print(f"| build request (3 images + text) | {b:.2f} |")
        print(f"| parse + check answer | {p:.3f} |")
        print(f"| total per sample | {b + p:.2f} |")
        print()
        q: mp.Queue = mp.Queue()
        proc = mp.Process(target=_serve, args=(q,), daemon=True)
        proc.start()
        url = f"http://127.0.0.1:{q.get(timeout=30)}/v1"
        print(f"| requests in flight | samples | samples/s (instant server, {args.samples}) |")
        print("|---|---|---|")
        try:
            for c in args.concurrency:
                for f in (root / "annotations").glob("*"):
                    f.unlink()
                opts = VLMOptions(endpoint=url, model="instant", concurrency=c, progress=False,
                                  overwrite=True)  # fmt: skip
                s = annotate_vlm(root, opts)
                assert s.accepted == args.samples, s.to_json()
                print(f"| {c} | {s.sent} | {s.sent / s.seconds:.1f} |")
        finally:
            proc.terminate()


if __name__ == "__main__":
    main()
