"""RULER-style single-needle retrieval (S-NIAH): task generation and scoring, written here.

A needle "One of the special magic {type} for {key} is: {value}." is placed at a relative
depth (percent of the haystack) inside a haystack of repeated noise sentences or real text;
the prompt ends with the question and an answer prefix. Lengths are measured in tokens of the
model's own tokenizer (any object with ``encode(text) -> list[int]`` and ``decode(ids)``).
"""

from __future__ import annotations

import random
import re
import uuid
from dataclasses import dataclass

from .errors import CogqaError, require
from .files import save_figure

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE_TYPES = {"words": "words", "numbers": "numbers", "uuids": "uuids"}
HAYSTACK_TYPES = ("noise", "corpus")
_WORDS = ("apple", "river", "falcon", "marble", "violet", "thunder", "copper", "lantern", "meadow", "orbit",
          "pepper", "quartz", "saddle", "tunnel", "walnut", "zephyr", "harbor", "glacier", "ember", "cobalt")
_KEYS = ("adjoining-bat", "silent-oak", "crimson-fox", "hollow-reed", "brisk-owl", "gentle-pine", "amber-cloud")
TEMPLATE = "Some special magic {type} are hidden within the following text. Make sure to memorize it. I will quiz you about the {type} afterwards.\n"
NEEDLE = "One of the special magic {type} for {key} is: {value}."
QUERY = "\nWhat is the special magic {type} for {key} mentioned in the provided text?"
ANSWER_PREFIX = " The special magic {type} for {key} mentioned in the provided text is"


@dataclass(frozen=True)
class NiahSample:
    """One prompt: ``prompt`` text, reference ``answer``, ``n_tokens`` of the prompt, the needle's first token index."""

    prompt: str
    answer: str
    context: int
    depth: float
    n_tokens: int
    needle_token: int


def check_depths(depths) -> list[float]:
    """The depths (percent of the haystack) as floats, or a one-line error if outside [0, 100]."""
    out = []
    for d in depths:
        d = float(d)
        require(0.0 <= d <= 100.0, f"--depths: depth {d:g} is outside [0, 100]; give percentages such as 0,25,50,75,100")
        out.append(d)
    return out


def make_value(kind: str, rng: random.Random) -> str:
    """A random needle value of ``kind`` ('words', 'numbers' or 'uuids')."""
    if kind == "words":
        return f"{rng.choice(_WORDS)}-{rng.choice(_WORDS)}"
    if kind == "numbers":
        return str(rng.randint(1_000_000, 9_999_999))
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    raise CogqaError(f"--needle: unknown needle type {kind!r}; use one of words, numbers, uuids")


def haystack_unit(kind: str, corpus_text: str | None = None) -> str:
    """The text the haystack repeats: noise sentences, or the given corpus text."""
    if kind == "noise":
        return NOISE + " "
    if kind == "corpus":
        require(bool(corpus_text and corpus_text.strip()), "--haystack corpus: the corpus text is empty; give corpus:PATH to a text file")
        return corpus_text
    raise CogqaError(f"--haystack: unknown haystack type {kind!r}; use noise, corpus or corpus:PATH")


def _fill(tokenizer, unit: str, n_tokens: int) -> list[int]:
    ids = tokenizer.encode(unit)
    require(len(ids) > 0, "the haystack text encodes to no tokens")
    reps = n_tokens // len(ids) + 1
    return (ids * reps)[:n_tokens]


def make_sample(tokenizer, context: int, depth: float, needle: str = "words", haystack: str = "noise",
                corpus_text: str | None = None, seed: int = 0, max_new_tokens: int = 0) -> NiahSample:
    """One S-NIAH prompt of at most ``context - max_new_tokens`` tokens with the needle at ``depth`` percent."""
    depth = check_depths([depth])[0]
    rng = random.Random(f"{seed}-{context}-{depth}-{needle}")
    value = make_value(needle, rng)
    key = rng.choice(_KEYS)
    kind = NEEDLE_TYPES[needle]
    head = tokenizer.encode(TEMPLATE.format(type=kind))
    needle_ids = tokenizer.encode(" " + NEEDLE.format(type=kind, key=key, value=value) + " ")
    tail = tokenizer.encode(QUERY.format(type=kind, key=key) + ANSWER_PREFIX.format(type=kind, key=key))
    budget = context - max_new_tokens - len(head) - len(needle_ids) - len(tail)
    require(budget >= 1, f"context {context} tokens is too short for the needle task; use at least {context - budget + 1} tokens")
    # Token-level haystack so lengths are exact; decode/encode drift is trimmed below.
    hay = _fill(tokenizer, haystack_unit(haystack, corpus_text), budget)
    for _ in range(8):
        cut = int(round(len(hay) * depth / 100.0))
        ids = head + hay[:cut] + needle_ids + hay[cut:] + tail
        prompt = tokenizer.decode(ids)
        n = len(tokenizer.encode(prompt))
        if n <= context - max_new_tokens:
            break
        hay = hay[: max(1, len(hay) - (n - (context - max_new_tokens)) - 1)]
    else:
        raise CogqaError(f"could not fit the prompt into {context} tokens with this tokenizer")
    return NiahSample(prompt, value, context, depth, n, len(head) + cut)


def normalize(text: str) -> str:
    """Lower-case, collapse whitespace (RULER's string-match normalisation)."""
    return re.sub(r"\s+", " ", text.strip().lower())


def score(prediction: str, reference: str) -> float:
    """1.0 if the reference appears in the prediction (case/whitespace-normalised, RULER string_match_all), else 0.0."""
    return 1.0 if normalize(reference) in normalize(prediction) else 0.0


def run_niah(generate_fn, tokenizer, contexts, depths, needle="words", haystack="noise", corpus_text=None,
             samples: int = 1, max_new_tokens: int = 16, seed: int = 0) -> list[dict]:
    """Rows {context, depth, accuracy (fraction 0..1), samples} from ``generate_fn(prompt, max_new_tokens) -> str``."""
    depths = check_depths(depths)
    require(samples >= 1, f"--samples must be >= 1, got {samples}")
    rows = []
    for T in contexts:
        for d in depths:
            hits = 0.0
            for k in range(samples):
                s = make_sample(tokenizer, T, d, needle, haystack, corpus_text, seed=seed * 1000 + k,
                                max_new_tokens=max_new_tokens)
                hits += score(generate_fn(s.prompt, max_new_tokens), s.answer)
            rows.append({"context": int(T), "depth": d, "accuracy": hits / samples, "samples": samples})
    return rows


def heatmap(rows: list[dict], path) -> None:
    """Write a depth x context-length accuracy heatmap PNG to ``path`` (atomic)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    ctxs = sorted({r["context"] for r in rows})
    deps = sorted({r["depth"] for r in rows})
    grid = np.full((len(deps), len(ctxs)), np.nan)
    for r in rows:
        grid[deps.index(r["depth"]), ctxs.index(r["context"])] = r["accuracy"] * 100
    fig, ax = plt.subplots(figsize=(1.2 * len(ctxs) + 2, 0.5 * len(deps) + 2))
    im = ax.imshow(grid, vmin=0, vmax=100, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(ctxs)), [str(c) for c in ctxs])
    ax.set_yticks(range(len(deps)), [f"{d:g}" for d in deps])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth (%)")
    fig.colorbar(im, label="accuracy (%)")
    save_figure(fig, path, dpi=100)
