"""`data index`: ArrayRecord files of token ids (tf.train.Example or raw integers) -> a DATA_DIR with exactly
those tokens; validation by fraction or by file; resumable; bad records are clear errors."""

import json
import os

import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordWriter
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from prunejax import cli
from prunejax.data import index as index_lib
from prunejax.data.build import PROGRESS, work_dir
from prunejax.data.index import decode_example, index_array_records
from prunejax.data.store import DataError, TokenStore
from prunejax.data.tokenizer import train_bpe

VOCAB = 280
EOS = 0  # train_bpe's <|endoftext|>
RNG = np.random.default_rng(0)
# two files of documents; some already end with EOS, one is empty
DOCS = [
    [np.append(RNG.integers(1, VOCAB, n), [EOS] if n % 3 == 0 else []).astype(np.int64) for n in (5, 0, 9, 12, 7, 3)],
    [RNG.integers(1, VOCAB, n).astype(np.int64) for n in (4, 6, 270, 8)],
]
KW = dict(val_fraction=0.25, progress=False, commit_seconds=0, shard_tokens=64)


def _example_class():
    """tf.train.Example built by protobuf itself from its schema, an independent reference for the decoder."""
    F = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="example_test.proto", package="tf", syntax="proto3")

    def message(name, *fields):
        m = file.message_type.add(name=name)
        for number, fname, ftype, label, type_name in fields:
            m.field.add(name=fname, number=number, type=ftype, label=label, type_name=type_name)
        return m

    message("BytesList", (1, "value", F.TYPE_BYTES, F.LABEL_REPEATED, None))
    message("Int64List", (1, "value", F.TYPE_INT64, F.LABEL_REPEATED, None))
    feature = message(
        "Feature",
        (1, "bytes_list", F.TYPE_MESSAGE, F.LABEL_OPTIONAL, ".tf.BytesList"),
        (3, "int64_list", F.TYPE_MESSAGE, F.LABEL_OPTIONAL, ".tf.Int64List"),
    )
    feature.oneof_decl.add(name="kind")
    for field in feature.field:
        field.oneof_index = 0
    features = message("Features", (1, "feature", F.TYPE_MESSAGE, F.LABEL_REPEATED, ".tf.Features.FeatureEntry"))
    entry = features.nested_type.add(name="FeatureEntry")
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL, type_name=".tf.Feature")
    entry.options.map_entry = True
    message("Example", (1, "features", F.TYPE_MESSAGE, F.LABEL_OPTIONAL, ".tf.Features"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tf.Example"))


Example = _example_class()


def _example(ids, **extra_int64):
    ex = Example()
    ex.features.feature["url"].bytes_list.value.append(b"https://example.com/doc")
    ex.features.feature["input_ids"].int64_list.value.extend(int(i) for i in ids)
    for name, values in extra_int64.items():
        ex.features.feature[name].int64_list.value.extend(values)
    return ex.SerializeToString()


def _write(path, records):
    w = ArrayRecordWriter(str(path), "group_size:2")
    for r in records:
        w.write(r)
    w.close()
    return str(path)


def _expected(docs):
    return np.concatenate([d if len(d) and d[-1] == EOS else np.append(d, EOS) for d in docs])


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    text = [f"record {i} of a pre-tokenized corpus" for i in range(30)]
    return train_bpe(text, str(tmp_path_factory.mktemp("tok") / "tok"), vocab_size=VOCAB)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("ar")
    return {
        "example": [_write(root / f"ex-{i}.array_record", [_example(d) for d in docs]) for i, docs in enumerate(DOCS)],
        "int32": [
            _write(root / f"raw-{i}.array_record", [d.astype("<i4").tobytes() for d in docs])
            for i, docs in enumerate(DOCS)
        ],
    }


def test_decoder_reads_packed_and_unpacked_int64_lists():
    ids = [0, 1, 127, 128, 300, 2**31 - 1, 2**40]
    assert decode_example(_example(ids)).tolist() == ids
    assert decode_example(_example(ids, other=[1]), "input_ids").tolist() == ids
    unpacked = b"".join(b"\x08" + bytes([i]) for i in (3, 4, 5))  # field 1, varint, one at a time
    entry = b"\x0a\x03ids" + b"\x12" + bytes([len(unpacked) + 2]) + b"\x1a" + bytes([len(unpacked)]) + unpacked
    record = b"\x0a" + bytes([len(entry) + 2]) + b"\x0a" + bytes([len(entry)]) + entry
    assert decode_example(record).tolist() == [3, 4, 5]


@pytest.mark.parametrize("encoding", ["example", "int32"])
def test_index_reads_back_exactly_the_records(tok, files, tmp_path, encoding):
    out = index_array_records(files[encoding], tok, str(tmp_path / "d"), record_dtype=encoding, **KW)
    store = TokenStore(out)
    docs = DOCS[0] + DOCS[1]  # every 4th record (4th, 8th) is held out
    np.testing.assert_array_equal(store.read("train"), _expected([d for i, d in enumerate(docs, 1) if i % 4]))
    np.testing.assert_array_equal(store.read("validation"), _expected([docs[3], docs[7]]))
    assert store.meta["counts"] == {"documents": 10, "validation_documents": 2}
    assert store.tokenizer_dir is not None and store.vocab_size == VOCAB
    assert len(store.meta["splits"]["train"]["shards"]) > 1


def test_index_val_files_no_eos_and_cli(tok, files, tmp_path, capsys):
    out = index_array_records(
        files["example"][:1], tok, str(tmp_path / "d"), val_files=files["example"][1:], append_eos=False, **KW
    )
    store = TokenStore(out)
    np.testing.assert_array_equal(store.read("train"), np.concatenate(DOCS[0]))
    np.testing.assert_array_equal(store.read("validation"), np.concatenate(DOCS[1]))
    argv = ["data", "index", "--array-record", files["int32"][0], "--val-files", files["int32"][1]]
    argv += ["--record-dtype", "int32", "--tokenizer", tok, "--out", str(tmp_path / "c"), "--no-append-eos"]
    assert cli.main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    assert TokenStore(str(tmp_path / "c")).fingerprint == store.fingerprint


def test_interrupted_index_resumes_to_the_same_tokens(tok, files, tmp_path, monkeypatch):
    whole = TokenStore(index_array_records(files["example"], tok, str(tmp_path / "whole"), batch_records=2, **KW))
    documents, calls = index_lib._documents, []

    def interrupting(*args):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return documents(*args)

    out = str(tmp_path / "d")
    monkeypatch.setattr(index_lib, "_documents", interrupting)
    with pytest.raises(KeyboardInterrupt):
        index_array_records(files["example"], tok, out, batch_records=2, **KW)
    monkeypatch.undo()
    progress = json.load(open(os.path.join(work_dir(out), PROGRESS)))
    assert progress["counts"]["documents"] == 6 and not os.path.exists(out)  # 3 batches of 2 committed
    store = TokenStore(index_array_records(files["example"], tok, out, batch_records=3, **KW))
    assert store.meta == whole.meta
    np.testing.assert_array_equal(store.read("train"), whole.read("train"))


def test_bad_array_records_are_clear_errors(tok, files, tmp_path):
    def index(paths, **kw):
        return index_array_records(paths, tok, str(tmp_path / "d"), **{**KW, **kw})

    (tmp_path / "x.array_record").write_bytes(b"this is not an array record file" * 8)
    with pytest.raises(DataError, match="x.array_record: not an ArrayRecord file"):
        index([str(tmp_path / "x.array_record")])
    with pytest.raises(DataError, match="no such file"):
        index([str(tmp_path / "missing.array_record")])
    big = _write(tmp_path / "big.array_record", [_example([1, 2]), _example([3, VOCAB, 4])])
    with pytest.raises(DataError, match=rf"big.array_record record 1: token id {VOCAB} is outside .*\[0, {VOCAB}\)"):
        index([big], val_fraction=0)
    assert not os.path.exists(tmp_path / "d") and not os.path.exists(work_dir(str(tmp_path / "d")))
    two = _write(tmp_path / "two.array_record", [_example([1], labels=[2])])
    with pytest.raises(DataError, match="more than one int64 feature; int64 features: input_ids, labels"):
        index([two], val_fraction=0)
    with pytest.raises(DataError, match="no int64 feature 'tokens'"):
        index([two], val_fraction=0, feature="tokens")
    with pytest.raises(DataError, match="raw-0.array_record record 0: not a tf.train.Example .*need --record-dtype"):
        index(files["int32"][:1])
    with pytest.raises(DataError, match="record 0: 20 bytes is not a whole number of int64 values"):
        index(files["int32"][:1], record_dtype="int64")
    empty = _write(tmp_path / "empty.array_record", [])
    with pytest.raises(DataError, match="validation files hold no records"):
        index(files["int32"][:1], val_files=[empty], record_dtype="int32")
    with pytest.raises(DataError, match="no documents"):
        index([empty], val_fraction=0)
    with pytest.raises(DataError, match="both as a training and as a validation file"):
        index(files["int32"], val_files=files["int32"][1:], record_dtype="int32")


def _raw_example(int64_list):
    """A tf.train.Example with one feature 'ids' whose Int64List message is the bytes `int64_list`."""
    entry = b"\x0a\x03ids" + b"\x12" + bytes([len(int64_list) + 2]) + b"\x1a" + bytes([len(int64_list)]) + int64_list
    return b"\x0a" + bytes([len(entry) + 2]) + b"\x0a" + bytes([len(entry)]) + entry


def test_varints_past_64_bits_are_clear_errors(tok, tmp_path, capsys):
    assert index_lib._int64_list(memoryview(b"\x08" + b"\xff" * 9 + b"\x01")).tolist() == [-1]  # 2**64 - 1
    assert index_lib._int64_list(memoryview(b"\x0a\x0a" + b"\xff" * 9 + b"\x01")).tolist() == [-1]  # packed
    for bad, message in [
        (b"\x08" + b"\xff" * 10 + b"\x7f", "varint longer than 10 bytes"),
        (b"\x08" + b"\xff" * 9 + b"\x02", "varint above 2\\*\\*64"),
        (b"\x0a\x0a" + b"\xff" * 9 + b"\x02", "varint above 2\\*\\*64"),  # packed
    ]:
        with pytest.raises(ValueError, match=message):
            index_lib._int64_list(memoryview(bad))
    path = _write(tmp_path / "bad.array_record", [_example([1, 2]), _raw_example(b"\x08" + b"\xff" * 10 + b"\x7f")])
    with pytest.raises(DataError, match="bad.array_record record 1: not a tf.train.Example .*longer than 10 bytes"):
        index_array_records([path], tok, str(tmp_path / "d"), **{**KW, "val_fraction": 0})
    argv = ["data", "index", "--array-record", path, "--tokenizer", tok, "--out", str(tmp_path / "c")]
    assert cli.main([*argv, "--val-fraction", "0"]) == 1
    assert "bad.array_record record 1: not a tf.train.Example" in capsys.readouterr().err
