import re

import pytest

from cogqa.errors import CogqaError
from cogqa.niah import NEEDLE, TEMPLATE, check_depths, make_sample, normalize, run_niah, score


class ByteTok:
    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


@pytest.mark.parametrize("depth", [0, 25, 50, 75, 100])
@pytest.mark.parametrize("needle", ["words", "numbers", "uuids"])
def test_needle_at_depth_and_fits(depth, needle):
    tok = ByteTok()
    s = make_sample(tok, 2048, depth, needle=needle, max_new_tokens=16)
    ids = tok.encode(s.prompt)
    assert len(ids) <= 2048 - 16 and len(ids) > 0.95 * (2048 - 16)
    # the needle's first token sits at the requested depth of the haystack, within ±1 % of the context
    assert tok.decode(ids[s.needle_token:s.needle_token + 12]) == " One of the "
    head = len(tok.encode(TEMPLATE.format(type=needle)))
    needle_len = len(tok.encode(" " + NEEDLE.format(type=needle, key="k", value=s.answer) + " ")) - 1 + len(
        re.search(r"for (\S+) is:", s.prompt).group(1))
    tail_start = s.prompt.index("\nWhat is the special")
    hay = tail_start - head - needle_len
    expected = head + depth / 100 * hay
    assert abs(s.needle_token - expected) <= 0.01 * 2048
    assert s.answer in s.prompt


def test_scoring_rules():
    assert score("  The Answer is APPLE-river.", "apple-river") == 1.0
    assert score("apple\n river", "apple river") == 1.0
    assert score("apple", "apple-river") == 0.0
    assert normalize("  A \t B\n") == "a b"


def test_cheating_and_constant_models():
    tok = ByteTok()

    def cheat(prompt, n):
        i = prompt.index("is: ") + 4
        return prompt[i:prompt.index(".", i)]

    rows = run_niah(cheat, tok, [512, 1024], [0, 50, 100], needle="numbers", samples=2)
    assert all(r["accuracy"] == 1.0 for r in rows) and len(rows) == 6
    rows = run_niah(lambda p, n: "nothing", tok, [512], [0, 50], samples=2)
    assert all(r["accuracy"] == 0.0 for r in rows)


def test_bad_input():
    with pytest.raises(CogqaError, match="outside"):
        check_depths([101])
    with pytest.raises(CogqaError, match="needle"):
        make_sample(ByteTok(), 512, 50, needle="emojis")
    with pytest.raises(CogqaError, match="haystack"):
        make_sample(ByteTok(), 512, 50, haystack="web")


def test_end_to_end_tiny_model_table(tmp_path):
    from cogqa.cli.evaluate import make_generate_fn
    from cogqa.model import GQADecoder
    from cogqa.niah import heatmap
    from cogqa.shapes import ModelShape
    shape = ModelShape(layers=1, hidden_size=64, ffn_size=128, n_heads=4, n_kv_heads=1, head_dim=16, vocab_size=256)
    model = GQADecoder(shape, max_seq_len=1024)
    model.init_weights(seed=0)
    rows = run_niah(make_generate_fn(model, ByteTok()), ByteTok(), [512, 1024], [0, 100], samples=1, max_new_tokens=4)
    assert [(r["context"], r["depth"]) for r in rows] == [(512, 0.0), (512, 100.0), (1024, 0.0), (1024, 100.0)]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    heatmap(rows, tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 0
