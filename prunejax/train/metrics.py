"""Run metrics: `metrics.jsonl` (one JSON object per logged step), optional TensorBoard, MFU against a peak."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from prunejax import storage

METRICS_FILE = "metrics.jsonl"


class MetricsWriter:
    """Appends one JSON line per record to RUN_DIR/metrics.jsonl (process 0 only; no file when `run_dir` is
    None), optionally to TensorBoard, and hands each record to `echo` (e.g. a console line) when given.

    For a RUN_DIR on object storage (no appends there) the lines go to a local staging copy, which starts
    from the remote file (a resumed run) and is uploaded whole by `sync()` and `close()`."""

    def __init__(
        self, run_dir: str | None, *, tensorboard: bool = False, echo: Callable[[dict[str, Any]], None] | None = None
    ):
        self.enabled = jax.process_index() == 0
        self.remote = storage.join(run_dir, METRICS_FILE) if storage.is_remote(run_dir) else None
        self.path = os.path.join(run_dir, METRICS_FILE) if run_dir is not None else None
        if self.remote is not None:
            if tensorboard:
                raise ValueError(f"tensorboard=true needs a local RUN_DIR, not {run_dir}")
            self.path = os.path.join(storage.staging_dir(run_dir), METRICS_FILE)
            if self.enabled:
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
                previous = storage.read_file(self.remote) if storage.exists(self.remote) else b""
                with open(self.path, "wb") as f:  # the remote file is the record; a stale staging copy is not
                    f.write(previous)
        self.echo = echo
        self.tb = None
        if tensorboard and self.enabled and run_dir is not None:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                raise ValueError("tensorboard=true needs the tensorboardX package (pip install tensorboardX)") from None
            self.tb = SummaryWriter(os.path.join(run_dir, "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """Drop records past `step` (written after the checkpoint a resumed run restarts from)."""
        if not self.enabled or self.path is None or not os.path.exists(self.path):
            return
        with open(self.path) as f:
            keep = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= step]
        with open(self.path, "w") as f:
            f.writelines(keep)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self.echo is not None:
            self.echo(record)
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(clean) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, int | float) and k != "step" and v is not None:
                    self.tb.add_scalar(k, v, record["step"])

    def sync(self) -> None:
        """Upload the staging copy of a remote metrics.jsonl (nothing to do for a local RUN_DIR)."""
        if self.enabled and self.remote is not None:
            with open(self.path, "rb") as f:
                storage.write_file(self.remote, f.read())

    def close(self) -> None:
        self.sync()
        if self.enabled and self.remote is not None:  # uploaded: the remote file is the record, a rerun starts from it
            shutil.rmtree(os.path.dirname(self.path), ignore_errors=True)
        if self.tb is not None:
            self.tb.close()


def read_metrics(run_dir: str) -> list[dict[str, Any]]:
    """All records of a run's metrics.jsonl (local or gs://)."""
    text = storage.read_file(storage.join(run_dir, METRICS_FILE)).decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def measure_matmul_peak(n: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of a float32 [n,n]x[n,n] matmul on the default device (best of `repeats`)."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def peak_flops(peak_tflops_per_device: float | None) -> float | None:
    """Total peak FLOP/s of all devices: the configured figure, or measured on CPU, else unknown (None)."""
    n = jax.device_count()
    if peak_tflops_per_device:
        return peak_tflops_per_device * 1e12 * n
    if jax.default_backend() == "cpu":
        return measure_matmul_peak()  # fake CPU devices share the same cores: one measurement is the total
    return None
