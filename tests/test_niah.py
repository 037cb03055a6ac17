"""S-NIAH as RULER's niah_single_1/2/3: prompts, keys, values, lengths, depths, scoring; a model that retrieves
(a hand-built oracle) scores 100 %, models that cannot score 0 %."""

import re

import pytest

from cogqa.errors import CogqaError
from cogqa.niah import (
    ANSWER_PREFIX,
    NOISE,
    TASKS,
    check_depths,
    essay_words,
    key_words,
    make_sample,
    mean_rows,
    normalize,
    run_niah,
    score,
)

pytest.importorskip("wonderwords")

ESSAY_TEXT = "Genesis 1\n\n" + "\n".join(
    f"{i} And the {w} said, let there be light: and there was light. The {w} rested."
    for i, w in enumerate(["river", "hill", "lamp", "stone", "field", "cloud", "tree", "bird"] * 60, start=1)
)


class ByteTok:
    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


def oracle(prompt, max_new_tokens):
    """Retrieves: reads the queried key from the question, finds that key's needle, answers its value."""
    key = re.findall(r"for (\S+) mentioned in the provided text", prompt)[-1]
    m = re.search(r"for " + re.escape(key) + r" is: (\S+)\.", prompt)
    return " " + m.group(1) + "."


def test_essay_words_read_the_bible_as_prose():
    words = essay_words(ESSAY_TEXT)
    assert words[:5] == ["And", "the", "river", "said,", "let"] and "Genesis" not in words and "1" not in words


def test_keys_come_from_ruler_word_set():
    adjs, nouns = key_words()
    assert len(adjs) > 900 and len(nouns) > 6000  # 912 x 6,782 RULER keys


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("depth", [0, 50, 100])
def test_prompt_follows_ruler(task, depth):
    tok = ByteTok()
    s = make_sample(tok, task, 1536, depth, essay_words(ESSAY_TEXT))
    kind, value_kind = TASKS[task]
    assert s.n_tokens + s.max_new_tokens <= 1536 and s.n_tokens > 1536 - s.max_new_tokens - 120  # filled
    assert s.max_new_tokens == len(tok.encode(" " + s.answer)) + 4
    singular = value_kind[:-1]
    assert s.prompt.startswith(
        f"A special magic {singular} is hidden within the following text. Make sure to "
        f"memorize it. I will quiz you about the {singular} afterwards.\n"
    )
    assert s.prompt.endswith(
        f"\nWhat is the special magic {singular} for {s.key} mentioned in the provided text?"
        + ANSWER_PREFIX.format(type=singular, key=s.key)
    )
    assert f"One of the special magic {value_kind} for {s.key} is: {s.answer}." in s.prompt
    assert re.fullmatch(r"[a-z-]+-[a-z-]+", s.key) and s.key.split("-")[-1] in key_words()[1]
    if value_kind == "numbers":
        assert re.fullmatch(r"[1-9]\d{6}", s.answer)
    else:
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", s.answer)
    assert (NOISE in s.prompt) == (kind == "repeat")
    head = s.prompt.index("\n") + 1
    tail = s.prompt.index("\nWhat is the special")
    needle = len(f"One of the special magic {value_kind} for {s.key} is: {s.answer}.") + 1
    # the needle sits at the depth of the haystack, to within one haystack unit (a noise line or a sentence)
    assert abs((s.needle_token - head) - depth / 100 * (tail - head - needle)) <= len(NOISE) + 1


def test_retrieving_model_scores_full_and_others_zero():
    essay = essay_words(ESSAY_TEXT)
    kw = dict(tasks=list(TASKS), contexts=[512, 1024], depths=[0, 50, 100], essay=essay, samples=2)
    rows = run_niah(oracle, ByteTok(), **kw)
    assert len(rows) == 3 * 2 * 3 and all(r["accuracy"] == 1.0 and r["samples"] == 2 for r in rows)
    assert all(r["accuracy"] == 0.0 for r in run_niah(lambda p, n: " 1234567.", ByteTok(), **kw))
    truncated = run_niah(lambda p, n: oracle(p, n)[: n - 5], ByteTok(), **kw)  # cut short of the budget
    assert all(r["accuracy"] == 0.0 for r in truncated)


def test_scoring_rules_and_averages():
    assert score("  The Answer is 1234567.", "1234567") == 1.0
    assert score("ABC-def\x00", "abc-DEF") == 1.0
    assert score("123456", "1234567") == 0.0
    assert normalize(" a\tb \n") == "a\nb"
    rows = [
        {"task": "a", "context": 8, "depth": 0.0, "accuracy": 1.0, "samples": 2},
        {"task": "b", "context": 8, "depth": 0.0, "accuracy": 0.0, "samples": 2},
    ]
    assert mean_rows([rows], keys=("context",)) == [{"context": 8, "accuracy": 0.5, "samples": 4}]
    assert mean_rows([rows, rows])[0]["samples"] == 4


def test_bad_input():
    with pytest.raises(CogqaError, match="outside"):
        check_depths([101])
    with pytest.raises(CogqaError, match="unknown S-NIAH task"):
        make_sample(ByteTok(), "niah_multikey_1", 512, 50)
    with pytest.raises(CogqaError, match="too short"):
        make_sample(ByteTok(), "niah_single_1", 200, 50)
    with pytest.raises(CogqaError, match="essay"):
        make_sample(ByteTok(), "niah_single_2", 512, 50)
