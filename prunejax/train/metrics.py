"""Run metrics: `metrics.jsonl` (one JSON object per logged step), the same numbers as TensorBoard scalars, MFU
against a peak."""

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
TENSORBOARD_DIR = "tensorboard"  # event files, beside metrics.jsonl


class MetricsWriter:
    """Appends one JSON line per record to RUN_DIR/metrics.jsonl and logs the record's numbers as TensorBoard
    scalars under RUN_DIR/tensorboard (process 0 only; nothing when `run_dir` is None), and hands each record
    to `echo` (e.g. a console line) when given.

    For a RUN_DIR on object storage (no appends there) the lines go to a local staging copy, which starts
    from the remote file (a resumed run) and is uploaded whole by `sync()` and `close()`.

    TensorBoard: every key of a record but `step` whose value is a finite number becomes a scalar of that
    name at that step (float32, as TensorBoard stores scalars). The events of each stretch between syncs
    (checkpoints) go to their own event file, closed at `sync()`, so a checkpointed step's events are on
    disk as its metrics.jsonl line is; on gs:// the closed file is uploaded once, beside the earlier ones,
    which are never rewritten. A resumed run drops the records past its checkpoint from metrics.jsonl
    (`truncate_after`) but cannot edit earlier event files: its first event file opens with TensorBoard's
    restart marker (SessionLog START at the next step), on which TensorBoard's event reader
    (`EventAccumulator`) drops the earlier files' events from that step on. A reader that ignores the
    marker shows both values of a step run twice; metrics.jsonl is the record."""

    def __init__(
        self, run_dir: str | None, *, tensorboard: bool = True, echo: Callable[[dict[str, Any]], None] | None = None
    ):
        self.enabled = jax.process_index() == 0
        self.remote = storage.join(run_dir, METRICS_FILE) if storage.is_remote(run_dir) else None
        self.path = os.path.join(run_dir, METRICS_FILE) if run_dir is not None else None
        if self.remote is not None:
            self.path = os.path.join(storage.staging_dir(run_dir), METRICS_FILE)
            if self.enabled:
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
                previous = storage.read_file(self.remote) if storage.exists(self.remote) else b""
                with open(self.path, "wb") as f:  # the remote file is the record; a stale staging copy is not
                    f.write(previous)
        self.echo = echo
        self.tb_dir = self.tb_remote = self.tb = self.purge_step = None
        if tensorboard and self.enabled and self.path is not None:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                raise ValueError(
                    "TensorBoard logging needs the tensorboardX package, a dependency of prunejax (reinstall it: "
                    "pip install -e .), or tensorboard=false in the train config"
                ) from None
            self._summary_writer = SummaryWriter
            self.tb_dir = os.path.join(os.path.dirname(self.path), TENSORBOARD_DIR)
            if self.remote is not None:
                self.tb_remote = storage.join(run_dir, TENSORBOARD_DIR)
                # events a killed run staged but never uploaded: the bucket is the record, as for metrics.jsonl
                shutil.rmtree(self.tb_dir, ignore_errors=True)

    def truncate_after(self, step: int) -> None:
        """Drop records past `step` (written after the checkpoint a resumed run restarts from); TensorBoard's
        reader drops them when it reaches this run's first event file (its restart marker, see the class)."""
        if not self.enabled or self.path is None:
            return
        if self.tb_dir is not None:
            self._close_event_file()  # the restart marker opens the next event file
            self.purge_step = step + 1
        if not os.path.exists(self.path):
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
        if self.tb_dir is not None:
            scalars = {
                k: v
                for k, v in clean.items()
                if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)  # None: not finite
            }
            if scalars:
                tb = self._event_file()
                for k, v in scalars.items():
                    tb.add_scalar(k, v, record["step"])

    def _event_file(self) -> Any:
        """The open TensorBoard writer, opening a new event file (the restart marker first, after a resume)."""
        if self.tb is None:
            # the name's own timestamp has one-second resolution: nanoseconds keep files of one second
            # distinct, and in the order TensorBoard reads them (sorted by name)
            suffix = f".{time.time_ns()}"
            self.tb = self._summary_writer(self.tb_dir, purge_step=self.purge_step, filename_suffix=suffix)
            self.purge_step = None
        return self.tb

    def _close_event_file(self) -> None:
        if self.tb is not None:
            self.tb.close()  # tensorboardX's flush() leaves events queued for its writer thread; close() does not
            self.tb = None

    def sync(self) -> None:
        """Close the open event file, then upload a remote RUN_DIR's staging metrics.jsonl whole and its
        new event files (each once; earlier ones stay as they are)."""
        if not self.enabled:
            return
        self._close_event_file()
        if self.remote is None:
            return
        with open(self.path, "rb") as f:
            storage.write_file(self.remote, f.read())
        if self.tb_remote is not None and os.path.isdir(self.tb_dir):
            for name in sorted(os.listdir(self.tb_dir)):
                local = os.path.join(self.tb_dir, name)
                with open(local, "rb") as f:
                    storage.write_file(storage.join(self.tb_remote, name), f.read())
                os.remove(local)  # uploaded: a later sync does not send it again

    def close(self) -> None:
        self.sync()
        if self.enabled and self.remote is not None:  # uploaded: the remote file is the record, a rerun starts from it
            shutil.rmtree(os.path.dirname(self.path), ignore_errors=True)


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
