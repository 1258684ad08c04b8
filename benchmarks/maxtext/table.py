#!/usr/bin/env python3
"""Print a table of the compile.py JSON results in a directory (Markdown)."""

import glob
import json
import os
import sys

ORDER = ["v5p64_pdb16", "v5p64_pdb4_ga4", "v4-256_pdb4", "v5p64_pdb4", "v5p64_pdb32_oomprobe"]


def main(d: str) -> None:
    # total = arguments + outputs + temporaries - aliased (MaxText's print_compiled_memory_stats);
    # XLA peak = CompiledMemoryStats.peak_memory_in_bytes (the compiler's own peak estimate).
    rows = []
    for p in glob.glob(os.path.join(d, "*.json")):
        with open(p) as f:
            rows.append(json.load(f))
    rows.sort(key=lambda r: (ORDER.index(r["name"]) if r["name"] in ORDER else 99, r["name"]))
    hdr = (
        "config",
        "chips",
        "pdbs x GA",
        "seqs/step",
        "args GiB",
        "out GiB",
        "temp GiB",
        "alias GiB",
        "total GiB/chip",
        "XLA peak GiB",
        "XLA compile s",
        "lower+compile s",
        "peak RSS GB",
        "status",
    )
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for r in rows:
        opts = dict(o.split("=", 1) for o in r.get("maxtext_options", []) if "=" in o)
        pdb = float(opts.get("per_device_batch_size", "nan"))
        ga = int(opts.get("gradient_accumulation_steps", "1"))
        n = r.get("num_devices")
        g = r.get("memory", {}).get("gib", {})

        def f(k, g=g):
            return f"{g[k]:.2f}" if k in g else "-"

        def s(v, fmt="{:.1f}"):
            return fmt.format(v) if isinstance(v, (int, float)) else "-"

        print(
            "| "
            + " | ".join(
                [
                    r["name"],
                    str(n or "-"),
                    f"{pdb:g} x {ga}",
                    str(int(n * pdb * ga)) if n else "-",
                    f("arguments_gib"),
                    f("outputs_gib"),
                    f("temporaries_gib"),
                    f("aliased_gib"),
                    f("total_gib"),
                    f("peak_memory_gib"),
                    s(r.get("xla_compile_s")),
                    s(r.get("lower_and_compile_s")),
                    s(r.get("peak_rss_bytes", 0) / 1e9, "{:.2f}"),
                    r.get("status", "?"),
                ]
            )
            + " |"
        )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
