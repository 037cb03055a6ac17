"""One parser for head configurations: the canonical 8,1 and its aliases, lists, and one-line errors."""

import pytest

from cogqa.errors import CogqaError
from cogqa.units import fmt_heads, parse_head_config, parse_head_configs


@pytest.mark.parametrize("text", ["8,1", "8:1", "(8,1)", "(8, 1)", "H=(8,1)", " h = ( 8 , 1 ) ", "8/1"])
def test_every_spelling_of_one_head_configuration(text):
    assert parse_head_config(text) == (8, 1) and fmt_heads(8, 1) == "8,1"


def test_lists_and_pairs():
    want = [(8, 1), (16, 4)]
    for text in ("8,1 16,4", "8:1,16:4", "(8,1),(16,4)", "H=(8,1); H=(16,4)", "8,1,16,4"):
        assert parse_head_configs(text) == want, text
    assert parse_head_config([32, 8]) == (32, 8)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("eight", "unknown head configuration 'eight'"),
        ("8:3", "must divide"),
        ("4,8", "n_kv_heads > n_heads"),
        ("8,1 x", "'x'"),
        ("", "at least one"),
    ],
)
def test_bad_head_configurations_are_one_line_errors(text, needle):
    with pytest.raises(CogqaError, match="^--heads: ") as err:
        parse_head_configs(text)
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("text", ["1e24", str(2**40 + 1), "1048577M", 2**41])
def test_absurd_context_refused_with_range(text):
    from cogqa.units import parse_context

    with pytest.raises(CogqaError, match=r"2\*\*40"):
        parse_context(text)


def test_absurd_count_refused():
    from cogqa.units import parse_count

    with pytest.raises(CogqaError, match="1e30"):
        parse_count("1e31", "--train-tokens")
    assert parse_count("1e25", "--train-flops") == 1e25  # a training budget in FLOPs is fine


@pytest.mark.parametrize("text", ["99999,1", "8," + "9" * 5000, "1" * 5000 + ",1"])
def test_absurd_head_counts_refused(text):
    with pytest.raises(CogqaError, match="between 1 and 16,384") as info:
        parse_head_config(text)
    assert len(str(info.value)) < 200
    with pytest.raises(CogqaError, match="between 1 and 16,384"):
        parse_head_configs(text)


def test_context_dist_file_not_text(tmp_path):
    from cogqa.units import parse_length_distribution

    p = tmp_path / "d.csv"
    p.write_bytes(b"\xff\xfe1k,5\n")
    with pytest.raises(CogqaError, match="not a UTF-8 text file"):
        parse_length_distribution(str(p))
    p.write_text("1k,5\n1e24,1\n")
    with pytest.raises(CogqaError, match=r"2\*\*40"):
        parse_length_distribution(str(p))
