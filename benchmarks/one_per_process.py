"""Run each named benchmark case in its own subprocess, so its wall time and peak RSS are its own.

Standard library only: `prune_llmcompressor.py` imports it from a venv that has no JAX/prunejax.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable


def file_name(run: str) -> str:
    """A run's name as a file or directory name ('wanda 2:4' -> 'wanda_2-4')."""
    return run.replace(" ", "_").replace(":", "-")


def run_each(script: str, runs: Iterable[str], out_json: str, first_column: str) -> None:
    """`python SCRIPT <this process's args> --one RUN` for every run; each JSON row is appended to
    `out_json` and printed as a markdown table row (name, `first_column`, both perplexities, time, RSS)."""
    import subprocess

    for name in runs:
        out = subprocess.run([sys.executable, script, *sys.argv[1:], "--one", name], capture_output=True, text=True)
        if out.returncode:
            print(f"{name}: failed\n{out.stderr[-3000:]}", file=sys.stderr)
            continue
        row = json.loads(out.stdout.strip().splitlines()[-1])
        with open(out_json, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(
            f"| {row['name']} | {row[first_column]:.3f} | {row['calib_domain']:.2f} | {row['other_domain']:.2f} "
            f"| {row['seconds']:.0f} | {row['peak_rss_mib']:.0f} |",
            flush=True,
        )
