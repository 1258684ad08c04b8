"""The measuring protocol every side-by-side benchmark here follows (issue 15): both sides in one
script, their runs interleaved, at least 5 repeats, median with min-max, the load average printed.

Standard library only, like one_per_process.py.
"""

from __future__ import annotations

import os
import statistics
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
