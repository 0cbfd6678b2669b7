"""The model behind the service: one AutoVLA, its planners, and the batch run the queue calls.

A planning request becomes a `PlanJob` (a DrivingSample whose camera entries name frames in
its own `MemoryImages`) plus `PlanOptions`. Jobs are batched by `batch_key(options)`:
`Planner.plan` takes one mode and one set of sampling options per call, and one seed for the
whole batch, so

* greedy requests (temperature 0) with equal options share batches: greedy plans do not
  depend on the batch, so N concurrent requests get the plans of N single requests;
* sampling requests with a seed are planned alone (batches of one), so a seeded request
  gets the same plan whatever else is in flight;
* sampling requests without a seed share batches with equal options (nothing to reproduce).
"""

from __future__ import annotations

import itertools
import os
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from autovla.data.schema import DrivingSample
from autovla.model.inputs import MemoryImages
from autovla.model.prompts import SystemKind

_solo = itertools.count()
# Planners kept (LRU): one per (action choice, reasoning cap, system prompt). The reasoning cap
# comes from each request (chat `max_tokens`), so without a bound every distinct value would
# keep a planner (its vocabulary masks, its decoder's preallocated cache) for good.
MAX_PLANNERS = 8


@dataclass(frozen=True)
class PlanOptions:
    mode: str = "auto"
    action_choice: str = "argmax"
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    num_samples: int = 1
    max_reasoning_tokens: int | None = None  # None: the planner's default
    system: SystemKind | None = None  # None: the model's own


def batch_key(options: PlanOptions) -> Hashable:
    """Requests with equal keys may share a batch (see the module docstring)."""
    if options.temperature <= 0:
        return replace(options, seed=None, top_p=1.0)
    if options.seed is not None:
        return (options, next(_solo))  # unique: planned alone
    return options


@dataclass
class PlanJob:
    sample: DrivingSample
    images: MemoryImages


class Engine:
    """One loaded model; plans batches of jobs with planners built per decoding setting."""

    def __init__(self, vla: Any, name: str, max_planners: int = MAX_PLANNERS):
        self.vla = vla
        self.name = name
        self.max_planners = max_planners
        self._planners: OrderedDict[tuple, Any] = OrderedDict()

    @classmethod
    def load(
        cls,
        model_dir: str | os.PathLike,
        device: str | None = None,
        threads: int | None = None,
        name: str | None = None,
    ) -> Engine:
        """Load a model directory (GPU in bf16 when there is one, unless `device` says)."""
        import torch

        from autovla.model.backbone import quiet_transformers
        from autovla.model.checkpoint import AutoVLA

        quiet_transformers()
        if threads is not None:
            torch.set_num_threads(threads)
        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if dev.startswith("cuda") else None
        vla = AutoVLA.from_pretrained(model_dir, device=dev, dtype=dtype)
        return cls(vla, name or Path(model_dir).resolve().name)

    @property
    def fmt(self) -> Any:
        return self.vla.fmt

    @property
    def default_system(self) -> SystemKind:
        return self.vla.info.get("system", "dual")

    @property
    def default_reasoning_tokens(self) -> int:
        return int(self.fmt.max_reasoning_tokens)

    def planner(self, options: PlanOptions) -> Any:
        from autovla.model.planner import Planner

        key = (options.action_choice, options.max_reasoning_tokens, options.system)
        planner = self._planners.get(key)
        if planner is None:  # only the batch worker thread calls this: no lock needed
            planner = Planner(
                self.vla,
                system=options.system,
                max_reasoning_tokens=options.max_reasoning_tokens,
                action_choice=options.action_choice,  # type: ignore[arg-type]
            )
            self._planners[key] = planner
            while len(self._planners) > self.max_planners:
                self._planners.popitem(last=False)
        else:
            self._planners.move_to_end(key)
        return planner

    def plan(self, key: Hashable, jobs: Sequence[PlanJob]) -> list[list[Any]]:
        """Plan a batch of jobs with one option set; per job its `num_samples` PlanResults."""
        options = key[0] if isinstance(key, tuple) else key
        if not isinstance(options, PlanOptions):
            raise TypeError(f"batch key must carry PlanOptions, got {key!r}")
        results = self.planner(options).plan(
            [j.sample for j in jobs],
            [j.images for j in jobs],
            mode=options.mode,  # type: ignore[arg-type]
            num_samples=options.num_samples,
            temperature=options.temperature,
            top_p=options.top_p,
            seed=options.seed,
        )
        k = options.num_samples
        return [list(results[i * k : (i + 1) * k]) for i in range(len(jobs))]
