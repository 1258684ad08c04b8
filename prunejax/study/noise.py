"""Seeds and noise bands: a grid cell over its seeds, and the differences (gaps, trends) the findings call.

A cell is the mean over its seeds with the sample standard deviation (n - 1 in the denominator) as its
spread. A difference of two independent cells has spread sqrt(sd_a^2 + sd_b^2), and a change of two gaps
the same over the two gaps' spreads. A difference counts only where it exceeds its spread; otherwise it
is within noise. With one seed per cell there is no band and the sign decides (a study that plans one
seed reads as it did before seeds existed). A band that was planned but cannot be computed (a cell left
with fewer than two of its seeds) is infinite: such a difference is never called.
"""

from __future__ import annotations

import dataclasses
import math
import statistics


@dataclasses.dataclass(frozen=True)
class Stat:
    """One cell of the grid over its seeds."""

    mean: float | None  # None: no seed finished
    sd: float | None  # sample standard deviation (n - 1); None below two seeds
    n: int  # seeds with a result
    planned: int  # seeds the study planned for the cell

    @property
    def missing(self) -> bool:
        return self.n < self.planned


def aggregate(values: list[float | None]) -> Stat:
    """A cell from its planned seeds' losses, None for a seed without a result."""
    got = [v for v in values if v is not None]
    return Stat(
        statistics.fmean(got) if got else None,
        statistics.stdev(got) if len(got) >= 2 else None,
        len(got),
        len(values),
    )


@dataclasses.dataclass(frozen=True)
class Gap:
    """A difference of two cells (or of two gaps) with its spread: None when both sides ran one seed (no
    band: the sign decides), inf when a band was planned but cannot be computed (never exceeded)."""

    value: float
    spread: float | None

    def call(self) -> int:
        """+1 above the band, -1 below it, 0 within noise."""
        band = 0.0 if self.spread is None else self.spread
        return 1 if self.value > band else (-1 if self.value < -band else 0)


def _combine(*spreads: float | None) -> float | None:
    if all(s is None for s in spreads):
        return None
    if any(s is None or math.isinf(s) for s in spreads):
        return math.inf
    return math.sqrt(sum(s * s for s in spreads))  # type: ignore[operator]


def gap(a: Stat | None, b: Stat | None) -> Gap | None:
    """a - b, or None unless both cells have a mean."""
    if a is None or b is None or a.mean is None or b.mean is None:
        return None
    if a.planned <= 1 and b.planned <= 1:
        return Gap(a.mean - b.mean, None)
    sds = [x.sd if x.sd is not None else math.inf for x in (a, b)]
    return Gap(a.mean - b.mean, _combine(*sds))


def change(first: Gap, last: Gap) -> Gap:
    """last - first: a trend of a gap, with the spread of both."""
    return Gap(last.value - first.value, _combine(first.spread, last.spread))


def fmt_value(x: float | None, signed: bool = False) -> str:
    return "—" if x is None else (f"{x:+.3f}" if signed else f"{x:.3f}")


def fmt_stat(x: Stat | None) -> str:
    """`4.461` for one planned seed; `4.461 ± 0.012` over several, with `(n=2/3)` when seeds are missing."""
    if x is None or x.mean is None:
        return "—" + (f" (n=0/{x.planned})" if x is not None and x.planned > 1 else "")
    if x.planned <= 1:
        return fmt_value(x.mean)
    text = fmt_value(x.mean) + (f" ± {x.sd:.3f}" if x.sd is not None else "")
    return text + (f" (n={x.n}/{x.planned})" if x.missing else "")


def fmt_gap(g: Gap | None, noise: bool = False) -> str:
    """`+0.123`, or `+0.123 ± 0.045` with a band (`± ?`: unknown); `noise` marks one within it."""
    if g is None:
        return "—"
    if g.spread is None:
        return fmt_value(g.value, True)
    band = "?" if math.isinf(g.spread) else f"{g.spread:.3f}"
    return f"{g.value:+.3f} ± {band}" + (" (within noise)" if noise and g.call() == 0 else "")
