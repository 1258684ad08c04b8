"""The grain input pipeline: fixed-length windows from a token range, shuffled by seed, split per process.

A token range [offset, offset+count) of one split is cut into non-overlapping windows of
`seq_len + 1` tokens with stride `seq_len` (window w covers tokens w*seq_len .. w*seq_len+seq_len),
so inputs are window[:-1] and targets window[1:]. Windows are shuffled globally by `seed` (grain
reshuffles with a new permutation every epoch). Optimizer step t consumes shuffled windows
[t*G, (t+1)*G) for global batch G; process p of P takes the contiguous slice p*G/P .. (p+1)*G/P of
it, so the global batch is the same whatever the number of processes. The iterator's state is a
single position (grain's `get_state`), saved with every checkpoint.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import grain
import numpy as np

from prunejax.data.store import DataError, TokenStore

UPFRONT_CHECK = 1 << 26  # tokens (256 MiB of int32): validation splits and CPU-scale runs are scanned before work


class WindowSource(grain.sources.RandomAccessDataSource):
    """Window w of a token range: int32 [seq_len + 1], read through the store's memory maps."""

    def __init__(self, store: TokenStore, split: str, offset: int, count: int | None, seq_len: int):
        total = store.num_tokens(split)
        count = total - offset if count is None else count
        if offset < 0 or count <= 0 or offset + count > total:
            raise DataError(
                f"{store.data_dir}: data range [{offset:,}, {offset + count:,}) is outside split {split!r} "
                f"of {total:,} tokens"
            )
        if count < seq_len + 1:
            raise DataError(f"data range of {count:,} tokens is shorter than one window of {seq_len + 1}")
        self.store, self.split, self.offset, self.seq_len = store, split, offset, seq_len
        self.num_windows = (count - 1) // seq_len
        # Every window's ids are checked as it is read (`TokenStore.read`), so no bad id reaches the model. A
        # range up to UPFRONT_CHECK tokens is also scanned now, to fail before any work; a larger one (a pod's
        # train split, on gs://) is not: every host would read all of it before step 1.
        if self.num_windows * seq_len + 1 <= UPFRONT_CHECK:
            store.check(split, offset, self.num_windows * seq_len + 1)

    def __len__(self) -> int:
        return self.num_windows

    def __getitem__(self, index: int) -> np.ndarray:
        return self.store.read(self.split, self.offset + int(index) * self.seq_len, self.seq_len + 1)

    def __repr__(self) -> str:  # grain logs sources by repr
        return f"WindowSource({self.store.data_dir}, {self.split}, offset={self.offset}, n={self.num_windows})"


@dataclasses.dataclass(frozen=True)
class BatchSpec:
    """How optimizer steps map to windows: global batch G = accum * micro * processes."""

    global_batch: int
    grad_accum: int = 1
    process_index: int = 0
    process_count: int = 1

    def __post_init__(self) -> None:
        if self.global_batch < 1 or self.grad_accum < 1:
            raise DataError("global_batch and grad_accum must be positive")
        if self.global_batch % (self.grad_accum * self.process_count):
            raise DataError(
                f"global batch {self.global_batch} does not divide into {self.grad_accum} micro-batches "
                f"x {self.process_count} processes"
            )

    @property
    def local_batch(self) -> int:
        return self.global_batch // self.process_count


def _to_example(window: np.ndarray) -> dict[str, np.ndarray]:
    return {"inputs": window[:-1], "targets": window[1:]}


def _local_rows(step: int, spec: BatchSpec) -> np.ndarray:
    """Shuffled-window positions this process reads for optimizer step `step`."""
    start = step * spec.global_batch + spec.process_index * spec.local_batch
    return np.arange(start, start + spec.local_batch)


def train_dataset(source: WindowSource, spec: BatchSpec, seed: int, num_steps: int) -> grain.MapDataset:
    """Element t = this process's batch for step t: {'inputs','targets'} int32 [accum, local/accum, L]."""
    windows = grain.MapDataset.source(source).shuffle(seed=seed)  # indices past len reshuffle per epoch
    accum, micro = spec.grad_accum, spec.local_batch // spec.grad_accum

    def batch_for(step: int) -> dict[str, np.ndarray]:
        rows = [_to_example(windows[int(i)]) for i in _local_rows(step, spec)]
        return {k: np.stack([r[k] for r in rows]).reshape(accum, micro, -1) for k in ("inputs", "targets")}

    return grain.MapDataset.range(num_steps).map(batch_for)


def eval_dataset(source: WindowSource, spec: BatchSpec, num_batches: int) -> grain.MapDataset:
    """The first `num_batches` global batches of windows in order (no shuffle), this process's rows."""
    needed = num_batches * spec.global_batch
    if needed > len(source):
        raise DataError(f"validation needs {needed} windows, the range holds {len(source)}; lower val_batches")
    windows = grain.MapDataset.source(source)

    def batch_for(step: int) -> dict[str, np.ndarray]:
        rows = [_to_example(windows[int(i)]) for i in _local_rows(step, spec)]
        return {k: np.stack([r[k] for r in rows]) for k in ("inputs", "targets")}

    return grain.MapDataset.range(num_batches).map(batch_for)


def train_iterator(dataset: grain.MapDataset, state: dict[str, Any] | None = None) -> grain.DatasetIterator:
    """A checkpointable iterator over `dataset`, positioned at `state` when given (from `get_state()`)."""
    it = iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)))
    if state is not None:
        it.set_state(state)
    return it
