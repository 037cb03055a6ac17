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


#: the same tiny model as TrainConfig's ``shape``
TINY_SHAPE = dict(layers=2, hidden_size=64, ffn_size=176, n_heads=4, n_kv_heads=2, head_dim=16)


def train_argv(data: Path, out: Path, *extra: str, shape=TINY_ARGS) -> list[str]:
    """``cogqa train`` arguments: the tiny model (or ``shape``) on ``data`` into ``out``, then ``extra``."""
    return ["train", "--data", str(data), "--out", str(out), *shape, *extra]


def batch_args(steps: int, context: int = 32, micro_batch: int = 8) -> tuple[str, ...]:
    """``--tokens``/``--batch-tokens``/``--micro-batch`` for ``steps`` optimiser steps of one micro-batch of
    ``micro_batch`` sequences of ``context`` tokens each."""
    batch = context * micro_batch
    return ("--tokens", str(batch * steps), "--batch-tokens", str(batch), "--micro-batch", str(micro_batch))


def tiny_config(data: Path, out_dir: Path, *, lr: float, context: int, steps: int, micro_batch: int = 8, **extra):
    """A :class:`cogqa.config.TrainConfig` of the tiny model: ``steps`` optimiser steps of one micro-batch of
    ``micro_batch`` sequences of ``context`` tokens, max LR ``lr``, no progress bar; ``extra`` fields as given."""
    from cogqa.config import OptimConfig, TrainConfig

    batch = context * micro_batch
    return TrainConfig(
        data=str(data),
        out_dir=str(out_dir),
        shape=dict(TINY_SHAPE),
        optim=OptimConfig(lr=lr),
        tokens=batch * steps,
        batch_tokens=batch,
        micro_batch=micro_batch,
        progress=False,
        **extra,
    )


def ideal_hardware(name: str, peak_flops: float, memory_bandwidth: float, memory_bytes: float, **fields):
    """A :class:`cogqa.hardware.Hardware` of ``peak_flops`` FLOP/s, ``memory_bandwidth`` bytes/s and ``memory_bytes``
    bytes with every efficiency 1 and fp32 weights, unless ``fields`` set them otherwise."""
    from cogqa.hardware import Hardware

    ideal = dict(matmul_efficiency=1, attention_efficiency=1, bandwidth_efficiency=1, dtype="fp32")
    return Hardware(name, peak_flops, memory_bandwidth, memory_bytes, **{**ideal, **fields})


def spec_batches(steps: int, context: int = 32, micro_batch: int = 8) -> dict:
    """``tokens``/``batch_tokens``/``micro_batch`` fields (of a SweepSpec or TrainConfig) for ``steps`` optimiser
    steps of one micro-batch of ``micro_batch`` sequences of ``context`` tokens each."""
    batch = context * micro_batch
    return dict(tokens=batch * steps, batch_tokens=batch, micro_batch=micro_batch)


#: One sweep size: 1 layer, d = 32, d_h = 16.
TINY_SIZES = [{"name": "a", "layers": 1, "hidden_size": 32, "head_dim": 16}]


def tiny_spec(data, **fields):
    """A :class:`cogqa.sweep.SweepSpec` on ``data`` (a prepared directory, or a dict of what to prepare): H = (2,1)
    and (2,2) at :data:`TINY_SIZES`, 4 steps of 8 sequences of 32 tokens at max LR 3e-3, 2 validation batches and
    4 position chunks; ``fields`` override any of these."""
    from cogqa.sweep import SweepSpec

    base = dict(
        data=data if isinstance(data, dict) else str(data),
        sizes=TINY_SIZES,
        heads="2:1,2:2",
        lr=3e-3,
        eval_batches=2,
        position_eval_chunks=4,
        name="tiny",
        **spec_batches(4),
    )
    return SweepSpec(**{**base, **fields})
