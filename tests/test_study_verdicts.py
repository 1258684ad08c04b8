"""The study's verdicts on hand-made result rows (no study is run): each finding reproduced, partly
reproduced, not reproduced and within noise; missing seeds; the dense controls' split.

Seed values are chosen so that means and sample standard deviations are exact by hand: [m - d, m, m + d]
has mean m and sd d; a gap of two such cells has spread sqrt(d1^2 + d2^2).
"""

import math

import pytest

from prunejax.study import comparison, noise, report, verdicts
from prunejax.study.noise import Stat

GRAN = {"wanda": "unstructured", "sheared": "mixed", "minitron-depth": "depth", "sparsegpt-2of4": "semi-structured"}


def spread3(mean: float, d: float) -> list[float]:
    return [mean - d, mean, mean + d]


def row(role, method, loss, *, ratio=0.5, budget=2000, seed=0, setting="", shape="") -> dict:
    """One evaluated model as load_results writes it."""
    return {
        "model": f"{role}/{method}/r{ratio:g}/s{seed}/{setting}/R{budget}",
        "role": role,
        "method": method,
        "granularity": GRAN.get(method, ""),
        "ratio": ratio,
        "seed": seed,
        "setting": setting,
        "shape": shape,
        "budget": budget,
        "tokens": budget,
        "val_loss": loss,
        "val_ppl": None if loss is None else math.exp(loss),
        "parameters": None,
    }


def cell(method, pruned, scratch, *, ratio=0.5, budget=2000, total=None) -> list[dict]:
    """Rows of one (method, ratio, budget): P-R_R and S_R per seed, and S_(P+R) when `total` is given."""
    rows = [row("retrained", method, x, ratio=ratio, budget=budget, seed=s) for s, x in enumerate(pruned)]
    rows += [
        row("scratch", method, x, ratio=ratio, budget=budget, seed=s, setting="equal_train", shape="same")
        for s, x in enumerate(scratch)
    ]
    if total is not None:
        rows += [
            row("scratch", method, x, ratio=ratio, budget=budget, seed=s, setting="equal_total", shape="same")
            for s, x in enumerate(total)
        ]
    return rows


def judge(rows: list[dict]) -> list[str]:
    return verdicts.findings(comparison.comparison(rows))


def verdict_of(lines: list[str], number: int) -> str:
    line = next(x for x in lines if x.startswith(f"{number}."))
    return line.split("**")[1]


def test_comparison_aggregates_literal_rows():
    rows = cell("wanda", [4.0, 4.2, 4.4], [5.0, 5.3, 5.6], total=[3.9, 4.0, 4.1])
    (r,) = comparison.comparison(rows)
    assert r["pruned"].mean == pytest.approx(4.2) and r["pruned"].sd == pytest.approx(0.2)
    assert r["scratch_equal_train"].mean == pytest.approx(5.3) and r["scratch_equal_train"].sd == pytest.approx(0.3)
    assert r["gap_equal_train"].value == pytest.approx(1.1)
    assert r["gap_equal_train"].spread == pytest.approx(math.sqrt(0.04 + 0.09))
    assert r["gap_equal_total"].value == pytest.approx(-0.2)
    assert r["gap_equal_total"].spread == pytest.approx(math.sqrt(0.04 + 0.01))
    assert r["continued"] is None and r["schedule_cost"] is None  # no controls planned
    assert noise.fmt_stat(r["pruned"]) == "4.200 ± 0.200"
    assert noise.fmt_gap(r["gap_equal_total"], noise=True) == "-0.200 ± 0.224 (within noise)"
    csv = report.csv_rows(comparison.comparison(rows))[0]
    assert csv["pruned_n"] == "3/3" and csv["gap_equal_train_spread"] == pytest.approx(math.sqrt(0.13))
    assert "continued" not in csv


def test_a_missing_seed_is_shown_not_averaged_away():
    rows = cell("wanda", [4.0, None, 4.4], [5.0, 5.1, 5.2])
    (r,) = comparison.comparison(rows)
    assert r["pruned"] == Stat(pytest.approx(4.2), pytest.approx(math.sqrt(0.08)), 2, 3)
    assert noise.fmt_stat(r["pruned"]) == "4.200 ± 0.283 (n=2/3)"
    lines = verdicts.findings(comparison.comparison(rows))
    assert lines[-1].startswith("Missing results: 1 cell(s) have fewer seeds than planned")
    assert "pruned of wanda@0.5/R=2,000: n=2/3" in lines[-1]
    # one seed left of three: no band can be computed, so even a large gap is not called
    lone = cell("wanda", [4.0, None, None], [5.0, 5.1, 5.2])
    assert verdict_of(judge(lone), 1) == "within noise"
    assert noise.fmt_stat(comparison.comparison(lone)[0]["pruned"]) == "4.000 (n=1/3)"


# ---- finding 1: equal training tokens ---------------------------------------------------------
def test_finding_1_verdicts():
    win = cell("wanda", spread3(4.0, 0.1), spread3(5.0, 0.1))  # +1.0 ± 0.141
    win2 = cell("minitron-depth", spread3(4.2, 0.1), spread3(4.9, 0.1))  # +0.7 ± 0.141
    noise = cell("sheared", spread3(4.0, 0.1), spread3(4.1, 0.3), ratio=0.8)  # +0.1 ± 0.316
    loss = cell("sparsegpt-2of4", spread3(4.6, 0.1), spread3(4.0, 0.1))  # -0.6 ± 0.141
    lines = judge(win + win2)
    assert lines[0] == (
        "1. Equal training tokens, pruned init beats random init: **reproduced** — pruned wins beyond the noise "
        "band in 2/2 (method, ratio, budget) cells; mean gap +0.850 nats."
    )
    lines = judge(win + noise)
    assert verdict_of(lines, 1) == "partly reproduced"
    assert "pruned wins beyond the noise band in 1/2" in lines[0] and "within noise at sheared@0.8/R=2,000" in lines[0]
    lines = judge(noise + loss)
    assert verdict_of(lines, 1) == "not reproduced"
    assert "scratch wins beyond the noise band at sparsegpt-2of4@0.5/R=2,000" in lines[0]
    assert verdict_of(judge(noise), 1) == "within noise"


def test_one_seed_is_called_by_sign_and_keeps_the_single_seed_wording():
    # the noisy cell's means with one seed each: +0.1 is a win by sign (no band to exceed)
    lines = judge(cell("sheared", [4.0], [4.1], ratio=0.8) + cell("wanda", [4.3], [4.1]))
    assert lines[0] == (
        "1. Equal training tokens, pruned init beats random init: **partly reproduced** — pruned wins 1/2 "
        "(method, ratio, budget) cells; mean gap -0.050 nats; scratch wins or ties at wanda@0.5/R=2,000."
    )
    assert verdict_of(judge(cell("sheared", [4.0], [4.1])), 1) == "reproduced"
    assert not any(x.startswith("Missing results") for x in lines)


def test_findings_not_measured_without_pairs():
    lines = judge([row("retrained", "wanda", 4.0)])
    assert lines[0].startswith("1. Equal training tokens: **not measured**")
    assert lines[1].startswith("2. Budget trend: **not measured**")
    assert lines[2].startswith("3. Ratio trend: **not measured**")
    assert lines[3] == "4. Equal total tokens: **not measured** (the study plans no S_(P+R) run)."
    unfinished = cell("wanda", [4.0], [5.0], total=[None])  # planned, and its only seed failed
    assert judge(unfinished)[3] == "4. Equal total tokens: **not measured** (no S_(P+R) run finished)."


# ---- findings 2 and 3: the advantage narrows with budget and with ratio -------------------------
def budgets(method: str, small: float, large: float, ratio: float = 0.5) -> list[dict]:
    """Gap `small` at R=2k and `large` at R=4k, each ± 0.141 (pruned sd 0.1, scratch sd 0.1)."""
    return cell(method, spread3(4.0, 0.1), spread3(4.0 + small, 0.1), ratio=ratio, budget=2000) + cell(
        method, spread3(3.8, 0.1), spread3(3.8 + large, 0.1), ratio=ratio, budget=4000
    )


def test_finding_2_verdicts():
    narrows = budgets("wanda", 1.0, 0.5)  # change -0.5 ± 0.2
    noise = budgets("minitron-depth", 1.0, 0.9)  # change -0.1 ± 0.2
    widens = budgets("sheared", 0.5, 1.0)  # change +0.5 ± 0.2
    lines = judge(narrows)
    assert verdict_of(lines, 2) == "reproduced"
    assert "1/1 (method, ratio) pairs narrow beyond the noise band" in lines[1]
    assert "wanda@0.5: +1.000 ± 0.141 → +0.500 ± 0.141 (change -0.500 ± 0.200: narrows)" in lines[1]
    assert verdict_of(judge(narrows + noise), 2) == "partly reproduced"
    assert verdict_of(judge(noise + widens), 2) == "not reproduced"
    assert "sheared@0.5: +0.500 ± 0.141 → +1.000 ± 0.141 (change +0.500 ± 0.200: widens)" in judge(widens)[1]
    assert verdict_of(judge(noise), 2) == "within noise"
    # the same means with one seed: narrowing by 0.1 is called narrowing
    one = cell("minitron-depth", [4.0], [5.0], budget=2000) + cell("minitron-depth", [3.8], [4.7], budget=4000)
    lines = judge(one)
    assert verdict_of(lines, 2) == "reproduced"
    assert "1/1 (method, ratio) pairs narrow from the smallest to the largest budget (minitron-depth@0.5: " in lines[1]


def ratios(method: str, low: float, high: float, budget: int = 2000) -> list[dict]:
    """Gap `low` at ratio 0.5 and `high` at ratio 0.8, each ± 0.141."""
    return cell(method, spread3(4.0, 0.1), spread3(4.0 + low, 0.1), ratio=0.5, budget=budget) + cell(
        method, spread3(4.3, 0.1), spread3(4.3 + high, 0.1), ratio=0.8, budget=budget
    )


def test_finding_3_verdicts():
    narrows = ratios("wanda", 1.0, 0.3)  # change -0.7 ± 0.2
    noise = ratios("sheared", 0.8, 0.9)  # change +0.1 ± 0.2
    widens = ratios("minitron-depth", 0.3, 0.9)  # change +0.6 ± 0.2
    lines = judge(narrows)
    assert verdict_of(lines, 3) == "reproduced"
    assert "1/1 (method, budget) pairs have a smaller gap at the highest ratio beyond the noise band" in lines[2]
    assert "wanda/R=2,000: +1.000 ± 0.141@0.5 → +0.300 ± 0.141@0.8 (change -0.700 ± 0.200: narrows)" in lines[2]
    assert verdict_of(judge(narrows + noise), 3) == "partly reproduced"
    assert verdict_of(judge(noise + widens), 3) == "not reproduced"
    assert verdict_of(judge(noise), 3) == "within noise"
    assert verdict_of(judge(narrows + ratios("wanda", 1.0, 0.9, budget=4000)), 3) == "partly reproduced"


# ---- finding 4: equal total tokens --------------------------------------------------------------
def total(method: str, g: float, d: float = 0.1) -> list[dict]:
    """S_(P+R) − P-R_R = g ± sqrt(0.01 + d^2) (S_R is far behind: finding 1 holds throughout)."""
    return cell(method, spread3(4.0, 0.1), spread3(6.0, 0.1), total=spread3(4.0 + g, d))


def test_finding_4_verdicts():
    fine_ahead = total("wanda", 0.5)  # +0.5 ± 0.141
    fine_noise = total("sheared", 0.1, 0.3)  # +0.1 ± 0.316
    fine_behind = total("sheared", -0.5)
    coarse_beaten = total("minitron-depth", -0.4)
    coarse_matched = total("sparsegpt-2of4", 0.2, 0.3)  # +0.2 ± 0.316: within noise counts as matched
    coarse_ahead = total("minitron-depth", 0.6)  # pruned clearly ahead: not matched
    lines = judge(fine_ahead + coarse_beaten + coarse_matched)
    assert verdict_of(lines, 4) == "reproduced"
    assert "fine methods ahead beyond the noise band in 1/1, coarse methods matched or beaten in 2/2" in lines[3]
    assert "sparsegpt-2of4@0.5 (semi-structured): +0.200 ± 0.316 (within noise)" in lines[3]
    assert "wanda@0.5 (unstructured): +0.500 ± 0.141)." in lines[3]  # ahead: no mark
    assert verdict_of(judge(fine_ahead + coarse_ahead), 4) == "partly reproduced"
    assert verdict_of(judge(fine_ahead + fine_behind + coarse_beaten), 4) == "partly reproduced"
    assert verdict_of(judge(fine_behind + coarse_beaten), 4) == "not reproduced"
    assert verdict_of(judge(fine_noise + coarse_beaten), 4) == "within noise"
    assert verdict_of(judge(coarse_beaten), 4) == "not measured (no fine-grained method)"
    # one seed: +0.1 is ahead by sign
    one = cell("sheared", [4.0], [6.0], total=[4.1]) + cell("minitron-depth", [4.0], [6.0], total=[3.6])
    lines = judge(one)
    assert verdict_of(lines, 4) == "reproduced"
    assert "(gap S_(P+R) − P-R_R: minitron-depth@0.5 (depth): -0.400; sheared@0.5 (mixed): +0.100)." in lines[3]


# ---- dense controls -----------------------------------------------------------------------------
def control(setting: str, losses: list[float], budget: int = 2000) -> list[dict]:
    return [
        row("control", "parent", x, ratio=0.0, budget=budget, seed=s, setting=setting) for s, x in enumerate(losses)
    ]


def test_controls_split_the_second_schedule_from_pruning():
    rows = (
        cell("wanda", spread3(4.5, 0.1), spread3(6.0, 0.1), total=spread3(4.4, 0.1))
        + cell("minitron-depth", spread3(4.25, 0.1), spread3(6.0, 0.1), total=spread3(4.4, 0.1))
        + control("continue", spread3(4.2, 0.1))
        + control("once", spread3(4.0, 0.1))
    )
    comp = comparison.comparison(rows)
    by = {r["method"]: r for r in comp}
    assert by["wanda"]["schedule_cost"].value == pytest.approx(0.2)  # continued 4.2 − once 4.0
    assert by["wanda"]["schedule_cost"].spread == pytest.approx(math.sqrt(0.02))
    assert by["wanda"]["pruning_cost"].value == pytest.approx(0.3)  # P-R_R 4.5 − continued 4.2
    assert by["minitron-depth"]["pruning_cost"].value == pytest.approx(0.05)
    lines = verdicts.findings(comp)
    ctl = next(x for x in lines if x.startswith("Dense control at R=2,000"))
    assert "changes its loss by +0.200 ± 0.141 nats (costs: the second schedule's cost)" in ctl
    assert "wanda@0.5: +0.300 ± 0.141 (costs)" in ctl and "minitron-depth@0.5: +0.050 ± 0.141 (within noise)" in ctl
    row0 = report.csv_rows(comp)[0]
    assert row0["once"] == pytest.approx(4.0) and row0["schedule_cost_spread"] == pytest.approx(math.sqrt(0.02))
    # the continued parent alone: the schedule's cost is said to be unmeasured, never guessed
    lines = verdicts.findings(comparison.comparison(rows[:-3]))
    assert lines[-1] == (
        "Dense control: the parent continued on R finished but the study plans no parent trained once for P+R, "
        "so the second schedule's cost is not measured."
    )
    failed = [row("control", "parent", None, ratio=0.0, seed=s, setting="once") for s in range(3)]
    lines = verdicts.findings(comparison.comparison(rows[:-3] + failed))
    assert "but the parent trained once for P+R did not, so the second schedule's cost is not measured" in "".join(
        lines
    )
    # a missing control seed is listed once, not once per method row
    short = verdicts.findings(
        comparison.comparison(rows[:-1] + [row("control", "parent", None, ratio=0.0, seed=2, setting="once")])
    )
    assert short[-1].count("once at R=2,000: n=2/3") == 1


def test_owl_against_wanda_says_whether_the_allocation_changes_the_verdict():
    # ratio 0.8, two budgets. Wanda: scratch 4.0 vs pruned 3.9 (+0.1, within its band 0.1*sqrt2) at R=2000,
    # +0.5 at R=4000. OWL: +0.6 at R=2000 (pruned wins beyond its band), +0.5 at R=4000 (same as Wanda).
    rows = cell("wanda", spread3(3.9, 0.1), spread3(4.0, 0.1), ratio=0.8)
    rows += cell("wanda", spread3(3.5, 0.1), spread3(4.0, 0.1), ratio=0.8, budget=4000)
    rows += cell("owl", spread3(3.4, 0.1), spread3(4.0, 0.1), ratio=0.8)
    rows += cell("owl", spread3(3.5, 0.1), spread3(4.0, 0.1), ratio=0.8, budget=4000)
    lines = [line for line in judge(rows) if line.startswith("OWL against Wanda")]
    assert len(lines) == 1
    line = lines[0]
    assert "at ratio 0.8" in line and "**changes the verdict** in 1/2 budgets" in line
    assert "R=2,000: owl +0.600 ± 0.141 (pruned wins) vs wanda +0.100 ± 0.141 (within noise)" in line
    assert "difference +0.500 ± 0.200 (widens)" in line
    assert "R=4,000: owl +0.500 ± 0.141 (pruned wins) vs wanda +0.500 ± 0.141 (pruned wins)" in line
    assert "difference +0.000 ± 0.200 (within noise)" in line
    assert not [line for line in judge(rows[: len(rows) // 2]) if line.startswith("OWL")]  # no OWL rows: no line
