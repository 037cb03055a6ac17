"""S-NIAH: RULER's three single-needle retrieval tasks (Hsieh et al., 2024), generated and scored here.

=============  ====================================  =============  =========================
task           haystack                              key            value
=============  ====================================  =============  =========================
niah_single_1  the noise sentences, repeated         an adj-noun    a 7-digit number
niah_single_2  essay-like prose                      an adj-noun    a 7-digit number
niah_single_3  essay-like prose                      an adj-noun    a UUID (version 4)
=============  ====================================  =============  =========================

As RULER: the needle "One of the special magic {numbers|uuids} for {key} is: {value}." goes into
the haystack (before the repeated-noise unit, or before the sentence, at ``depth`` percent of the
haystack), keys are drawn from RULER's word set (every adjective-noun pair of the ``wonderwords``
lists: 912 x 6,782 keys), numbers from [10^6, 10^7 - 1], UUIDs from 128 random bits. The
single-needle prompt is RULER's template in its singular form followed by its answer prefix::

    A special magic number is hidden within the following text. Make sure to memorize it. I will
    quiz you about the number afterwards.
    {haystack with needle}
    What is the special magic number for {key} mentioned in the provided text? The special magic
    number for {key} mentioned in the provided text is

Scoring is RULER's ``string_match_all``: 1 if the value appears in the generation (case-insensitive,
control characters replaced), else 0. Differences from RULER, on purpose: the essay haystack is the
offline corpus (the King James Bible as prose: chapter headings and verse numbers removed) instead
of Paul Graham's essays, sentences are split by a regular expression (no NLTK download), the needle
goes at the requested depth in both haystacks (RULER draws the noise position at random), and the
answer budget is the value's own length in tokens plus :data:`ANSWER_SLACK` instead of 128 tokens.
Lengths are tokens of the model's tokenizer (any object with ``encode(text) -> list[int]``): the
whole prompt plus the answer budget fits the context length.
"""

from __future__ import annotations

import random
import re
import uuid
from dataclasses import dataclass
from functools import lru_cache

from .errors import CogqaError, require
from .files import save_figure

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "One of the special magic {type} for {key} is: {value}."
TEMPLATE = (
    "A special magic {type} is hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {type} afterwards.\n{context}\n"
    "What is the special magic {type} for {key} mentioned in the provided text?"
)
ANSWER_PREFIX = " The special magic {type} for {key} mentioned in the provided text is"
#: task -> (haystack, value kind); every task's key is an adjective-noun word.
TASKS = {
    "niah_single_1": ("repeat", "numbers"),
    "niah_single_2": ("essay", "numbers"),
    "niah_single_3": ("essay", "uuids"),
}
ANSWER_SLACK = 4  # tokens generated beyond the value's own (room for ':', a quote, a space)


@dataclass(frozen=True)
class NiahSample:
    """One prompt of ``task``: ``prompt`` text, reference ``answer``, ``key``; ``n_tokens`` of the prompt,
    ``needle_token`` the index of the needle's first token, ``max_new_tokens`` the answer budget (tokens)."""

    task: str
    prompt: str
    answer: str
    key: str
    context: int
    depth: float
    n_tokens: int
    needle_token: int
    max_new_tokens: int


def check_depths(depths) -> list[float]:
    """The depths (percent of the haystack) as floats, or a one-line error if outside [0, 100]."""
    out = []
    for d in depths:
        d = float(d)
        require(
            0.0 <= d <= 100.0, f"--depths: depth {d:g} is outside [0, 100]; give percentages such as 0,25,50,75,100"
        )
        out.append(d)
    return out


def check_tasks(tasks) -> list[str]:
    """The task names, or a one-line error naming the unknown one."""
    tasks = list(tasks)
    require(bool(tasks), f"--tasks: give at least one of {', '.join(TASKS)}")
    for t in tasks:
        require(t in TASKS, f"--tasks: unknown S-NIAH task {t!r}; use {', '.join(TASKS)}")
    return tasks


@lru_cache(maxsize=1)
def key_words() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """RULER's key vocabulary: (adjectives, nouns) of the ``wonderwords`` package, sorted and deduplicated."""
    try:
        from importlib.resources import files

        assets = files("wonderwords") / "assets"
        adjs, nouns = ((assets / f).read_text(encoding="utf-8") for f in ("adjectivelist.txt", "nounlist.txt"))
    except (ImportError, ModuleNotFoundError, FileNotFoundError):
        raise CogqaError("S-NIAH keys come from the wonderwords word lists: pip install wonderwords") from None
    words = [sorted({w.strip() for w in text.splitlines() if w.strip()}) for text in (adjs, nouns)]
    return tuple(words[0]), tuple(words[1])


def make_key(rng: random.Random) -> str:
    """A random RULER key: ``adjective-noun``, uniform over the adjective x noun pairs."""
    adjs, nouns = key_words()
    return f"{rng.choice(adjs)}-{rng.choice(nouns)}"


def make_value(kind: str, rng: random.Random) -> str:
    """A random needle value: ``numbers`` a 7-digit number, ``uuids`` a version-4 UUID."""
    if kind == "numbers":
        return str(rng.randint(10**6, 10**7 - 1))
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    raise CogqaError(f"unknown needle value kind {kind!r}; use numbers or uuids")


def essay_words(text: str) -> list[str]:
    """Words of ``text`` read as prose: Bible-style chapter headings ("Genesis 1") and leading verse numbers
    are dropped, whitespace collapsed (RULER splits its essays into words the same way)."""
    lines = [re.sub(r"^\d+\s+", "", ln.strip()) for ln in text.splitlines()]
    prose = [ln for ln in lines if ln and not re.fullmatch(r"[\w' ]+ \d+", ln)]
    words = " ".join(prose).split()
    require(len(words) > 0, "the essay haystack text holds no words; give a text file with prose")
    return words


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``: split after '.', '!' or '?' followed by whitespace."""
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def haystack_with_needle(kind: str, units: int, needle: str, depth: float, words=None) -> str:
    """The haystack of ``units`` (noise sentences, or essay words) with ``needle`` before the unit (noise) or
    sentence (essay) at ``depth`` percent: noise units are joined by newlines, essay sentences by spaces."""
    if kind == "repeat":
        parts = [NOISE] * units
        parts.insert(int(units * depth / 100), needle)
        return "\n".join(parts)
    require(words is not None, "the essay haystack needs its words")
    sents = split_sentences(" ".join(words[:units]))
    sents.insert(int(len(sents) * depth / 100), needle)
    return " ".join(sents)


def make_sample(tokenizer, task: str, context: int, depth: float, essay=None, seed: int = 0) -> NiahSample:
    """One prompt of ``task`` at ``context`` tokens (prompt + answer budget <= context) with the needle at
    ``depth`` percent of the haystack; ``essay`` is the word list of the essay haystack (:func:`essay_words`)."""
    check_tasks([task])
    depth = check_depths([depth])[0]
    kind, value_kind = TASKS[task]
    require(kind == "repeat" or essay, f"{task}: needs an essay haystack; give its words (essay_words(text))")
    rng = random.Random(f"{seed}-{task}-{context}-{depth}")
    key, value = make_key(rng), make_value(value_kind, rng)
    needle = NEEDLE.format(type=value_kind, key=key, value=value)
    singular = value_kind[:-1]
    budget = len(tokenizer.encode(" " + value)) + ANSWER_SLACK

    def prompt(units: int) -> str:
        hay = haystack_with_needle(kind, units, needle, depth, essay)
        return TEMPLATE.format(type=singular, context=hay, key=key) + ANSWER_PREFIX.format(type=singular, key=key)

    limit = context - budget
    n_min = len(tokenizer.encode(prompt(1)))
    require(
        n_min <= limit,
        f"context {context} tokens is too short for {task}: the prompt alone needs {n_min} tokens "
        f"and the answer {budget}; use at least {n_min + budget} tokens",
    )
    lo, hi = 1, (min(len(essay), context) if kind == "essay" else context)  # a unit costs >= 1 token
    while lo < hi:  # the most units whose prompt fits
        mid = (lo + hi + 1) // 2
        if len(tokenizer.encode(prompt(mid))) <= limit:
            lo = mid
        else:
            hi = mid - 1
    text = prompt(lo)
    n = len(tokenizer.encode(text))
    require(
        kind == "repeat" or lo < len(essay) or n > 0.9 * limit,
        f"{task}: the essay haystack is too short for {context} tokens; give a longer text",
    )
    needle_token = len(tokenizer.encode(text[: text.index(needle)]))
    return NiahSample(task, text, value, key, context, depth, n, needle_token, budget)


def normalize(text: str) -> str:
    """RULER's post-processing of a generation: control characters become newlines, then stripped."""
    return re.sub(r"[\x00-\x1f]", "\n", text.strip()).strip()


def score(prediction: str, reference: str) -> float:
    """RULER ``string_match_all`` for one value: 1.0 if ``reference`` occurs in the (post-processed)
    prediction, case-insensitively, else 0.0."""
    return 1.0 if reference.lower() in normalize(prediction).lower() else 0.0


def run_niah(
    generate_fn, tokenizer, tasks, contexts, depths, essay=None, samples: int = 1, seed: int = 0
) -> list[dict]:
    """Rows {task, context (tokens), depth (%), accuracy (fraction 0..1), samples} from
    ``generate_fn(prompt, max_new_tokens) -> str`` (greedy), ``samples`` prompts per cell."""
    tasks = check_tasks(tasks)
    depths = check_depths(depths)
    require(samples >= 1, f"--samples must be >= 1, got {samples}")
    rows = []
    for task in tasks:
        for T in contexts:
            for d in depths:
                hits = 0.0
                for k in range(samples):
                    s = make_sample(tokenizer, task, T, d, essay, seed=seed * 1000 + k)
                    hits += score(generate_fn(s.prompt, s.max_new_tokens), s.answer)
                rows.append(
                    {"task": task, "context": int(T), "depth": d, "accuracy": hits / samples, "samples": samples}
                )
    return rows


def mean_rows(row_sets: list[list[dict]], keys=("task", "context", "depth")) -> list[dict]:
    """Rows averaged over several sets (e.g. checkpoints) or over what ``keys`` leaves out (e.g. tasks):
    {key..., accuracy (mean fraction), samples (total)}, in first-seen order."""
    cells: dict = {}
    for rows in row_sets:
        for r in rows:
            cell = cells.setdefault(tuple(r[k] for k in keys), {"acc": [], "samples": 0})
            cell["acc"].append(r["accuracy"])
            cell["samples"] += r["samples"]
    return [
        {**dict(zip(keys, k)), "accuracy": sum(c["acc"]) / len(c["acc"]), "samples": c["samples"]}
        for k, c in cells.items()
    ]


def heatmap(rows: list[dict], path, title: str = "S-NIAH accuracy") -> None:
    """Write a depth x context-length accuracy heatmap PNG to ``path`` (atomic); rows of several tasks are
    averaged per cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = mean_rows([rows], keys=("context", "depth"))
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
    ax.set_title(title)
    fig.colorbar(im, label="accuracy (%)")
    save_figure(fig, path, dpi=100)
