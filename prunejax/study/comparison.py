"""The study's grid as one record per (method, ratio, budget): the cells behind each comparison and its gaps.

Cells are `noise.Stat`s over seeds, gaps and costs `noise.Gap`s; a gap is `scratch - pruned` (positive: the
pruned initialization wins). The dense controls add the unpruned parent continued on R (`continued`) and
trained once for P+R (`once`), and split P-R_R − once into the second schedule's cost (continued − once)
and pruning's (P-R_R − continued).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from prunejax.study.noise import Stat, aggregate, gap


def cells(rows: list[dict[str, Any]]) -> dict[tuple, Stat]:
    """Cells keyed by (role, method, ratio, budget, setting, shape), over the seeds of each."""
    groups: dict[tuple, list[float | None]] = defaultdict(list)
    for r in rows:
        groups[(r["role"], r["method"], r["ratio"], r["budget"], r["setting"], r["shape"])].append(r["val_loss"])
    return {k: aggregate(v) for k, v in groups.items()}


def mean_of(x: Stat | None) -> float | None:
    return None if x is None else x.mean


def comparison(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per (method, ratio, budget): one-shot, P-R_R, S_R, S_{P+R} (same-shape scratch), the dense
    controls where planned, and the gaps. Cells are Stats, gaps and costs Gaps (None where not measured)."""
    c = cells(rows)
    keys = sorted(
        {(r["method"], r["granularity"], r["ratio"], r["budget"]) for r in rows if r["role"] == "retrained"},
        key=lambda k: (k[0], k[2], k[3]),
    )
    out = []
    for method, gran, ratio, budget in keys:
        pruned = c.get(("retrained", method, ratio, budget, "", ""))
        s_r = c.get(("scratch", method, ratio, budget, "equal_train", "same"))
        s_pr = c.get(("scratch", method, ratio, budget, "equal_total", "same"))
        continued = c.get(("control", "parent", 0.0, budget, "continue", ""))
        once = c.get(("control", "parent", 0.0, budget, "once", ""))
        out.append(
            {
                "method": method,
                "granularity": gran,
                "ratio": ratio,
                "budget": budget,
                "oneshot": c.get(("oneshot", method, ratio, 0, "", "")),
                "pruned": pruned,
                "scratch_equal_train": s_r,
                "scratch_equal_total": s_pr,
                "gap_equal_train": gap(s_r, pruned),
                "gap_equal_total": gap(s_pr, pruned),
                "continued": continued,
                "once": once,
                "schedule_cost": gap(continued, once),  # P then R instead of P+R in one schedule
                "pruning_cost": gap(pruned, continued),  # pruned and retrained instead of the parent continued
            }
        )
    return out


STATS = ("oneshot", "pruned", "scratch_equal_train", "scratch_equal_total", "continued", "once")
GAPS = ("gap_equal_train", "gap_equal_total", "schedule_cost", "pruning_cost")
CONTROL_COLUMNS = ("continued", "once", "schedule_cost", "pruning_cost")


def seeded(comp: list[dict[str, Any]]) -> bool:
    """Whether any cell was planned with several seeds."""
    return any(r[k] is not None and r[k].planned > 1 for r in comp for k in STATS)


def has_control(comp: list[dict[str, Any]]) -> bool:
    return any(r["continued"] is not None or r["once"] is not None for r in comp)
