"""The grain pipeline: windows of a token range, deterministic shuffle, per-process split, resumable iterator."""

import numpy as np
import pytest

from prunejax.data.pipeline import BatchSpec, WindowSource, eval_dataset, train_dataset, train_iterator
from prunejax.data.store import DataError, TokenStore, write_data_dir

N = 1000


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Token i has id i % 997, spread over several small shards so windows cross shard edges."""
    out = str(tmp_path_factory.mktemp("d") / "data")
    tokens = np.arange(N) % 997
    write_data_dir(
        out,
        {"train": [tokens[:300], tokens[300:]], "validation": [tokens[:200]]},
        vocab_size=1024,
        eos_id=0,
        shard_tokens=128,
    )
    return TokenStore(out)


def test_windows_are_shifted_pairs_from_the_range(store):
    src = WindowSource(store, "train", 100, 501, 10)
    assert len(src) == 50  # (501 - 1) // 10 windows of 11 tokens, stride 10
    np.testing.assert_array_equal(src[0], np.arange(100, 111))
    np.testing.assert_array_equal(src[49], np.arange(590, 601))
    ds = train_dataset(src, BatchSpec(global_batch=4, grad_accum=2), seed=0, num_steps=3)
    b = ds[0]
    assert b["inputs"].shape == (2, 2, 10) and b["inputs"].dtype == np.int32
    np.testing.assert_array_equal(b["inputs"][..., 1:], b["targets"][..., :-1])
    starts = b["inputs"][..., 0].ravel()
    assert all(100 <= s < 591 and (s - 100) % 10 == 0 for s in starts)


def test_shuffle_is_deterministic_by_seed_and_covers_each_epoch(store):
    src = WindowSource(store, "train", 0, None, 10)  # 99 windows
    ds = train_dataset(src, BatchSpec(global_batch=9), seed=1, num_steps=22)
    again = train_dataset(src, BatchSpec(global_batch=9), seed=1, num_steps=22)
    other = train_dataset(src, BatchSpec(global_batch=9), seed=2, num_steps=22)
    firsts = [ds[i]["inputs"][0, :, 0] for i in range(22)]
    assert all(np.array_equal(a, again[i]["inputs"][0, :, 0]) for i, a in enumerate(firsts))
    assert not np.array_equal(firsts[0], other[0]["inputs"][0, :, 0])
    epoch1 = np.concatenate(firsts[:11])
    epoch2 = np.concatenate(firsts[11:])
    assert sorted(epoch1) == list(range(0, 990, 10))  # every window exactly once per epoch
    assert sorted(epoch2) == list(range(0, 990, 10)) and not np.array_equal(epoch1, epoch2)


def test_processes_split_the_same_global_batch(store):
    src = WindowSource(store, "train", 0, None, 10)
    whole = train_dataset(src, BatchSpec(global_batch=8, grad_accum=2), seed=3, num_steps=4)
    parts = [train_dataset(src, BatchSpec(8, 2, p, 2), seed=3, num_steps=4) for p in range(2)]
    for step in range(4):
        rows = whole[step]["inputs"].reshape(8, -1)
        local = [p[step]["inputs"] for p in parts]
        assert local[0].shape == (2, 2, 10)
        np.testing.assert_array_equal(np.concatenate([x.reshape(4, -1) for x in local]), rows)


def test_iterator_state_resumes_exactly(store):
    ds = train_dataset(WindowSource(store, "train", 0, None, 10), BatchSpec(4), seed=0, num_steps=10)
    it = train_iterator(ds)
    for _ in range(3):
        next(it)
    state = it.get_state()
    rest = [next(it)["inputs"] for _ in range(7)]
    resumed = train_iterator(ds, state)
    for want in rest:
        np.testing.assert_array_equal(next(resumed)["inputs"], want)


def test_eval_dataset_in_order(store):
    src = WindowSource(store, "validation", 0, None, 10)
    ds = eval_dataset(src, BatchSpec(4), num_batches=2)
    np.testing.assert_array_equal(ds[1]["inputs"][:, 0], [40, 50, 60, 70])
    with pytest.raises(DataError, match="validation needs 40 windows"):
        eval_dataset(src, BatchSpec(4), num_batches=10)


def test_bad_ranges(store):
    with pytest.raises(DataError, match=r"data range \[900, 1,100\) is outside split 'train' of 1,000 tokens"):
        WindowSource(store, "train", 900, 200, 10)
    with pytest.raises(DataError, match="shorter than one window"):
        WindowSource(store, "train", 0, 5, 10)
    with pytest.raises(DataError, match="no split 'test'"):
        WindowSource(store, "test", 0, None, 10)
    with pytest.raises(DataError, match="does not divide"):
        BatchSpec(global_batch=6, grad_accum=4)


def test_every_reader_refuses_token_ids_past_the_vocabulary(tmp_path):
    """One check in TokenStore: `read`, `check` and a WindowSource all refuse an id >= meta.json's vocab_size,
    naming the shard and the position; a range that holds no bad id is still readable."""
    out = str(tmp_path / "data")
    write_data_dir(
        out,
        {"train": [np.arange(300) % 97], "validation": [np.arange(200) % 97]},
        vocab_size=100,
        eos_id=0,
        shard_tokens=128,
    )
    shard = tmp_path / "data" / "validation-00001.bin"  # tokens 128.. of the validation split
    raw = np.fromfile(shard, "<u2")
    raw[5] = 100  # one past the vocabulary, as an edit or another tool could leave it
    raw.tofile(shard)
    store = TokenStore(out)
    where = r"validation-00001.bin: token id 100 at token 5 of the shard \(position 133 of split 'validation'\)"
    with pytest.raises(DataError, match=where):
        store.read("validation", 130, 10)
    with pytest.raises(DataError, match=where):
        store.check("validation")
    with pytest.raises(DataError, match=where):
        WindowSource(store, "validation", 0, None, 10)  # up front: no window has been read yet
    np.testing.assert_array_equal(store.read("validation", 0, 128), np.arange(128) % 97)
    store.check("train")
    WindowSource(store, "validation", 0, 129, 16)  # the windows of this range stop before the bad id


def test_a_range_too_large_to_scan_up_front_is_checked_window_by_window(tmp_path, monkeypatch):
    from prunejax.data import pipeline

    out = str(tmp_path / "data")
    write_data_dir(out, {"train": [np.arange(300) % 97]}, vocab_size=100, eos_id=0, shard_tokens=128)
    raw = np.fromfile(tmp_path / "data" / "train-00002.bin", "<u2")
    raw[0] = 100  # token 256 of the split
    raw.tofile(tmp_path / "data" / "train-00002.bin")
    monkeypatch.setattr(pipeline, "UPFRONT_CHECK", 64)  # as if the split were a pod's 50B tokens
    source = WindowSource(TokenStore(out), "train", 0, None, 16)  # no scan: built at once
    np.testing.assert_array_equal(source[0], np.arange(17) % 97)
    with pytest.raises(DataError, match=r"train-00002.bin: token id 100 at token 0 of the shard"):
        source[15]  # tokens 240..256: the window that holds the bad id
