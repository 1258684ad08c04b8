"""Orbax checkpoints of a run: the whole train state plus the data-iterator position, keep K, with fallback.

RUN_DIR/checkpoints/<step>/ holds `state` (params, optimizer state, masks, step, RNG: Orbax's
sharded PyTree format, multi-host aware) and `data` (the grain iterator state and run counters as
JSON). A checkpoint that fails to restore (truncated, corrupt) is skipped with a warning and the
previous one is used, so a crash during a save never loses the run; the skipped ones are then
deleted so the resumed run writes those steps again (Orbax refuses to overwrite a step). A state
holding a NaN or Inf is never saved (the save raises TrainingDiverged naming the step and the
leaf), and one found on restore (written by an older version) is skipped like an unreadable one.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from prunejax import distributed, storage
from prunejax.hf import CheckpointError
from prunejax.train.loop import TrainingDiverged
from prunejax.tree import nonfinite_leaf, sparsity

log = logging.getLogger(__name__)
State = dict[str, Any]


class _OrbaxThreadFailures(logging.Filter):
    """Orbax logs each failure of its background save threads with a traceback (`_SignalingThread.run()
    raised an exception`), then keeps the exception and raises it in the main thread at the next wait,
    where prunejax reports it once. A store that stops answering fails every such thread at once: without
    this filter one error becomes a screenful of tracebacks before the one message."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "_SignalingThread.run() raised an exception" not in str(record.msg)


_THREAD_FAILURES = _OrbaxThreadFailures()


def _is_late_loop_callback(exc: BaseException | None, tb: Any) -> bool:
    """A tensorstore write that completes after the asyncio loop awaiting it has ended (Orbax runs each save
    in its own loop, which a failing save closes while its other writes are still in flight) calls
    `loop.call_soon_threadsafe` from C++ and reports the resulting `RuntimeError('Event loop is closed')` as
    unraisable, once per write: a frozen store printed 37 such tracebacks around the one message."""
    if not (isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"):
        return False
    return tb is not None and tb.tb_frame.f_code.co_name == "call_soon_threadsafe"  # no Python caller


def _drop_late_loop_callbacks(previous: Any) -> Any:
    """`previous` (sys.unraisablehook's signature) without `_is_late_loop_callback`'s noise."""

    def hook(unraisable: Any) -> None:
        if not _is_late_loop_callback(unraisable.exc_value, unraisable.exc_traceback):
            previous(unraisable)

    hook.prunejax_drops_late_loop_callbacks = True
    return hook


def quiet_late_loop_callbacks() -> None:
    """Install the unraisable hook that drops `_is_late_loop_callback`'s noise (once; anything else goes to
    the hook that was there before)."""
    if not getattr(sys.unraisablehook, "prunejax_drops_late_loop_callbacks", False):
        sys.unraisablehook = _drop_late_loop_callbacks(sys.unraisablehook)


class Checkpointer:
    """Periodic/final saves of (state, data state) under `run_dir/checkpoints`, keeping the newest `keep`."""

    def __init__(self, run_dir: str, *, keep: int = 3, use_async: bool = False):
        if storage.is_remote(run_dir):  # Orbax writes gs:// natively (tensorstore for arrays, commits per step)
            storage.prepare_tensorstore()
            quiet_late_loop_callbacks()
            self.directory = storage.join(run_dir, "checkpoints")
        else:
            self.directory = os.path.abspath(os.path.join(run_dir, "checkpoints"))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=use_async, create=True, cleanup_tmp_directories=True
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        logging.getLogger("absl").addFilter(_THREAD_FAILURES)  # once: a filter is added to a logger once

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: State, data: dict[str, Any]) -> None:
        """Save (async when enabled) a finite, mask-respecting state; `data` is JSON (iterator state, step, ...)."""
        check_finite(step, state, self.steps())
        check_sparsity(state)
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data))
        self.manager.save(step, args=args, force=True)

    def restore_latest(self, abstract_state: State) -> tuple[int, State, dict[str, Any]] | None:
        """(step, state, data) of the newest readable checkpoint, or None when there is none."""
        self.manager.wait_until_finished()
        steps = self.steps()
        for step in reversed(steps):
            try:
                args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore())
                restored = self.manager.restore(step, args=args)
            except Exception as e:  # noqa: BLE001 - any unreadable checkpoint falls back to the previous one
                log.warning("checkpoint %d in %s is unreadable (%s); trying the previous one", step, self.directory, e)
                continue
            leaf = nonfinite_leaf(restored["state"])
            if leaf is None:
                self._drop_after(step)
                return step, restored["state"], restored["data"]
            log.warning("checkpoint %d in %s holds NaN/Inf in %s; trying the previous one", step, self.directory, leaf)
        if steps:
            raise CheckpointError(f"{self.directory}: none of the checkpoints {steps} could be restored")
        self._drop_after(0)
        return None

    def _drop_after(self, step: int) -> None:
        """Delete the (unreadable or non-finite) checkpoints newer than the one resumed from, so the run can
        write those steps again; they are removed only once an older one restored, never on a failure.
        Also deleted: step directories that were never committed (on object storage Orbax writes a step in
        place and commits it last, so a killed save leaves a partial one that Orbax does not list; a new
        save of that step would otherwise land among its leftovers)."""
        newer = [s for s in self.steps() if s > step]
        for s in newer:
            self.manager.delete(s)
        if newer:
            log.warning("removed unusable checkpoint(s) %s of %s; resuming from step %d", newer, self.directory, step)
        committed = set(self.steps())
        if jax.process_index() == 0:
            partial = [
                p
                for p in self._step_dirs()
                if int(p.rsplit("/", 1)[-1]) > step and int(p.rsplit("/", 1)[-1]) not in committed
            ]
            for path in partial:
                storage.remove_tree(path)
            if partial:
                log.warning("removed uncommitted checkpoint dir(s) %s (a save that did not finish)", partial)
        distributed.barrier("checkpoint-leftovers")

    def _step_dirs(self) -> list[str]:
        """Every directory under the checkpoint root named like a step, committed or not."""
        if not storage.exists(self.directory):
            return []
        names = storage.list_names(self.directory)
        return [storage.join(self.directory, n) for n in names if n.isdigit()]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract(state: State) -> State:
    """Shapes, dtypes and shardings of `state`: the restore target (arrays land on their shards)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


@jax.jit
def _masked_nonzeros(params: Any, masks: Any) -> Any:
    return jax.tree.map(lambda w, m: jnp.sum((w != 0) & ~m), params, masks)


def realized_sparsity(state: State) -> dict[str, float] | None:
    """Realized sparsity of the masked weights: the mask's pruned fraction and the zero fraction."""
    if not state["masks"]:
        return None
    sp = sparsity(state["masks"], state["params"])
    return {"mask_sparsity": sp["mask_sparsity"], "zero_fraction": sp["zero_fraction"]}


def check_finite(step: int, state: State, saved: list[int]) -> None:
    """Raise TrainingDiverged naming `step` and the first NaN/Inf leaf of `state` (params, optimizer state)."""
    leaf = nonfinite_leaf(state)
    if leaf is not None:
        kept = f"the last good checkpoint is step {max(saved)}" if saved else "no checkpoint was saved"
        raise TrainingDiverged(
            f"state after step {step} holds NaN or Inf in {leaf}: training diverged; not saved, {kept} "
            "(lower peak_lr or check the data)"
        )


def check_sparsity(state: State) -> None:
    """Every masked-out weight must be exactly zero; a violation means the mask was lost, so stop."""
    masks = state["masks"]
    if not masks:
        return
    subset = _subtree(state["params"], masks)
    bad = sum(int(x) for x in jax.device_get(jax.tree.leaves(_masked_nonzeros(subset, masks))))
    if bad:
        raise CheckpointError(f"{bad} masked-out weights are nonzero: the sparsity mask was not preserved")


def _subtree(params: Any, masks: Any) -> Any:
    if isinstance(masks, dict):
        return {k: _subtree(params[k], v) for k, v in masks.items()}
    return params
