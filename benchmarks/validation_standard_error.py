"""How many validation chunks give a standard error of the mean loss <= 0.002 nats/token?

Trains two tiny models (H = (4,1) and (4,4)) on the offline corpus (King James Bible, byte tokens,
chunks of 1,024 tokens; GPT-2 tokens train ~50x slower on a CPU), evaluates every validation chunk
with cogqa.evaluate.evaluate_chunks and
prints: the spread of per-chunk mean losses, the standard error of each model's mean, the spread
of the per-chunk loss *difference* between the two models (the paired error, which is what
separates models evaluated on the same chunks), and the chunks each needs for 0.002 nats/token.
Measured (2026-11-28, 400K training tokens, 428 chunks): per-chunk std 0.058 and 0.069 nats/token
(831 and 1,175 chunks for SE <= 0.002), paired std 0.028 (201 chunks).
A statistic, not a timing; a few minutes on 2 CPU cores.
Run: .venv/bin/python benchmarks/validation_standard_error.py
"""

import sys
import tempfile
from pathlib import Path

from cogqa.checkpoint import list_checkpoints, load_model
from cogqa.data import TokenChunks, prepare
from cogqa.evaluate import chunks_for_standard_error, evaluate_chunks, mean_and_standard_error, paired_standard_error
from cogqa.train import OptimConfig, TrainConfig, train

TARGET = 0.002  # nats/token
CONTEXT = 1024


def main(tokens: int = 400_000) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="cogqa-se-"))
    prepare(["kjv"], tmp / "data", tokenizer="bytes", context=CONTEXT, val_fraction=0.1, progress=False)
    val = TokenChunks(tmp / "data", split="val")
    per_chunk = {}
    for nh, nkv in ((4, 1), (4, 4)):
        shape = dict(layers=2, hidden_size=64, ffn_size=176, n_heads=nh, n_kv_heads=nkv, head_dim=16)
        out = tmp / f"run_{nh}_{nkv}"
        train(
            TrainConfig(
                data=str(tmp / "data"),
                out_dir=str(out),
                shape=shape,
                optim=OptimConfig(lr=3e-3),
                tokens=tokens,
                batch_tokens=8 * CONTEXT,
                micro_batch=4,
                progress=False,
            )
        )
        model = load_model(list_checkpoints(out)[-1], max_seq_len=CONTEXT)
        per_chunk[(nh, nkv)] = evaluate_chunks(model, val, max_chunks=len(val), batch=4).chunk
    print(f"{len(val)} validation chunks of {CONTEXT} tokens (King James Bible, byte tokens)")
    for h, c in per_chunk.items():
        m, se = mean_and_standard_error(c)
        print(
            f"H={h}: mean {m:.4f} nats/token, per-chunk std {c.std(ddof=1):.4f} nats/token, standard error {se:.4f}; "
            f"SE <= {TARGET} needs {chunks_for_standard_error(c.std(ddof=1), TARGET):,} chunks"
        )
    d = per_chunk[(4, 1)] - per_chunk[(4, 4)]
    m, se = paired_standard_error(per_chunk[(4, 1)], per_chunk[(4, 4)])
    print(
        f"paired difference: mean {m:+.4f} nats/token, per-chunk std {d.std(ddof=1):.4f}, standard error {se:.4f}; "
        f"SE <= {TARGET} needs {chunks_for_standard_error(d.std(ddof=1), TARGET):,} chunks"
    )


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
