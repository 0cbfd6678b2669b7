"""Compare evaluation runs side by side, with paired bootstrap intervals on the differences."""

from __future__ import annotations

import os
from pathlib import Path

from autovla.eval.metrics import bootstrap_diff_ci
from autovla.eval.open_loop import RESULTS, read_rows
from autovla.io import read_json

COMPARE_KEYS = ("l2_stp3_1s", "l2_stp3_2s", "l2_stp3_3s", "l2_avg", "ade", "fde", "col_avg",
                "pdms", "nc", "dac", "ttc", "comfort", "ep", "rfs")  # fmt: skip
CI_KEYS = ("pdms", "l2_avg")


def compare_runs(runs: list[str | os.PathLike], seed: int = 0, n_boot: int = 1000) -> dict:
    """Means of each run, differences to the first, and a paired bootstrap CI (95 %) of each
    difference on PDMS and average L2 over the samples valid in both runs."""
    if len(runs) < 2:
        raise ValueError("compare needs at least two run directories")
    names, overall, rows = [], [], []
    for r in runs:
        path = Path(r)
        if not (path / RESULTS).is_file():
            raise FileNotFoundError(f"{path / RESULTS} not found: is {path} an evaluation run?")
        names.append(path.name)
        overall.append(read_json(path / RESULTS)["overall"])
        rows.append({x["id"]: x for x in read_rows(path) if x.get("valid")})
    keys = [k for k in COMPARE_KEYS if any(o.get(k) is not None for o in overall)]
    table = {k: [o.get(k) for o in overall] for k in keys}
    diffs: dict[str, list] = {}
    for i in range(1, len(runs)):
        base, other = rows[0], rows[i]
        for k in CI_KEYS:
            ids = sorted(
                x
                for x in base
                if x in other and base[x].get(k) is not None and other[x].get(k) is not None
            )
            if not ids:
                continue
            d, lo, hi = bootstrap_diff_ci(
                [base[x][k] for x in ids],
                [other[x][k] for x in ids],
                paired=True,
                n_boot=n_boot,
                seed=seed,
            )
            diffs.setdefault(k, []).append(
                {"run": names[i], "vs": names[0], "n": len(ids), "diff": d, "low": lo, "high": hi}
            )
    return {"runs": [str(r) for r in runs], "names": names, "means": table, "diffs": diffs}
