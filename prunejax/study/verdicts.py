"""A verdict for each of the paper's four findings — reproduced, partly reproduced, not reproduced, within
noise, or not measured — with the numbers behind it, and the dense controls' split of the equal-total gap.

Each cell's gap (or each trend's change of gap) is called above, within or below its noise band
(`noise.Gap.call`): a finding is reproduced where every comparison it makes is above its band, partly
where some are, not reproduced where none are and some go the other way beyond the band, and within
noise where all sit inside their bands.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from prunejax.study.comparison import CONTROL_COLUMNS, GAPS, STATS
from prunejax.study.noise import Gap, Stat, change, fmt_gap

FINE = ("unstructured", "mixed")  # the paper's fine granularities at equal total tokens
COARSE = ("depth", "semi-structured")


def _verdict(calls: list[int]) -> str:
    """All above the band: reproduced; some: partly; none but some below: not reproduced; else within noise."""
    ups = sum(c > 0 for c in calls)
    if ups == len(calls):
        return "reproduced"
    if ups:
        return "partly reproduced"
    return "not reproduced" if any(c < 0 for c in calls) else "within noise"


def _cell(r: dict[str, Any]) -> str:
    return f"{r['method']}@{r['ratio']:g}/R={r['budget']:,}"


def findings(comp: list[dict[str, Any]]) -> list[str]:
    """A plain statement for each of the paper's four findings, with the numbers (and the dense controls')."""
    eq = [r for r in comp if r["gap_equal_train"] is not None]
    banded = any(r[k] is not None and r[k].spread is not None for r in comp for k in GAPS)
    return [
        equal_train(eq, banded),
        budget_trend(eq, banded),
        ratio_trend(eq, banded),
        equal_total(comp, banded),
        *owl_against_wanda(eq, banded),
        *control_findings(comp),
        *missing_seeds(comp),
    ]


def equal_train(eq: list[dict[str, Any]], banded: bool) -> str:
    """Finding 1: pruned init beats random init at equal training tokens, in every cell."""
    if not eq:
        return "1. Equal training tokens: **not measured** (no pruned/scratch pair finished)."
    calls = [r["gap_equal_train"].call() for r in eq]
    mean_gap = statistics.fmean(r["gap_equal_train"].value for r in eq)
    head = (
        f"1. Equal training tokens, pruned init beats random init: **{_verdict(calls)}** — pruned wins "
        + ("beyond the noise band in " if banded else "")
        + f"{sum(c > 0 for c in calls)}/{len(eq)} (method, ratio, budget) cells; mean gap {mean_gap:+.3f} nats"
    )
    if not banded:
        losers = ", ".join(_cell(r) for r, c in zip(eq, calls, strict=True) if c <= 0)
        return head + (f"; scratch wins or ties at {losers}" if losers else "") + "."
    noisy = ", ".join(_cell(r) for r, c in zip(eq, calls, strict=True) if c == 0)
    losers = ", ".join(_cell(r) for r, c in zip(eq, calls, strict=True) if c < 0)
    return (
        head
        + (f"; within noise at {noisy}" if noisy else "")
        + (f"; scratch wins beyond the noise band at {losers}" if losers else "")
        + "."
    )


def _trend(eq: list[dict[str, Any]], fixed: str, along: str) -> list[tuple[tuple, dict, dict, Gap]]:
    """For each (method, `fixed`) with two or more values of `along`: its records at the smallest and the
    largest value, and the change of the equal-train gap between them (negative: it narrows)."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in eq:
        groups[(r["method"], r[fixed])].append(r)
    pairs = []
    for key, rs in groups.items():
        if len(rs) >= 2:
            lo, hi = min(rs, key=lambda r: r[along]), max(rs, key=lambda r: r[along])
            pairs.append((key, lo, hi, change(lo["gap_equal_train"], hi["gap_equal_train"])))
    return pairs


def _moved(d: Gap) -> str:
    return {1: "widens", 0: "within noise", -1: "narrows"}[d.call()]


def _from_to(lo: dict[str, Any], hi: dict[str, Any], d: Gap, banded: bool, at: str = "") -> str:
    """`+1.000 → +0.500`, or with bands `+1.000 ± 0.1 → +0.500 ± 0.1 (change -0.500 ± 0.141: narrows)`;
    `at` names the record field written after each gap (the ratio trend writes `@ratio`)."""

    def one(r: dict[str, Any]) -> str:
        g = r["gap_equal_train"]
        return (fmt_gap(g) if banded else f"{g.value:+.3f}") + (f"@{r[at]:g}" if at else "")

    return f"{one(lo)} → {one(hi)}" + (f" (change {fmt_gap(d)}: {_moved(d)})" if banded else "")


def budget_trend(eq: list[dict[str, Any]], banded: bool) -> str:
    """Finding 2: the equal-train gap narrows from the smallest to the largest retraining budget."""
    pairs = _trend(eq, "ratio", "budget")
    if not pairs:
        return "2. Budget trend: **not measured** (needs two retraining budgets)."
    calls = [-d.call() for *_, d in pairs]  # narrowing is the finding
    detail = "; ".join(f"{m}@{r:g}: {_from_to(lo, hi, d, banded)}" for (m, r), lo, hi, d in pairs)
    return (
        f"2. The advantage narrows as the retraining budget grows: **{_verdict(calls)}** — "
        f"{sum(c > 0 for c in calls)}/{len(pairs)} (method, ratio) pairs narrow "
        + ("beyond the noise band " if banded else "")
        + f"from the smallest to the largest budget ({detail})."
    )


def ratio_trend(eq: list[dict[str, Any]], banded: bool) -> str:
    """Finding 3: the equal-train gap narrows from the lowest to the highest ratio."""
    pairs = _trend(eq, "budget", "ratio")
    if not pairs:
        return "3. Ratio trend: **not measured** (needs two ratios of one method)."
    calls = [-d.call() for *_, d in pairs]
    detail = "; ".join(f"{m}/R={b:,}: {_from_to(lo, hi, d, banded, 'ratio')}" for (m, b), lo, hi, d in pairs)
    return (
        f"3. The advantage narrows as the ratio grows: **{_verdict(calls)}** — {sum(c > 0 for c in calls)}/"
        f"{len(pairs)} (method, budget) pairs have a smaller gap at the highest ratio"
        + (" beyond the noise band" if banded else "")
        + f" ({detail})."
    )


def owl_against_wanda(eq: list[dict[str, Any]], banded: bool) -> list[str]:
    """Does OWL's allocation of the same sparsity change Wanda's verdict against the same-shape scratch model?
    One line per OWL setting and ratio that Wanda also ran, over the budgets both finished; [] without OWL."""
    wanda = {(r["ratio"], r["budget"]): r for r in eq if r["method"] == "wanda"}
    groups: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for r in eq:
        if r["method"].split("-")[0] == "owl" and (r["ratio"], r["budget"]) in wanda:
            groups[(r["method"], r["ratio"])].append(r)
    called = {1: "pruned wins", 0: "within noise", -1: "scratch wins"}
    lines = []
    for (method, ratio), rs in sorted(groups.items()):
        parts, changed = [], 0
        for r in sorted(rs, key=lambda r: r["budget"]):
            o, w = r["gap_equal_train"], wanda[(ratio, r["budget"])]["gap_equal_train"]
            changed += o.call() != w.call()
            d = change(w, o)  # OWL's gap minus Wanda's: positive, OWL keeps more of pruning's advantage
            one = fmt_gap if banded else (lambda g: f"{g.value:+.3f}")
            parts.append(
                f"R={r['budget']:,}: {method} {one(o)} ({called[o.call()]}) vs wanda {one(w)} ({called[w.call()]}),"
                f" difference {one(d)}" + (f" ({_moved(d)})" if banded else "")
            )
        verdict = "changes the verdict" if changed else "does not change the verdict"
        lines.append(
            f"OWL against Wanda at ratio {ratio:g} (equal training tokens, each against its own same-shape scratch "
            f"model): **{verdict}** in {changed}/{len(rs)} budgets — " + "; ".join(parts) + "."
        )
    return lines


def equal_total(comp: list[dict[str, Any]], banded: bool) -> str:
    """Finding 4: at equal total tokens fine granularity stays ahead, coarse structure is matched or beaten."""
    tot = [r for r in comp if r["gap_equal_total"] is not None]
    if not tot:
        if not any(r["scratch_equal_total"] is not None for r in comp):
            return "4. Equal total tokens: **not measured** (the study plans no S_(P+R) run)."
        return "4. Equal total tokens: **not measured** (no S_(P+R) run finished)."
    fine = [r["gap_equal_total"].call() for r in tot if r["granularity"] in FINE]
    coarse = [r["gap_equal_total"].call() for r in tot if r["granularity"] in COARSE]
    fine_ok = sum(c > 0 for c in fine)
    coarse_ok = sum(c <= 0 for c in coarse)  # matched (within noise) or beaten
    # The distinguishing claim is that fine granularity keeps an advantage scratch cannot close;
    # coarse methods being matched is only half of it (that half also holds when scratch wins everywhere).
    if not fine:
        verdict = "not measured (no fine-grained method)"
    elif fine_ok == len(fine) and coarse_ok == len(coarse):
        verdict = "reproduced"
    elif fine_ok == 0:
        verdict = "not reproduced" if any(c < 0 for c in fine) else "within noise"
    else:
        verdict = "partly reproduced"
    detail = "; ".join(
        f"{r['method']}@{r['ratio']:g} ({r['granularity']}): {fmt_gap(r['gap_equal_total'], noise=True)}" for r in tot
    )
    return (
        f"4. At equal total tokens fine granularity keeps its advantage while coarse structure is "
        f"matched or beaten: **{verdict}** — fine methods ahead "
        + ("beyond the noise band " if banded else "")
        + f"in {fine_ok}/{len(fine)}, coarse methods matched or beaten in {coarse_ok}/{len(coarse)} "
        f"(gap S_(P+R) − P-R_R: {detail})."
    )


def missing_seeds(comp: list[dict[str, Any]]) -> list[str]:
    """One line naming every cell with fewer results than planned seeds (nothing when all finished)."""
    missing: dict[str, Stat] = {}  # a control cell appears in every row of its budget: listed once
    for r in comp:
        for k in STATS:
            if r[k] is not None and r[k].missing:
                missing[f"{k} at R={r['budget']:,}" if k in CONTROL_COLUMNS else f"{k} of {_cell(r)}"] = r[k]
    if not missing:
        return []
    listed = "; ".join(f"{label}: n={x.n}/{x.planned}" for label, x in missing.items())
    return [
        f"Missing results: {len(missing)} cell(s) have fewer seeds than planned; each is the mean of the "
        f"seeds that finished, and a gap without two seeds on each side counts as within noise ({listed})."
    ]


def control_findings(comp: list[dict[str, Any]]) -> list[str]:
    """What the second schedule costs (parent continued − parent once) and what pruning costs (P-R_R −
    parent continued), at each budget where the controls ran."""
    out = []
    sched = {r["budget"]: r["schedule_cost"] for r in comp if r["schedule_cost"] is not None}
    for budget, cost in sorted(sched.items()):
        rows = [r for r in comp if r["budget"] == budget and r["pruning_cost"] is not None]
        called = {1: "costs", 0: "within noise", -1: "gains"}
        detail = "; ".join(
            f"{r['method']}@{r['ratio']:g}: {fmt_gap(r['pruning_cost'])} ({called[r['pruning_cost'].call()]})"
            for r in rows
        )
        out.append(
            f"Dense control at R={budget:,} (splits finding 4's gap): training the unpruned parent in two "
            f"schedules (P, then R with the retraining recipe) instead of once for P+R changes its loss by "
            f"{fmt_gap(cost)} nats ({called[cost.call()]}: the second schedule's cost); pruning and retraining "
            f"instead of continuing the parent changes it by: {detail or 'no pruned model finished'}."
        )
    if not sched and any(r["pruning_cost"] is not None for r in comp):
        planned = any(r["once"] is not None for r in comp)
        out.append(
            "Dense control: the parent continued on R finished but "
            + (
                "the parent trained once for P+R did not"
                if planned
                else "the study plans no parent trained once for P+R"
            )
            + ", so the second schedule's cost is not measured."
        )
    return out
