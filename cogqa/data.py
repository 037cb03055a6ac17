"""Pre-training data as the paper prepares it (Appendix E), written as memory-mapped token shards.

``prepare`` reads documents (plain text files: one document per file; JSONL / Parquet: one
document per record's text field; a Hugging Face dataset saved with ``save_to_disk`` or, where the
network allows, ``hf:NAME[:SPLIT]`` streamed; ``kjv``: the offline corpus), tokenises them in
batches (multi-threaded for GPT-2), appends EOS to each document, concatenates, cuts the stream
into chunks of ``context`` tokens and drops the short last chunk. Each chunk goes to the validation
split with probability ``val_fraction`` (a seeded draw per chunk; at least one validation chunk).

Layout of the output directory (written under a temporary name, then renamed: never half-written)::

    manifest.json            counts, tokenizer, dtype, shard list, content hash
    train_00000.bin ...      header (64 bytes) + chunks of `context` tokens (uint16 or uint32)
    val_00000.bin ...

Header: magic ``b"COGQATOK"``, then little-endian uint32 version, uint32 bytes per token, uint64
number of tokens, uint64 context, padded with zeros to 64 bytes.

Reading the inputs (and the offline corpus, the King James Bible) is :mod:`cogqa.corpus`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .corpus import (  # noqa: F401  (re-exported: the documents live in cogqa.corpus)
    OFFLINE_CORPORA,
    cache_dir,
    iter_documents,
    kjv_documents,
    offline_corpus,
)
from .errors import CogqaError, require
from .files import check_output_dir, write_json_atomic, write_output_dir

MAGIC = b"COGQATOK"
HEADER_BYTES = 64
FORMAT_VERSION = 1
#: Default shard size: chunks are grouped into files of at most this many tokens.
SHARD_TOKENS = 1 << 28


# ---------------------------------------------------------------------------------------------
# Shards
# ---------------------------------------------------------------------------------------------


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocabulary <= 65,536), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def _header(itemsize: int, n_tokens: int, context: int) -> bytes:
    head = MAGIC + struct.pack("<IIQQ", FORMAT_VERSION, itemsize, n_tokens, context)
    return head + b"\0" * (HEADER_BYTES - len(head))


def read_header(path: str | Path) -> dict[str, int]:
    """The header of a token shard: ``bytes_per_token``, ``tokens`` and ``context`` (tokens)."""
    with open(path, "rb") as f:
        raw = f.read(HEADER_BYTES)
    require(
        len(raw) == HEADER_BYTES and raw[:8] == MAGIC,
        f"{path}: not a cogqa token shard (bad header); re-run cogqa data prepare",
    )
    version, itemsize, n_tokens, context = struct.unpack("<IIQQ", raw[8:32])
    require(
        version == FORMAT_VERSION,
        f"{path}: shard format {version}, this cogqa reads {FORMAT_VERSION}; re-run cogqa data prepare",
    )
    size = os.path.getsize(path)
    require(
        size == HEADER_BYTES + n_tokens * itemsize,
        f"{path}: truncated ({size} bytes, header says {n_tokens} tokens); re-run cogqa data prepare",
    )
    return {"bytes_per_token": itemsize, "tokens": n_tokens, "context": context}


class _ShardWriter:
    """Appends whole chunks to ``<split>_NNNNN.bin`` files, sealing each with its header."""

    def __init__(self, root: Path, split: str, dtype: np.dtype, context: int, shard_tokens: int) -> None:
        self.root, self.split, self.dtype, self.context = root, split, dtype, context
        self.chunks_per_shard = max(1, shard_tokens // context)
        self.shards: list[dict[str, Any]] = []
        self._f = None
        self._n = 0
        self._hash = None

    def _open(self) -> None:
        name = f"{self.split}_{len(self.shards):05d}.bin"
        self._f = open(self.root / name, "wb")
        self._f.write(_header(self.dtype.itemsize, 0, self.context))
        self._n, self._hash = 0, hashlib.sha256()
        self.shards.append({"file": name})

    def _seal(self) -> None:
        self._f.seek(0)
        self._f.write(_header(self.dtype.itemsize, self._n * self.context, self.context))
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        self.shards[-1].update(chunks=self._n, tokens=self._n * self.context, sha256=self._hash.hexdigest())
        self._f = None

    def write(self, chunk: np.ndarray) -> None:
        if self._f is None:
            self._open()
        data = chunk.astype(self.dtype).tobytes()
        self._f.write(data)
        self._hash.update(data)
        self._n += 1
        if self._n == self.chunks_per_shard:
            self._seal()

    def close(self) -> None:
        if self._f is not None:
            self._seal()

    @property
    def chunks(self) -> int:
        return sum(s.get("chunks", 0) for s in self.shards) + (self._n if self._f is not None else 0)


class TokenChunks:
    """The chunks of one split of a prepared directory, memory-mapped; ``[i]`` is an array of ``context`` ids."""

    def __init__(self, root: str | Path, split: str = "train") -> None:
        self.root = Path(root)
        self.manifest = load_manifest(self.root)
        require(
            split in self.manifest["splits"],
            f"data: {root} has no split {split!r} (splits: {', '.join(self.manifest['splits'])})",
        )
        self.split = split
        self.context = int(self.manifest["context"])
        self.dtype = np.dtype(self.manifest["dtype"])
        self._maps = []
        self._starts = [0]
        for shard in self.manifest["splits"][split]["shards"]:
            path = self.root / shard["file"]
            require(path.is_file(), f"data: shard {path} is missing; re-run cogqa data prepare")
            head = read_header(path)
            require(
                head["context"] == self.context and head["bytes_per_token"] == self.dtype.itemsize,
                f"data: shard {path} does not match manifest.json; re-run cogqa data prepare",
            )
            n = head["tokens"] // self.context
            if n:
                self._maps.append(
                    np.memmap(path, dtype=self.dtype, mode="r", offset=HEADER_BYTES, shape=(n, self.context))
                )
                self._starts.append(self._starts[-1] + n)

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, i: int) -> np.ndarray:
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"chunk {i} out of range ({len(self)} chunks)")
        k = int(np.searchsorted(self._starts, i, side="right")) - 1
        return self._maps[k][i - self._starts[k]]

    def tokens(self) -> np.ndarray:
        """All tokens of the split, concatenated (a copy; int64)."""
        if not self._maps:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([m.reshape(-1) for m in self._maps]).astype(np.int64)


def load_manifest(root: str | Path) -> dict[str, Any]:
    """The ``manifest.json`` of a prepared directory, read through :mod:`cogqa.readers` (bounded size and nesting,
    UTF-8, no NaN) and checked for the fields and types readers need; every error is one line naming the file and
    the field, ending with the fix."""
    from .readers import field, read_json_object

    path = Path(root) / "manifest.json"
    require(path.is_file(), f"data: no manifest.json in {root}; prepare it with `cogqa data prepare ... --out {root}`")
    fix = "; re-run cogqa data prepare"
    try:
        manifest = read_json_object(path, f"data: {path}")
        for key in ("context", "padded_vocab_size"):
            field(manifest, key, "int", f"data: {path}", low=1, high=(1 << 40) - 1)
        field(manifest, "tokenizer", "str", f"data: {path}")
        dtype = field(manifest, "dtype", "str", f"data: {path}")
        require(
            dtype in ("uint16", "uint32"), f"data: {path}: field 'dtype' must be uint16 or uint32, got {dtype[:40]!r}"
        )
        splits = field(manifest, "splits", "dict", f"data: {path}")
        for name, split in splits.items():
            require(isinstance(split, dict), f"data: {path}: field 'splits.{name}' must be an object")
            for key in ("chunks", "tokens"):
                field(split, key, "int", f"data: {path}", default=0, low=0, where=f"splits.{name}.")
            shards = field(split, "shards", "list", f"data: {path}", where=f"splits.{name}.")
            for i, shard in enumerate(shards):
                where = f"splits.{name}.shards[{i}]"
                require(isinstance(shard, dict), f"data: {path}: field {where!r} must be an object")
                _check_shard_entry(shard, f"data: {path}", where + ".")
    except CogqaError as exc:
        raise CogqaError(f"{exc}{fix}") from None
    return manifest


def _check_shard_entry(shard: dict, source: str, where: str) -> None:
    """One shard of a manifest: a plain file name and non-negative counts."""
    from .readers import field, short

    f = field(shard, "file", "str", source, where=where)
    require(
        f and "/" not in f and "\\" not in f and f not in (".", ".."),
        f"{source}: field {where}file {short(f)} is not a plain file name",
    )
    for key in ("chunks", "tokens"):
        field(shard, key, "int", source, default=0, low=0, where=where)


def _shard_problems(
    root: Path, manifest: dict, name: str, shard: dict, full: bool, sample: int = 4
) -> tuple[list[str], bool]:
    """Problems of one shard (empty if fine) and whether its SHA-256 was checked."""
    path = root / shard["file"]
    if not path.is_file():
        return [f"{shard['file']}: missing"], False
    try:
        head = read_header(path)
    except CogqaError as exc:
        reason = str(exc).split(": ", 1)[-1].replace("; re-run cogqa data prepare", "")
        return [f"{shard['file']}: {reason}"], False
    problems = []
    dtype = np.dtype(manifest["dtype"])
    context = int(manifest["context"])
    if head["bytes_per_token"] != dtype.itemsize or head["context"] != context:
        problems.append(
            f"{shard['file']}: header ({head['bytes_per_token']} bytes/token, context {head['context']}) "
            f"does not match the manifest ({dtype.itemsize}, {context})"
        )
        return problems, False
    if "tokens" in shard and shard["tokens"] != head["tokens"]:
        problems.append(f"{shard['file']}: {head['tokens']:,} tokens, the manifest says {shard['tokens']:,}")
    if "chunks" in shard and shard["chunks"] * context != head["tokens"]:
        problems.append(f"{shard['file']}: {head['tokens'] // context:,} chunks, the manifest says {shard['chunks']:,}")
    n = head["tokens"] // context
    vocab = int(manifest["padded_vocab_size"])
    hashed = False
    if n and full:
        digest = hashlib.sha256()
        top = 0
        with open(path, "rb") as f:
            f.seek(HEADER_BYTES)
            while block := f.read(1 << 24):
                digest.update(block)
                top = max(
                    top,
                    int(
                        np.frombuffer(block[: len(block) // dtype.itemsize * dtype.itemsize], dtype=dtype).max(
                            initial=0
                        )
                    ),
                )
        if "sha256" in shard:
            hashed = True
            if digest.hexdigest() != shard["sha256"]:
                problems.append(f"{shard['file']}: SHA-256 differs from the manifest (the shard is corrupt)")
        if top >= vocab:
            problems.append(f"{shard['file']}: token id {top} >= the vocabulary ({vocab:,})")
    elif n:
        data = np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(n, context))
        rows = sorted({0, n - 1, *np.random.default_rng(0).integers(0, n, size=sample).tolist()})
        top = int(np.asarray(data[rows]).max())
        if top >= vocab:
            problems.append(f"{shard['file']}: token id {top} >= the vocabulary ({vocab:,})")
    return problems, hashed


def verify_data(root: str | Path, full: bool = True) -> dict[str, Any]:
    """Check every shard of a prepared directory against its manifest; returns a report.

    ``full``: read every byte (SHA-256 against the manifest's per-shard hash, every token id below the
    padded vocabulary); otherwise only the cheap invariants (files present, headers, sizes and counts, ids of
    a few chunks per shard). The report: ``shards`` (count), ``hashed`` (shards whose hash was compared),
    ``problems`` (one line each, naming the shard) and ``notes`` (what could not be checked, e.g. an old
    manifest without hashes).
    """
    root = Path(root)
    manifest = load_manifest(root)
    problems: list[str] = []
    notes: list[str] = []
    n_shards = n_hashed = 0
    unhashed = 0
    for name, split in manifest["splits"].items():
        tokens = 0
        for shard in split["shards"]:
            n_shards += 1
            found, hashed = _shard_problems(root, manifest, name, shard, full)
            problems += found
            n_hashed += hashed
            unhashed += full and "sha256" not in shard
            tokens += shard.get("tokens", 0)
        if "tokens" in split and all("tokens" in sh for sh in split["shards"]) and tokens != split["tokens"]:
            problems.append(f"split {name}: shards hold {tokens:,} tokens, the manifest says {split['tokens']:,}")
    if unhashed:
        notes.append(
            f"{unhashed} shard(s) have no SHA-256 in the manifest (prepared by an older cogqa): "
            "their headers, sizes, counts and token ids were checked, not their bytes"
        )
    return {"dir": str(root), "shards": n_shards, "hashed": n_hashed, "problems": problems, "notes": notes}


def check_shards_cheap(root: str | Path) -> dict[str, Any]:
    """The cheap invariants of a prepared directory, for a trainer to call at start; raises CogqaError on the first
    problem (naming the shard), else returns the :func:`verify_data` report (``full=False``).

    Checks the manifest's fields and types, that every shard exists with a valid header matching the manifest's
    dtype/context, that its size and counts agree with the manifest, and that the ids of a few chunks per shard
    are below the padded vocabulary. Reads a few KB per shard.
    """
    report = verify_data(root, full=False)
    require(
        not report["problems"],
        f"data: {root}: {report['problems'][0] if report['problems'] else ''}; "
        "run `cogqa data verify` and re-run cogqa data prepare",
    )
    return report


# ---------------------------------------------------------------------------------------------
# Prepare
# ---------------------------------------------------------------------------------------------


def _batches(docs: Iterator[str], max_chars: int = 4_000_000, max_docs: int = 1024) -> Iterator[list[str]]:
    batch, size = [], 0
    for d in docs:
        batch.append(d)
        size += len(d)
        if size >= max_chars or len(batch) >= max_docs:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def prepare(
    inputs: list[str],
    out: str | Path,
    tokenizer: str = "gpt2",
    context: int = 2048,
    val_fraction: float = 0.01,
    text_field: str = "text",
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
    shard_tokens: int = SHARD_TOKENS,
) -> dict[str, Any]:
    """Tokenise ``inputs`` into chunks of ``context`` tokens under ``out``; returns the manifest.

    Counts in the manifest are in tokens, documents and chunks; ``content_hash`` is the SHA-256
    over the shards' token bytes (train, then validation), identical for identical inputs,
    tokenizer, context, fraction and seed.
    """
    from .tokenizer import get_tokenizer

    require(
        isinstance(inputs, (list, tuple)) and len(inputs) > 0,
        "inputs: give at least one input (a file, a directory, kjv or hf:NAME)",
    )
    require(
        isinstance(context, int) and not isinstance(context, bool) and context >= 2,
        f"context: must be an integer >= 2 tokens, got {context!r}",
    )
    require(
        isinstance(val_fraction, (int, float)) and 0.0 <= val_fraction < 1.0,
        f"val_fraction: must be in [0, 1), got {val_fraction!r}",
    )
    for src in inputs:
        require(
            src in OFFLINE_CORPORA or str(src).startswith("hf:") or Path(src).exists(),
            f"input {src}: no such file or directory (offline corpora: {', '.join(OFFLINE_CORPORA)})",
        )
    out = Path(out)
    check_output_dir(out, "data prepare", overwrite, legacy_ok=is_legacy_data_dir)
    tok = get_tokenizer(tokenizer)
    if workers is not None and hasattr(tok, "threads"):
        tok.threads = max(1, int(workers))
    dtype = token_dtype(tok.padded_vocab_size)
    result: dict[str, Any] = {}

    def build(tmp: Path) -> None:
        manifest = _prepare_into(
            tmp, inputs, tok, context, float(val_fraction), text_field, seed, progress, dtype, shard_tokens
        )
        manifest.update(
            tokenizer=tok.name,
            inputs=[str(s) for s in inputs],
            text_field=text_field,
            seed=seed,
            val_fraction=float(val_fraction),
        )
        write_json_atomic(tmp / "manifest.json", manifest)
        result.update(manifest)

    write_output_dir(out, "data prepare", build, overwrite, legacy_ok=is_legacy_data_dir)
    return result


_SHARD_NAME = re.compile(r"(train|val)_\d{5}\.bin")


def is_legacy_data_dir(path: str | Path) -> bool:
    """True when ``path`` is a data directory prepared before cogqa wrote markers: a cogqa-tokens manifest
    and nothing but the shards it lists (so replacing it can lose nothing of the user's)."""
    path = Path(path)
    try:
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        listed = {sh["file"] for split in manifest["splits"].values() for sh in split["shards"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    if manifest.get("format") != "cogqa-tokens":
        return False
    return all(p.name == "manifest.json" or p.name in listed and _SHARD_NAME.fullmatch(p.name) for p in path.iterdir())


def _tokenise(docs, tok, context, counts, emit, bar) -> tuple[np.ndarray, int, int]:
    """Tokenise ``docs`` in batches, EOS after each, emit full chunks; returns (leftover ids, documents, tokens)."""
    buf = np.zeros(0, dtype=np.int64)
    n_docs = n_tokens = 0
    for batch in _batches(docs):
        pieces = [buf]
        for ids in tok.encode_batch(batch):
            pieces.append(np.asarray(ids, dtype=np.int64))
            pieces.append(np.array([tok.eos_id], dtype=np.int64))
        buf = np.concatenate(pieces)
        n_docs += len(batch)
        n_tokens += buf.size - pieces[0].size
        require(
            buf.size == 0 or int(buf.max()) < tok.padded_vocab_size,
            f"tokenizer {tok.name}: produced id {int(buf.max())} >= its padded vocabulary {tok.padded_vocab_size}",
        )
        counts += np.bincount(buf[pieces[0].size :], minlength=tok.padded_vocab_size)
        n_full = buf.size // context
        for k in range(n_full):
            emit(buf[k * context : (k + 1) * context])
        buf = buf[n_full * context :]
        bar.update(len(batch))
    return buf, n_docs, n_tokens


def _prepare_into(
    root, inputs, tok, context, val_fraction, text_field, seed, progress, dtype, shard_tokens
) -> dict[str, Any]:
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    writers = {s: _ShardWriter(root, s, dtype, context, shard_tokens) for s in ("train", "val")}
    held: np.ndarray | None = None  # the first chunk, held back until we know a validation chunk exists
    counts = np.zeros(tok.padded_vocab_size, dtype=np.int64)

    def emit(chunk: np.ndarray) -> None:
        nonlocal held
        if held is None and val_fraction > 0 and writers["val"].chunks == 0 and writers["train"].chunks == 0:
            held = chunk.copy()
            return
        writers["val" if rng.random() < val_fraction else "train"].write(chunk)

    docs = (d for src in inputs for d in iter_documents(str(src), text_field))
    bar = tqdm(desc="tokenising", unit="doc", disable=not progress)
    try:
        buf, n_docs, n_tokens = _tokenise(docs, tok, context, counts, emit, bar)
    except BaseException:
        bar.leave = False  # an error: clear the bar so the one error line stands alone
        raise
    finally:
        bar.close()
    require(n_docs > 0, "inputs: they hold no text (empty files or records); give a corpus with documents")
    n_chunks = writers["train"].chunks + writers["val"].chunks + (held is not None)
    require(
        n_chunks > 0,
        f"inputs: {n_tokens} tokens is shorter than one chunk of {context} tokens; add text or use a smaller --context",
    )
    if held is not None:
        if writers["val"].chunks == 0:
            writers["val"].write(held)
        else:
            writers["train"].write(held)
    require(
        val_fraction == 0 or writers["train"].chunks > 0,
        f"inputs: only {n_chunks} chunk(s) of {context} tokens, none left for training; "
        "add text or use a smaller --context",
    )
    for w in writers.values():
        w.close()
    total = hashlib.sha256()
    for s in ("train", "val"):
        for shard in writers[s].shards:
            total.update(bytes.fromhex(shard["sha256"]))
    p = counts[counts > 0] / counts.sum()
    return {
        "format": "cogqa-tokens",
        "format_version": FORMAT_VERSION,
        "vocab_size": int(tok.vocab_size),
        "padded_vocab_size": int(tok.padded_vocab_size),
        "eos_id": int(tok.eos_id),
        "dtype": dtype.name,
        "context": int(context),
        "documents": int(n_docs),
        "tokens": int(n_tokens),
        "dropped_tokens": int(buf.size),
        "unigram_entropy_nats": float(-(p * np.log(p)).sum()),
        "splits": {
            s: {"chunks": writers[s].chunks, "tokens": writers[s].chunks * context, "shards": writers[s].shards}
            for s in ("train", "val")
        },
        "content_hash": total.hexdigest(),
    }


def unigram_entropy(root: str | Path, split: str = "train") -> float:
    """Entropy of the unigram distribution of ``split``'s tokens, in nats per token.

    The loss of the best model that ignores context; a trained model must go well below it.
    """
    chunks = TokenChunks(root, split)
    require(len(chunks) > 0, f"data: {root} split {split!r} is empty")
    counts = np.zeros(int(chunks.manifest["padded_vocab_size"]), dtype=np.int64)
    for m in chunks._maps:
        counts += np.bincount(np.asarray(m).reshape(-1), minlength=counts.size)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())
