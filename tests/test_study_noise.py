"""Seeds and noise bands on literal numbers: means, sample standard deviations, gaps and their calls.

[m - d, m, m + d] has mean m and sample sd d; a gap of two such cells has spread sqrt(d1^2 + d2^2).
"""

import math

import pytest

from prunejax.study import noise
from prunejax.study.noise import Gap, Stat


def test_a_cell_is_mean_and_sample_sd_over_its_seeds():
    x = noise.aggregate([4.0, 4.2, 4.4])
    assert x.mean == pytest.approx(4.2) and x.sd == pytest.approx(0.2)  # sqrt((0.04 + 0 + 0.04) / 2)
    assert (x.n, x.planned, x.missing) == (3, 3, False)
    y = noise.aggregate([4.0, None, 4.4])  # a seed without a result: n says so
    assert y.mean == pytest.approx(4.2) and y.sd == pytest.approx(math.sqrt(0.08))  # n - 1 = 1
    assert (y.n, y.planned, y.missing) == (2, 3, True)
    assert noise.aggregate([5.0]) == Stat(5.0, None, 1, 1)
    assert noise.aggregate([None, None]) == Stat(None, None, 0, 2)


def test_gaps_carry_the_spread_of_both_cells():
    g = noise.gap(Stat(5.0, 0.3, 3, 3), Stat(4.0, 0.4, 3, 3))
    assert g.value == pytest.approx(1.0) and g.spread == pytest.approx(0.5) and g.call() == 1
    assert noise.gap(Stat(4.0, 0.3, 3, 3), Stat(4.4, 0.4, 3, 3)).call() == 0  # |-0.4| < 0.5
    assert noise.gap(Stat(4.0, 0.3, 3, 3), Stat(4.6, 0.4, 3, 3)).call() == -1
    one = noise.gap(Stat(4.1, None, 1, 1), Stat(4.0, None, 1, 1))  # one seed: no band, the sign decides
    assert one.spread is None and one.call() == 1
    assert noise.gap(Stat(4.0, None, 1, 1), Stat(4.0, None, 1, 1)).call() == 0
    short = noise.gap(Stat(9.0, None, 1, 3), Stat(4.0, 0.1, 3, 3))  # a band was planned but has one seed
    assert math.isinf(short.spread) and short.call() == 0
    assert noise.gap(None, Stat(4.0, 0.1, 3, 3)) is None
    assert noise.gap(Stat(None, None, 0, 3), Stat(4.0, 0.1, 3, 3)) is None
    d = noise.change(Gap(1.0, 0.3), Gap(0.6, 0.4))
    assert d.value == pytest.approx(-0.4) and d.spread == pytest.approx(0.5) and d.call() == 0
    assert noise.change(Gap(1.0, 0.3), Gap(0.2, 0.4)).call() == -1
    assert noise.change(Gap(1.0, None), Gap(0.2, None)).spread is None


def test_cells_and_gaps_are_written_with_their_band_and_n():
    assert noise.fmt_stat(Stat(4.2, None, 1, 1)) == "4.200"  # one planned seed: as before seeds existed
    assert noise.fmt_stat(Stat(4.2, 0.2, 3, 3)) == "4.200 ± 0.200"
    assert noise.fmt_stat(Stat(4.2, 0.2831, 2, 3)) == "4.200 ± 0.283 (n=2/3)"
    assert noise.fmt_stat(Stat(None, None, 0, 3)) == "— (n=0/3)"
    assert noise.fmt_stat(None) == "—"
    assert noise.fmt_gap(Gap(0.1, None)) == "+0.100"
    assert noise.fmt_gap(Gap(-0.2, 0.3), noise=True) == "-0.200 ± 0.300 (within noise)"
    assert noise.fmt_gap(Gap(0.5, 0.3), noise=True) == "+0.500 ± 0.300"
    assert noise.fmt_gap(Gap(0.5, math.inf), noise=True) == "+0.500 ± ? (within noise)"
