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


@pytest.mark.slow
def test_trained_checkpoint_through_the_cli(tmp_path, capsys):
    """The issue's end to end: a tiny model trained on the offline corpus, then `cogqa eval niah`
    on its checkpoint with its own (bytes) tokenizer and a haystack of real text: table + heatmap."""
    import json

    from cogqa.cli import main
    from cogqa.data import offline_corpus, prepare
    from cogqa.train import OptimConfig, TrainConfig, train

    text = offline_corpus("kjv").read_text()[:150_000]
    (tmp_path / "kjv.txt").write_text(text)
    prepare([str(tmp_path / "kjv.txt")], tmp_path / "data", tokenizer="bytes", context=128, val_fraction=0.05, progress=False)
    shape = dict(layers=2, hidden_size=64, ffn_size=176, n_heads=4, n_kv_heads=1, head_dim=16)
    result = train(TrainConfig(data=str(tmp_path / "data"), out_dir=str(tmp_path / "run"), shape=shape, optim=OptimConfig(lr=1e-2),
                               tokens=128 * 8 * 120, batch_tokens=128 * 8, micro_batch=8, eval_batches=2, progress=False))
    assert result.final_val_loss < 2.8  # it learned something (unigram entropy of the bytes is ~3.07 nats/token)
    ckpt = sorted((tmp_path / "run" / "checkpoints").glob("step_*"))[-1]
    status = main(["eval", "niah", str(ckpt), "--tokenizer", "bytes", "--contexts", "400,600", "--depths", "0,50,100",
                   "--samples", "2", "--max-new-tokens", "8", "--haystack", f"corpus:{tmp_path / 'kjv.txt'}", "--out", str(tmp_path / "niah")])
    out = capsys.readouterr().out
    assert status == 0 and "accuracy (%)" in out
    rows = json.loads((tmp_path / "niah" / "niah.json").read_text())
    assert [(r["context"], r["depth"]) for r in rows] == [(c, d) for c in (400, 600) for d in (0.0, 50.0, 100.0)]
    assert all(r["samples"] == 2 and 0.0 <= r["accuracy"] <= 1.0 for r in rows)
    assert (tmp_path / "niah" / "niah_heatmap.png").stat().st_size > 1000
