"""The host loop, generic over the step: dispatch step t, then read step t-1's metrics; checkpoints, eval, SIGTERM.

Reading metrics one step late keeps the device busy while the host logs. Before any checkpoint the
loop waits for that step's metrics, so a saved state always follows a finite loss: a NaN/Inf loss
or gradient norm stops the run with its step number and the last good checkpoint stays the latest (the
message names it, or says that none was saved).
The loss is computed before the step's update, so the checkpointer also checks the updated state
itself (an overflowing update leaves finite metrics and Inf weights).
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax

from prunejax.train.metrics import MetricsWriter

State = dict[str, Any]


class TrainingDiverged(ValueError):
    """The loss or gradient norm became NaN/Inf."""


class Stopped(Exception):
    """A run that SIGTERM/SIGINT stopped at a checkpoint, raised by a caller that owes a finished result (a
    trained pruning method); the same call on the same RUN_DIR resumes it."""

    def __init__(self, run_dir: str, signum: int):
        super().__init__(f"stopped by signal {signum} at a checkpoint in {run_dir}; run it again to resume")
        self.run_dir, self.signum = run_dir, signum


class StopFlag:
    """Set by SIGTERM/SIGINT (preemption): the loop saves a checkpoint and returns at the next step."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay with their owner
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __bool__(self) -> bool:
        return self.signum is not None


@dataclasses.dataclass
class LoopConfig:
    """What the loop needs to know besides the step itself."""

    start_step: int
    total_steps: int
    tokens_per_step: int
    flops_per_step: float = 0.0
    peak_flops: float | None = None
    log_every: int = 1
    ckpt_every: int = 0
    eval_every: int = 0
    stop_after: int | None = None  # return (as if preempted) once this step is done: tests, time-boxed jobs
    progress: bool = True


def run_loop(
    step_fn: Callable[[State, Any], tuple[State, dict[str, jax.Array]]],
    state: State,
    batches: Iterator[Any],
    lc: LoopConfig,
    writer: MetricsWriter,
    *,
    save: Callable[[int, State], None] | None = None,
    evaluate: Callable[[State], dict[str, float]] | None = None,
    on_step: Callable[[int], None] | None = None,
    stop: StopFlag | None = None,
) -> tuple[State, str]:
    """Run steps start_step+1 .. total_steps; returns (state, 'done' | 'stopped')."""
    from tqdm import tqdm

    stop = stop if stop is not None else StopFlag()
    bar = tqdm(total=lc.total_steps, initial=lc.start_step, unit="step", disable=not lc.progress, dynamic_ncols=True)
    pending: tuple[int, dict[str, jax.Array], float] | None = None
    last_time = time.perf_counter()
    # what a divergence may name as kept: a resumed run started from a checkpoint at start_step
    last_saved = lc.start_step if save is not None else 0

    def drain() -> None:
        """Wait for the pending step's metrics, check them, log them."""
        nonlocal pending, last_time
        if pending is None:
            return
        step, metrics, _ = pending
        pending = None
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not (math.isfinite(values["loss"]) and math.isfinite(values["grad_norm"])):
            kept = f"the last good checkpoint is step {last_saved}" if last_saved else "no checkpoint was saved"
            raise TrainingDiverged(
                f"loss {values['loss']} / grad norm {values['grad_norm']} at step {step}: training diverged; "
                f"{kept} (lower peak_lr or check the data)"
            )
        now = time.perf_counter()
        dt, last_time = now - last_time, now
        if step % lc.log_every == 0 or step == lc.total_steps:
            tps = lc.tokens_per_step / dt if dt > 0 else None
            mfu = lc.flops_per_step / dt / lc.peak_flops if lc.peak_flops and dt > 0 else None
            writer.write({"step": step, "tokens": step * lc.tokens_per_step, **values, "tokens_per_s": tps, "mfu": mfu})
        bar.set_postfix(loss=f"{values['loss']:.4f}", refresh=False)
        bar.update(1)

    status = "done"
    try:
        for step in range(lc.start_step + 1, lc.total_steps + 1):
            batch = next(batches)
            state, metrics = step_fn(state, batch)
            drain()  # step-1's metrics, while step runs
            pending = (step, metrics, time.perf_counter())
            if on_step is not None:
                on_step(step)
            stopping = bool(stop) or (lc.stop_after is not None and step >= lc.stop_after)
            if save is not None and (stopping or (lc.ckpt_every and step % lc.ckpt_every == 0)):
                drain()
                save(step, state)
                last_saved = step
            if evaluate is not None and lc.eval_every and step % lc.eval_every == 0 and step < lc.total_steps:
                drain()
                writer.write({"step": step, "tokens": step * lc.tokens_per_step, **evaluate(state)})
            if stopping:
                status = "stopped"
                break
        drain()
    finally:
        bar.close()
    return state, status
