"""Print the side-by-side table of prunejax's and MaxText's ahead-of-time compiles (Markdown).

Reads benchmarks/accelerator/results/<config>.json (prunejax compile-check --json) and
benchmarks/maxtext/results/<config>.json with MaxText's optimized HLO in results/hlo/, and counts
MaxText's HLO with the same loop-aware counter and the same splash-kernel FLOPs as prunejax's
(`prunejax.hlo_cost`, `prunejax.kernels.splash.kernel_flops`), so both columns are one method.
"""

from __future__ import annotations

import json
import os
import statistics
import sys

from prunejax import hlo_cost
from prunejax.compile_check import model_flops_per_step
from prunejax.config import PRESETS
from prunejax.kernels import splash

HERE = os.path.dirname(os.path.abspath(__file__))
MAXTEXT = os.path.join(HERE, "..", "maxtext", "results")
GiB = 2**30
# config -> (chip generation, chips, sequences per step, sequences per chip per micro-batch)
CONFIGS = {
    "v5p64_pdb16": ("v5p", 32, 512, 16),
    "v5p64_pdb4_ga4": ("v5p", 32, 512, 4),
    "v4-256_pdb4": ("v4", 128, 512, 4),
    "v5p64_pdb4": ("v5p", 32, 128, 4),
}


def maxtext_row(name: str) -> dict | None:
    path = os.path.join(MAXTEXT, f"{name}.json")
    hlo = os.path.join(MAXTEXT, "hlo", f"{name}.hlo.txt")
    if not (os.path.exists(path) and os.path.exists(hlo)):
        return None
    with open(path) as f:
        record = json.load(f)
    chip, chips, seqs, per_chip = CONFIGS[name]
    cfg = PRESETS["llama-3.1-8b"]
    with open(hlo) as f:
        cost = hlo_cost.analyze(f.read(), hlo_cost.PEAKS[chip], splash.kernel_flops(per_chip, 32, 8192, 128))
    mem = record["memory"]["bytes"]
    return {
        "peak": mem["peak_memory_in_bytes"],
        "sum": mem["argument_size_in_bytes"]
        + mem["output_size_in_bytes"]
        + mem["temp_size_in_bytes"]
        - mem["alias_size_in_bytes"],
        "flops": cost.flops,
        "model_flops": model_flops_per_step(cfg, seqs * 8192, 8192) / chips,
        "bytes": cost.bytes,
        "roofline": cost.roofline_s,
        "kernels": {k: v for k, v in cost.kernels.items() if k.startswith("splash")},
        "compile": record.get("xla_compile_s", 0.0),
        "rss": record.get("peak_rss_bytes", 0),
    }


def prunejax_row(name: str) -> dict | None:
    path = os.path.join(HERE, "results", f"{name}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        fit = json.load(f)["programs"][0]
    return {
        "peak": fit["per_chip_bytes"],
        "sum": sum(fit["breakdown"].values()),
        "flops": fit["flops"],
        "model_flops": fit["model_flops"],
        "bytes": fit["hbm_traffic"],
        "roofline": fit["roofline_s"],
        "kernels": {k: v for k, v in fit["kernels"].items() if k.startswith("splash")},
        "compile": fit["compile_s"],
        "rss": fit["host_rss_bytes"],
    }


def cells(row: dict | None) -> list[str]:
    if row is None:
        return ["-"] * 7
    kernels = ", ".join(f"{k.replace('splash_mha_', '')} x{n}" for k, n in sorted(row["kernels"].items()))
    return [
        f"{row['peak'] / GiB:.2f} ({row['sum'] / GiB:.2f})",
        f"{row['flops'] / row['model_flops']:.2f}x",
        f"{row['bytes']:.2e}",
        f"{row['roofline']:.1f}",
        kernels or "none",
        f"{row['compile']:.0f}",
        f"{row['rss'] / 1e9:.1f}",
    ]


TIMINGS = os.path.join(HERE, "results", "timings.jsonl")


def timing(side: str, name: str) -> dict:
    """One compile's time and host RAM, as its side's JSON has them."""
    if side == "MaxText":
        with open(os.path.join(MAXTEXT, f"{name}.json")) as f:
            record = json.load(f)
        return {"compile": record.get("xla_compile_s", 0.0), "rss": record.get("peak_rss_bytes", 0)}
    with open(os.path.join(HERE, "results", f"{name}.json")) as f:
        fit = json.load(f)["programs"][0]
    return {"compile": fit["compile_s"], "rss": fit["host_rss_bytes"]}


def record(side: str, name: str) -> None:
    """Append the compile just made to results/timings.jsonl (run.sh empties it at its start)."""
    with open(TIMINGS, "a") as f:
        f.write(json.dumps({"config": name, "side": side, **timing(side, name)}) + "\n")


def with_medians(row: dict | None, side: str, name: str) -> tuple[dict | None, int]:
    """`row` with the medians of results/timings.jsonl's compiles of (side, name) when it has some."""
    if row is None or not os.path.exists(TIMINGS):
        return row, 1
    with open(TIMINGS) as f:
        runs = [r for r in map(json.loads, f) if r["config"] == name and r["side"] == side]
    if not runs:
        return row, 1
    return {**row, **{k: statistics.median(r[k] for r in runs) for k in ("compile", "rss")}}, len(runs)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--record"]:
        record(*argv[1:3])
        return 0
    head = ["config", "side", "peak GiB/chip (alloc sum)", "executed/model FLOPs", "HBM bytes", "roofline s"]
    head += ["attention kernels", "XLA compile s", "host RAM GB"]
    lines, counts = [], set()
    for name in CONFIGS:
        for side, row in (("MaxText", maxtext_row(name)), ("prunejax", prunejax_row(name))):
            row, n = with_medians(row, side, name)
            counts.add(n)
            lines.append("| " + " | ".join([name, side, *cells(row)]) + " |")
    if counts != {1}:
        print(f"compile s and host RAM: medians of {'/'.join(map(str, sorted(counts)))} compiles per side")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
