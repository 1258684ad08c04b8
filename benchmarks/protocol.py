"""The measuring protocol every side-by-side benchmark here follows (issue 15): both sides in one
script, their runs interleaved, at least 5 repeats, median with min-max, the load average printed.

Standard library only, like one_per_process.py.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min) / {five:.2f} (5 min) on {os.cpu_count()} cores"


def interleaved(sides: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds of `repeats` calls of each side, alternating sides (and which side goes first)."""
    times: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            t = time.perf_counter()
            sides[name]()
            times[name].append(time.perf_counter() - t)
    return times


def spread(seconds: list[float], scale: float = 1.0, unit: str = "s") -> str:
    """'median (min-max) unit' of `seconds` x `scale`."""
    values = [s * scale for s in seconds]
    return f"{statistics.median(values):.4g} {unit} ({min(values):.4g}-{max(values):.4g})"


def in_processes(script: str, flags: list[str], sides: list[str], rounds: int) -> dict[str, list[float]]:
    """`rounds` rounds of one fresh process per side (`script *flags --one SIDE`, which prints its
    times as a JSON list on its last line), alternating which side goes first; each side's times
    from all rounds."""
    times: dict[str, list[float]] = {side: [] for side in sides}
    for r in range(rounds):
        for side in sides if r % 2 == 0 else sides[::-1]:
            out = subprocess.run([sys.executable, script, *flags, "--one", side], capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(f"the {side} process failed:\n{out.stderr[-3000:]}")
            times[side] += json.loads(out.stdout.strip().splitlines()[-1])
    return times
