"""The paper's Figure 1 from a study's comparison records, with error bars from the seeds."""

from __future__ import annotations

import math
import os
from typing import Any

from prunejax.study.comparison import mean_of
from prunejax.study.noise import Stat


def _sd(x: Stat | None) -> float:
    return 0.0 if x is None or x.sd is None else x.sd


def plot(comp: list[dict[str, Any]], parent_loss: float | None, parent_tokens: int, out_dir: str) -> list[str]:
    """figure1_left.png: loss against retraining tokens, one panel per (method, ratio), P-R_R and S_R with the
    gap written at each budget (as in the paper's Figure 1); figure1_right.png: the equal-total comparison
    with the dense controls. Error bars: one sample standard deviation over the seeds (none for one seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    ratios = sorted({r["ratio"] for r in comp})
    methods = sorted({r["method"] for r in comp})
    ncols, nrows = max(len(ratios), 1), max(len(methods), 1)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(max(4.6 * ncols, 7.0), 2.9 * nrows), squeeze=False, layout="constrained"
    )
    for i, m in enumerate(methods):
        for j, ratio in enumerate(ratios):
            ax = axes[i][j]
            rs = sorted((r for r in comp if r["method"] == m and r["ratio"] == ratio), key=lambda r: r["budget"])
            if not rs:
                ax.set_visible(False)
                continue
            xs = [r["budget"] for r in rs]
            for key, style, label in (
                ("pruned", "o-", "P-R (pruned, retrained)"),
                ("scratch_equal_train", "s--", "S (scratch, same tokens)"),
                ("continued", "^:", "parent continued"),
            ):
                pts = [(x, r[key]) for x, r in zip(xs, rs, strict=True) if mean_of(r[key]) is not None]
                if pts:
                    ax.errorbar(
                        [x for x, _ in pts],
                        [c.mean for _, c in pts],
                        yerr=[_sd(c) for _, c in pts],
                        fmt=style,
                        capsize=3,
                        ms=4,
                        label=label,
                    )
            for x, r in zip(xs, rs, strict=True):
                g = r["gap_equal_train"]
                if g is None:
                    continue
                lo, hi = sorted((r["pruned"].mean, r["scratch_equal_train"].mean))
                ax.vlines(x, lo, hi, colors="0.4", lw=0.8)
                band = "" if g.spread is None else (" ± ?" if math.isinf(g.spread) else f" ± {g.spread:.2f}")
                last = x == xs[-1] and len(xs) > 1  # written inside the panel, left of the last budget
                ax.annotate(
                    f"{g.value:+.2f}{band}",
                    (x, (lo + hi) / 2),
                    xytext=(-4 if last else 4, 0),
                    textcoords="offset points",
                    ha="right" if last else "left",
                    va="center",
                    fontsize=7,
                )
            if parent_loss is not None:
                ax.axhline(parent_loss, color="k", lw=1, ls=":", label="parent")
            ax.set_xscale("log")
            ax.set_title(f"{m} @ {ratio:g}", fontsize=9)
            ax.tick_params(labelsize=7)
            if i == nrows - 1:
                ax.set_xlabel("retraining tokens", fontsize=8)
            if j == 0:
                ax.set_ylabel("validation loss", fontsize=8)
    axes[0][0].legend(fontsize=6)
    fig.suptitle("validation loss vs training tokens; gap = S − P-R (positive: pruned wins)", fontsize=10)
    paths.append(os.path.join(out_dir, "figure1_left.png"))
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)

    tot = [r for r in comp if mean_of(r["scratch_equal_total"]) is not None and mean_of(r["pruned"]) is not None]
    if tot:
        fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(tot)), 4.2))
        labels = [f"{r['method']}\n@{r['ratio']:g}" for r in tot]
        xs = range(len(tot))
        for dx, key, label in (
            (-0.2, "pruned", "P-R_R (pruned, retrained)"),
            (0.2, "scratch_equal_total", f"S_(P+R) (scratch, +{parent_tokens:,} parent tokens)"),
        ):
            ax.bar(
                [x + dx for x in xs],
                [r[key].mean for r in tot],
                0.4,
                yerr=[_sd(r[key]) for r in tot],
                capsize=3,
                label=label,
            )
        lows = [min(r["pruned"].mean, r["scratch_equal_total"].mean) for r in tot]
        budget = tot[0]["budget"]
        for key, color, label in (
            ("continued", "tab:green", "parent continued on R (two schedules)"),
            ("once", "tab:red", "parent once for P+R (one schedule)"),
        ):
            c = tot[0][key]
            if mean_of(c) is not None:
                ax.axhline(c.mean, color=color, lw=1.2, ls="--", label=f"{label}, R={budget:,}")
                if c.sd:
                    ax.axhspan(c.mean - c.sd, c.mean + c.sd, color=color, alpha=0.12)
                lows.append(c.mean)
        ax.set_xticks(list(xs), labels, fontsize=7)
        ax.set_ylim(min(lows) * 0.95, None)
        ax.set(title="equal total tokens: validation loss (lower is better)", ylabel="validation loss")
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(os.path.join(out_dir, "figure1_right.png"))
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths
