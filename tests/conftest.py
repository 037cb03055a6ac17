"""Fixtures and constants shared by the trainer, sweep, resume and DDP tests (import constants with
``from conftest import TINY_ARGS``)."""

from __future__ import annotations

from pathlib import Path

import pytest

#: CLI flags of the tiny explicit shape the trainer tests use: 2 layers, d = 64, d_ff = 176, H = (4, 2), d_h = 16.
TINY_ARGS = ("--layers", "2", "--hidden", "64", "--ffn", "176", "--heads", "4", "--kv-heads", "2", "--head-dim", "16")


@pytest.fixture
def prepared():
    """A factory ``prepared(tmp_path, context=64, n_bytes=120_000, name="data") -> Path``: the first
    ``n_bytes`` of the offline corpus (the KJV), byte-tokenised into ``context``-token chunks with a
    10 % validation share, in ``tmp_path / name`` (skips when cogqa.data or torch is missing)."""
    data = pytest.importorskip("cogqa.data")
    pytest.importorskip("torch")

    def make(tmp_path: Path, context: int = 64, n_bytes: int = 120_000, name: str = "data") -> Path:
        text = Path(data.offline_corpus("kjv")).read_bytes()[:n_bytes].decode("utf-8", errors="ignore")
        src = tmp_path / f"{name}.txt"
        src.write_text(text)
        out = tmp_path / name
        data.prepare([str(src)], str(out), tokenizer="bytes", context=context, val_fraction=0.1, progress=False)
        return out

    return make
