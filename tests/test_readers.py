"""Typed readers (issue 13): every JSON/YAML file cogqa reads gives one short line naming the file and the
field for a wrong type, a huge integer, deep nesting, NaN, non-UTF-8 bytes or a YAML alias bomb."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cogqa.errors import CogqaError
from cogqa.readers import field, parse_json, parse_yaml, read_json_object, read_yaml_or_json, short

LLAMA = json.loads((Path(__file__).parent / "data" / "llama-3.2-1b-config.json").read_text())

#: A 600-byte-class YAML alias bomb: 9^9 (387 million) leaves once expanded.
BOMB = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
)


def _one_line(exc: pytest.ExceptionInfo, limit: int = 300) -> str:
    text = str(exc.value)
    assert "\n" not in text and len(text) <= limit, text
    return text


@pytest.mark.parametrize(
    "text, needle",
    [
        ("[" * 100_000 + "]" * 100_000, "nested"),
        ("[" * 100 + "]" * 100, "nested deeper than 64"),
        ('{"a": 1' + "0" * 5000 + "}", "integer of 5001 digits"),
        ('{"a": NaN}', "NaN"),
        ('{"a": -Infinity}', "-Infinity"),
        ('{"a": 1', "not valid JSON"),
        (b"\xff\xfe\x00\x01", "not a UTF-8"),
    ],
)
def test_parse_json_refuses_in_one_line(text, needle):
    with pytest.raises(CogqaError, match=needle) as info:
        parse_json(text, "x.json")
    assert _one_line(info).startswith("x.json: ")


def test_yaml_alias_bomb_refused_before_expansion_and_short(monkeypatch):
    import yaml

    def expanded(*args, **kwargs):
        raise AssertionError("the alias bomb reached construction (it would expand to gigabytes)")

    monkeypatch.setattr(yaml.SafeLoader, "construct_document", expanded)
    assert len(BOMB) < 700
    with pytest.raises(CogqaError, match="aliases") as info:
        parse_yaml(BOMB, "spec.yaml")
    _one_line(info, 120)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("a: [" + ",".join(["1"] * 200_001) + "]", "YAML nodes"),
        ("a: 1" + "0" * 40, "digits"),
        ("a: .nan", "not a number"),
        ("a: [1, 2", "not valid YAML at line"),
        ("a: !!python/object:os.system x", "not valid YAML"),
    ],
)
def test_parse_yaml_refuses_in_one_line(text, needle):
    with pytest.raises(CogqaError, match=needle) as info:
        parse_yaml(text, "spec.yaml")
    _one_line(info)


@pytest.mark.parametrize(
    "value, kind, needle",
    [
        (None, "int", "must be a whole number, got null"),
        ("3", "int", "got a string"),
        ([3], "number", "got a list"),
        ({"a": 1}, "str", "got an object"),
        (True, "int", "got a boolean"),
        (float("nan"), "number", "must be a number"),
        (5, "int", "between 0 and 4"),
        (list(range(10**5)), "dict", "got a list"),
    ],
)
def test_field_names_file_and_field(value, kind, needle):
    with pytest.raises(CogqaError, match=needle) as info:
        field({"k": value}, "k", kind, "f.json", high=4 if value == 5 else None, low=0 if value == 5 else None)
    assert _one_line(info).startswith("f.json: field 'k'")


def test_field_defaults_and_missing():
    assert field({}, "k", "int", "f.json", default=7) == 7
    assert field({"k": None}, "k", "int", "f.json", default=7) == 7
    with pytest.raises(CogqaError, match="missing field 'k'"):
        field({}, "k", "int", "f.json")


def test_short_never_expands():
    huge = [[list(range(1000))] * 1000] * 1000  # 1e9 elements by reference
    assert len(short(huge)) <= 60


# ---------------------------------------------------------------- every reader, one table of hostile files


def _hf(tmp_path: Path, **changes):
    from cogqa.shapes import shape_from_hf_config

    p = tmp_path / "config.json"
    p.write_text(json.dumps({**LLAMA, **changes}))
    return shape_from_hf_config(p)


def _spec(tmp_path: Path, text: str, suffix: str = ".yaml"):
    from cogqa.sweep import load_spec

    p = tmp_path / f"spec{suffix}"
    p.write_text(text)
    return load_spec(p)


def _laws(tmp_path: Path, text: str):
    from cogqa.laws import load_laws

    p = tmp_path / "laws.json"
    p.write_text(text)
    return load_laws(p)


def _run_json(tmp_path: Path, info: dict):
    from cogqa.sweep.rundir import read_run_info

    good = {"id": "a", "size": {"name": "a"}, "n_heads": 2, "n_kv_heads": 1, "seed": 0}
    good["train"] = {"out_dir": "runs/a", "data": "d"}
    (tmp_path / "run.json").write_text(json.dumps({**good, **info}))
    return read_run_info(tmp_path)


HOSTILE = [
    ("hf num_key_value_heads 0", lambda t: _hf(t, num_key_value_heads=0), "num_key_value_heads"),
    ("hf num_key_value_heads str", lambda t: _hf(t, num_key_value_heads="8"), "num_key_value_heads"),
    ("hf hidden_size null", lambda t: _hf(t, hidden_size=None), "hidden_size"),
    ("hf hidden_size huge", lambda t: _hf(t, hidden_size=10**12), "hidden_size must be between 1 and"),
    ("hf hidden_size 31 digits", lambda t: _hf(t, hidden_size=10**30), "integer of 31 digits"),
    ("hf rope_theta list", lambda t: _hf(t, rope_theta=[1]), "rope_theta"),
    ("hf rms_norm_eps str", lambda t: _hf(t, rms_norm_eps="x"), "rms_norm_eps"),
    ("hf tie_word_embeddings str", lambda t: _hf(t, tie_word_embeddings="yes"), "tie_word_embeddings"),
    ("hf rope_scaling str", lambda t: _hf(t, rope_scaling="x"), "rope_scaling"),
    ("hf text_config list", lambda t: _hf(t, model_type=None, text_config=[1]), "text_config"),
    ("hf model_type dict", lambda t: _hf(t, model_type={"a": 1}), "model_type"),
    ("hf sliding_window str", lambda t: _hf(t, model_type="mistral", sliding_window="4k"), "sliding_window"),
    ("spec yaml bomb", lambda t: _spec(t, BOMB), "aliases"),
    ("spec yaml list", lambda t: _spec(t, "- 1\n- 2\n"), "mapping"),
    ("spec json deep", lambda t: _spec(t, "[" * 1000 + "]" * 1000, ".json"), "nested"),
    ("spec json bigint", lambda t: _spec(t, '{"tokens": 1' + "0" * 400 + "}", ".json"), "digits"),
    ("laws deep", lambda t: _laws(t, "[" * 100_000 + "]" * 100_000), "nested"),
    ("laws bigint", lambda t: _laws(t, '{"laws": [{"a": 1' + "0" * 5000 + "}]}"), "digits"),
    ("laws NaN", lambda t: _laws(t, '{"laws": [{"a": NaN}]}'), "NaN"),
    ("run.json n_heads str", lambda t: _run_json(t, {"n_heads": "2"}), "n_heads"),
    ("run.json size null", lambda t: _run_json(t, {"size": None}), "size"),
    ("run.json train list", lambda t: _run_json(t, {"train": [1]}), "train"),
    ("run.json seed negative", lambda t: _run_json(t, {"seed": -1}), "seed"),
]


@pytest.mark.parametrize("name, call, needle", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_every_reader_one_line_naming_the_field(tmp_path, name, call, needle):
    with pytest.raises(CogqaError, match=needle) as info:
        call(tmp_path)
    _one_line(info)


def test_read_helpers_on_files(tmp_path):
    (tmp_path / "a.json").write_text('{"x": 1}')
    (tmp_path / "b.yaml").write_text("x: 1\n")
    (tmp_path / "c.json").write_text("[1]")
    assert read_json_object(tmp_path / "a.json") == {"x": 1}
    assert read_yaml_or_json(tmp_path / "b.yaml") == {"x": 1}
    with pytest.raises(CogqaError, match="expected a JSON object at the top level, got a list"):
        read_json_object(tmp_path / "c.json")
    with pytest.raises(CogqaError, match="no such file"):
        read_json_object(tmp_path / "missing.json")
