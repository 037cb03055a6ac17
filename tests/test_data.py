"""Tokenizers and data preparation: GPT-2 ids, EOS/chunking/drop-last by hand, shards, inputs, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cogqa.cli import main
from cogqa.data import (
    HEADER_BYTES,
    TokenChunks,
    iter_documents,
    load_manifest,
    offline_corpus,
    prepare,
    read_header,
    unigram_entropy,
)
from cogqa.errors import CogqaError
from cogqa.tokenizer import get_tokenizer, padded_vocab


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("COGQA_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


# ----------------------------------------------------------------------------- tokenizers


def test_gpt2_ids_match_transformers_built_from_the_same_files():
    from transformers import GPT2TokenizerFast

    from cogqa.tokenizer import gpt2_files

    tok = get_tokenizer("gpt2")
    assert tok.encode("Hello world") == [15496, 995]
    assert (tok.vocab_size, tok.padded_vocab_size, tok.eos_id) == (50257, 50304, 50256)
    enc, bpe = gpt2_files()
    vocab = json.loads(enc.read_text(encoding="utf-8"))
    merges = [
        tuple(x.split(" ")) for x in bpe.read_text(encoding="utf-8").split("\n") if x and not x.startswith("#version")
    ]
    ref = GPT2TokenizerFast(vocab=vocab, merges=merges, unk_token="<|endoftext|>", eos_token="<|endoftext|>")
    texts = [
        "Hello world",
        "  spaces  and\ttabs\n\nnew lines",
        "It's we'll they'd 1234567 3.14159",
        "Ünïcödé – “quotes” 日本語 🙂",
        "And God said, Let there be light: and there was light.",
        "",
    ]
    for text in texts:
        assert tok.encode(text) == ref.encode(text), text
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode_batch(texts) == [ref.encode(t) for t in texts]
    # the literal special-token text is plain text, not EOS
    assert 50256 not in tok.encode("a <|endoftext|> b")


def test_byte_tokenizer_and_padding():
    tok = get_tokenizer("bytes")
    assert tok.encode("Hé") == [72, 195, 169]
    assert tok.decode([72, 195, 169, 256]) == "Hé"
    assert (tok.vocab_size, tok.padded_vocab_size, tok.eos_id) == (257, 320, 256)
    assert [padded_vocab(v) for v in (1, 64, 65, 50257)] == [64, 64, 128, 50304]


def test_local_hugging_face_tokenizer_directory(tmp_path):
    from cogqa.hf import write_tokenizer_files

    assert write_tokenizer_files("gpt2", tmp_path)
    tok = get_tokenizer(str(tmp_path))
    assert tok.encode("Hello world") == [15496, 995] and tok.eos_id == 50256 and tok.padded_vocab_size == 50304


def test_unknown_tokenizer_is_one_line():
    with pytest.raises(CogqaError, match="--tokenizer nope: unknown tokenizer"):
        get_tokenizer("nope")


# ----------------------------------------------------------------------------- chunking by hand


def test_eos_concatenate_chunk_and_drop_last_by_hand(tmp_path):
    # three documents of 5, 3 and 6 bytes -> 5+1, 3+1, 6+1 = 17 tokens -> two chunks of 8, 1 token dropped
    src = tmp_path / "docs.jsonl"
    src.write_text("\n".join(json.dumps({"text": t}) for t in ("abcde", "fgh", "ijklmn")) + "\n")
    m = prepare([str(src)], tmp_path / "out", tokenizer="bytes", context=8, val_fraction=0.0, progress=False)
    assert (m["documents"], m["tokens"], m["dropped_tokens"]) == (3, 17, 1)
    assert m["splits"]["train"]["chunks"] == 2 and m["splits"]["val"]["chunks"] == 0
    chunks = TokenChunks(tmp_path / "out", "train")
    E = 256
    expected = [[*b"abcde", E, *b"fg"], [b"h"[0], E, *b"ijklmn"]]
    assert [list(map(int, chunks[i])) for i in range(2)] == expected
    assert chunks.context == 8 and chunks.dtype == np.uint16


def _bytes_data(src, out, context: int = 64, val_fraction: float = 0.1, **extra) -> dict:
    """``prepare`` of one text file ``src`` into ``out``, byte-tokenised, without a progress bar; the manifest."""
    extra = {"progress": False, **extra}
    return prepare([str(src)], out, tokenizer="bytes", context=context, val_fraction=val_fraction, **extra)


def test_validation_split_is_seeded_nonempty_and_disjoint(tmp_path):
    text = offline_corpus("kjv").read_text()[:60_000]
    (tmp_path / "a.txt").write_text(text)
    a, b = _bytes_data(tmp_path / "a.txt", tmp_path / "a"), _bytes_data(tmp_path / "a.txt", tmp_path / "b")
    c = _bytes_data(tmp_path / "a.txt", tmp_path / "c", seed=1)
    assert a["content_hash"] == b["content_hash"] != c["content_hash"]
    n_train, n_val = a["splits"]["train"]["chunks"], a["splits"]["val"]["chunks"]
    assert n_train + n_val == (len(text.encode()) + 1) // 64
    assert 0.05 < n_val / (n_train + n_val) < 0.15
    train = {TokenChunks(tmp_path / "a", "train")[i].tobytes() for i in range(n_train)}
    val = [TokenChunks(tmp_path / "a", "val")[i].tobytes() for i in range(n_val)]
    assert not train.intersection(val)
    # the stream is preserved: train and validation chunks together are the concatenated corpus
    whole = np.frombuffer(text.encode(), dtype=np.uint8).astype(np.int64)
    got = np.sort(np.concatenate([TokenChunks(tmp_path / "a", s).tokens() for s in ("train", "val")]))
    assert np.array_equal(got, np.sort(np.append(whole, 256)[: (n_train + n_val) * 64]))


def test_small_corpus_still_gets_one_validation_chunk(tmp_path):
    (tmp_path / "t.txt").write_text("x" * 300)
    m = _bytes_data(tmp_path / "t.txt", tmp_path / "o", val_fraction=0.01)
    assert m["splits"]["val"]["chunks"] == 1 and m["splits"]["train"]["chunks"] == 3


def test_shards_round_trip_and_split_across_files(tmp_path):
    (tmp_path / "t.txt").write_text("".join(chr(33 + i % 90) for i in range(64 * 10 - 1)))
    _bytes_data(tmp_path / "t.txt", tmp_path / "o", val_fraction=0.0, shard_tokens=64 * 3)
    m = load_manifest(tmp_path / "o")
    shards = m["splits"]["train"]["shards"]
    assert [s["chunks"] for s in shards] == [3, 3, 3, 1]
    for s in shards:
        head = read_header(tmp_path / "o" / s["file"])
        assert head == {"bytes_per_token": 2, "tokens": s["chunks"] * 64, "context": 64}
        assert (tmp_path / "o" / s["file"]).stat().st_size == HEADER_BYTES + 2 * 64 * s["chunks"]
    chunks = TokenChunks(tmp_path / "o")
    flat = chunks.tokens()
    expected = np.array([33 + i % 90 for i in range(64 * 10 - 1)] + [256])
    assert np.array_equal(flat, expected) and np.array_equal(chunks[-1], expected[-64:])
    with pytest.raises(IndexError):
        chunks[10]


def test_truncated_or_foreign_shard_is_refused(tmp_path):
    (tmp_path / "t.txt").write_text("y" * 1000)
    _bytes_data(tmp_path / "t.txt", tmp_path / "o")
    shard = tmp_path / "o" / "train_00000.bin"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(CogqaError, match="truncated"):
        TokenChunks(tmp_path / "o")
    shard.write_bytes(b"not a shard at all" * 10)
    with pytest.raises(CogqaError, match="not a cogqa token shard"):
        TokenChunks(tmp_path / "o")


def test_gpt2_uses_uint16_and_parquet_and_datasets_inputs(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = ["In the beginning God created the heaven and the earth. " * 20, "Hello world " * 50]
    pq.write_table(pa.table({"body": docs}), tmp_path / "d.parquet")
    m = prepare(
        [str(tmp_path / "d.parquet")],
        tmp_path / "p",
        tokenizer="gpt2",
        context=32,
        val_fraction=0.1,
        text_field="body",
        progress=False,
    )
    tok = get_tokenizer("gpt2")
    assert m["dtype"] == "uint16" and m["tokens"] == sum(len(tok.encode(d)) + 1 for d in docs)
    first = (
        TokenChunks(tmp_path / "p", "train").tokens()[:5].tolist()
        + TokenChunks(tmp_path / "p", "val").tokens()[:5].tolist()
    )
    assert set(first) <= set(tok.encode(docs[0]) + tok.encode(docs[1]) + [50256])
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": docs}).save_to_disk(str(tmp_path / "ds"))
    assert list(iter_documents(str(tmp_path / "ds"))) == docs
    m2 = prepare([str(tmp_path / "ds")], tmp_path / "q", tokenizer="gpt2", context=32, val_fraction=0.1, progress=False)
    assert m2["content_hash"] == m["content_hash"]


def test_parquet_binary_text_is_decoded_or_refused(tmp_path):
    """Issue 13: a binary Parquet text column is read as UTF-8, never as Python reprs like "b'...'"; bytes
    that are not UTF-8, or a column that is not text, are refused in one line naming the column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = ["In the beginning", "was the Word"]
    pq.write_table(pa.table({"body": pa.array([d.encode() for d in docs], pa.binary())}), tmp_path / "b.parquet")
    assert list(iter_documents(str(tmp_path / "b.parquet"), "body")) == docs
    pq.write_table(pa.table({"body": pa.array([b"ok", b"\xff\xfe"], pa.binary())}), tmp_path / "bad.parquet")
    with pytest.raises(CogqaError, match=r"column 'body' is binary and row 2 is not UTF-8"):
        list(iter_documents(str(tmp_path / "bad.parquet"), "body"))
    pq.write_table(pa.table({"n": [1, 2]}), tmp_path / "n.parquet")
    with pytest.raises(CogqaError, match=r"column 'n' holds int64, not text"):
        list(iter_documents(str(tmp_path / "n.parquet"), "n"))


def test_offline_corpus_is_the_kjv_by_chapter():
    docs = list(iter_documents("kjv"))
    assert len(docs) == 1189 and docs[0].startswith(
        "Genesis 1\n\n1 In the beginning God created the heaven and the earth."
    )
    assert docs[-1].startswith("Revelation 22")
    path = offline_corpus("kjv")
    assert path.stat().st_size > 4_000_000 and offline_corpus("shakespeare") == path


def test_unigram_entropy_by_hand(tmp_path):
    (tmp_path / "t.txt").write_text("ab" * 63)  # 126 bytes + EOS = one chunk of 127 tokens
    _bytes_data(tmp_path / "t.txt", tmp_path / "o", context=127, val_fraction=0.0)
    p = np.array([63, 63, 1]) / 127
    assert unigram_entropy(tmp_path / "o") == pytest.approx(float(-(p * np.log(p)).sum()), rel=1e-12)


# ----------------------------------------------------------------------------- bad input, CLI


@pytest.mark.parametrize(
    "case", ["missing", "empty", "short", "badjson", "nofield", "context", "fraction", "exists", "binary"]
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, case):
    (tmp_path / "ok.txt").write_text("z" * 500)
    args = {
        "missing": [str(tmp_path / "nope.txt")],
        "empty": [str(tmp_path / "empty.txt")],
        "short": [str(tmp_path / "short.txt")],
        "badjson": [str(tmp_path / "bad.jsonl")],
        "nofield": [str(tmp_path / "nofield.jsonl")],
        "context": [str(tmp_path / "ok.txt"), "--context", "big"],
        "fraction": [str(tmp_path / "ok.txt"), "--val-fraction", "1.5"],
        "exists": [str(tmp_path / "ok.txt")],
        "binary": [str(tmp_path / "bin.txt")],
    }[case]
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "short.txt").write_text("To be, or not to be.")
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{oops\n')
    (tmp_path / "nofield.jsonl").write_text('{"body": "a"}\n')
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00\x81" * 10)
    out = tmp_path / "out"
    if case == "exists":
        out.mkdir()
        (out / "precious.txt").write_text("keep me")
    status = main(
        ["data", "prepare", *args, "--out", str(out), "--tokenizer", "bytes", "--context", "64", "--no-progress"]
        if "--context" not in args
        else ["data", "prepare", *args, "--out", str(out), "--tokenizer", "bytes", "--no-progress"]
    )
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    if case == "exists":
        assert (out / "precious.txt").read_text() == "keep me"
    else:
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")]


def test_cli_prepare_and_info(tmp_path, capsys):
    (tmp_path / "t.txt").write_text(offline_corpus("kjv").read_text()[:20_000])
    assert (
        main(
            [
                "data",
                "prepare",
                str(tmp_path / "t.txt"),
                "--out",
                str(tmp_path / "o"),
                "--tokenizer",
                "bytes",
                "--context",
                "128",
                "--val-fraction",
                "0.1",
                "--no-progress",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "documents        1" in out and "nats/token" in out and "train" in out
    assert main(["data", "info", str(tmp_path / "o"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["context"] == 128 and info["tokenizer"] == "bytes" and info["unigram_entropy_train_nats"] > 2.0
