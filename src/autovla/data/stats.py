"""Dataset statistics: counts by category and speed / path-length distributions."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from autovla.data.manifest import iter_samples
from autovla.geometry import path_length

CATEGORIES = (
    "source",
    "split",
    "scenario_type",
    "instruction",
    "complexity",
    "complexity_by_source",
    "complexity_reason",
    "reasoning",
)


@dataclass
class DatasetStats:
    total: int = 0
    counts: dict[str, Counter] = field(default_factory=lambda: {c: Counter() for c in CATEGORIES})
    speeds: list[float] = field(default_factory=list)
    path_lengths: list[float] = field(default_factory=list)

    def quantiles(self, values: list[float]) -> dict[str, float]:
        if not values:
            return {}
        q = np.quantile(np.asarray(values), [0.0, 0.1, 0.5, 0.9, 1.0])
        mean = float(np.mean(values))
        return {"min": q[0], "p10": q[1], "median": q[2], "p90": q[3], "max": q[4], "mean": mean}


def dataset_stats(path: str | os.PathLike) -> DatasetStats:
    """One streaming pass over a dataset (only two floats per sample are kept)."""
    st = DatasetStats()
    for s in iter_samples(path):
        st.total += 1
        c = st.counts
        c["source"][s.source] += 1
        c["split"][s.split] += 1
        c["scenario_type"][s.scenario_type or "(none)"] += 1
        c["instruction"][s.instruction] += 1
        label = (
            "(unlabelled)" if s.complex is None else "complex" if s.complex else "straightforward"
        )
        c["complexity"][label] += 1
        c["complexity_by_source"][f"{s.source}: {label}"] += 1
        # why the rule (annotate.complexity) chose a scene; one sample can have several reasons
        for reason in s.meta.get("complexity_reasons") or ():
            c["complexity_reason"][str(reason)] += 1
        c["reasoning"]["with reasoning" if s.reasoning else "without reasoning"] += 1
        st.speeds.append(s.ego.speed)
        if s.future is not None:
            st.path_lengths.append(float(path_length(s.future_array()[:, :2])))
    return st
