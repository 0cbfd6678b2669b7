"""Run logging: TensorBoard scalars, a metrics.jsonl file, and a tqdm bar with ETA (rank 0)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


class Tracker:
    """Writes only on the main process; every method is a no-op elsewhere."""

    def __init__(
        self,
        out_dir: str | Path,
        enabled: bool,
        tensorboard: bool = True,
        progress: bool = True,
        total: int = 0,
        initial: int = 0,
    ):
        self.enabled = enabled
        self.writer = None
        self.bar = None
        self.file = None
        if not enabled:
            return
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tensorboard"))
        self.file = open(out / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total, initial=initial, desc="sft", unit="step", dynamic_ncols=True
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
            shown = {k: f"{clean[k]:.3g}" for k in ("loss", "act_acc", "lr") if k in clean}
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
