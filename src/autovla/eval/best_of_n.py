"""Best-of-N with the scorer as oracle (docs/method.md section 8: the paper's best-of-6 row).

`autovla eval open-loop --num-samples K` samples K plans per scene (temperature 1) and
scores every one; its rows keep each candidate's PDMS (`candidate_pdms`) and ADE
(`candidate_ade`). The K candidates of a scene are independent draws, so the first N of them
are a draw of N: one run with K = 6 gives best-of-1, -2, -4 and -6 on the same samples. The
oracle keeps the best candidate by PDMS (highest) or by ADE (lowest); it needs the ground
truth, so it measures what sampling could reach, not a planner.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def best_of_n(rows: Iterable[dict], ns: Sequence[int] = (1, 2, 4, 6)) -> dict[int, dict]:
    """For each N: the mean over scenes of the best of the first N candidates' PDMS and ADE,
    and how many scenes count (a scene needs N candidates with a score). Raises when no row
    has N candidates (the run sampled fewer)."""
    rows = [r for r in rows if r.get("valid")]
    out: dict[int, dict] = {}
    for n in ns:
        if n < 1:
            raise ValueError(f"N must be >= 1, got {n}")
        pdms = [_best(r.get("candidate_pdms"), n, max) for r in rows]
        ade = [_best(r.get("candidate_ade"), n, min) for r in rows]
        pdms = [v for v in pdms if v is not None]
        ade = [v for v in ade if v is not None]
        if not pdms and not ade:
            most = max((len(r.get("candidate_ade") or []) for r in rows), default=0)
            raise ValueError(f"no scene has {n} scored candidates (the run sampled {most})")
        out[n] = {
            "pdms": float(np.mean(pdms)) if pdms else None,
            "n_pdms": len(pdms),
            "ade": float(np.mean(ade)) if ade else None,
            "n_ade": len(ade),
        }
    return out


def _best(values: list | None, n: int, pick) -> float | None:
    if not values or len(values) < n:
        return None
    first = [v for v in values[:n] if v is not None]  # a candidate the scorer could not score
    return float(pick(first)) if first else None
