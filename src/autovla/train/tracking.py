"""Run logging: TensorBoard scalars, a metrics.jsonl file, and a tqdm bar with ETA (rank 0)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from autovla.io import atomic_open

METRICS_FILE = "metrics.jsonl"


class Tracker:
    """Writes only on the main process; every method is a no-op elsewhere.

    `label` names the stage on the progress bar; `shown` are the metrics it displays. A run
    that resumes at step `initial` first drops what an earlier attempt logged after that step
    (from metrics.jsonl and TensorBoard), so no step appears twice.
    """

    def __init__(
        self,
        out_dir: str | Path,
        enabled: bool,
        tensorboard: bool = True,
        progress: bool = True,
        total: int = 0,
        initial: int = 0,
        label: str = "train",
        shown: tuple[str, ...] = ("loss", "lr"),
    ):
        self.enabled = enabled
        self.shown = shown
        self.writer = None
        self.bar = None
        self.file = None
        if not enabled:
            return
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=initial + 1)
        drop_records_after(out / METRICS_FILE, initial)
        self.file = open(out / METRICS_FILE, "a", encoding="utf-8")  # noqa: SIM115
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total, initial=initial, desc=label, unit="step", dynamic_ncols=True
            )

    def log(self, step: int, metrics: dict[str, Any], kind: str = "train") -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        if self.writer is not None:
            for k, v in clean.items():
                if math.isfinite(v):
                    self.writer.add_scalar(f"{kind}/{k}", v, step)
            self.writer.flush()
        if self.file is not None:
            rec = {
                "kind": kind,
                "step": step,
                **{k: (v if math.isfinite(v) else None) for k, v in clean.items()},
            }
            self.file.write(json.dumps(rec) + "\n")
            self.file.flush()
        if self.bar is not None and kind == "train":
            shown = {k: f"{clean[k]:.3g}" for k in self.shown if k in clean}
            self.bar.set_postfix(shown, refresh=False)

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.file is not None:
            self.file.close()


def drop_records_after(path: Path, step: int) -> None:
    """Keep only the records of steps <= `step` (and no torn last line) in a metrics file."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line a killed run did not finish
        if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= step:
            kept.append(line)
    with atomic_open(path) as f:
        f.write("".join(f"{line}\n" for line in kept))
