"""The output-directory policy (cogqa.files) and `cogqa data verify` on good and old directories."""

from __future__ import annotations

import json
import os

import pytest

from cogqa.cli import main
from cogqa.errors import CogqaError
from cogqa.files import MARKER, check_output_dir, clean_stale_temps, read_marker, write_output_dir


def _build(text):
    def build(tmp):
        (tmp / "out.txt").write_text(text)

    return build


def test_new_dir_gets_marker_and_content(tmp_path):
    out = write_output_dir(tmp_path / "o", "test", _build("a"))
    assert (out / "out.txt").read_text() == "a" and read_marker(out)["command"] == "test"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_own_output_is_replaced_whole_only_with_overwrite(tmp_path):
    out = write_output_dir(tmp_path / "o", "test", _build("a"))
    (out / "stale.txt").write_text("from the old run")
    with pytest.raises(CogqaError, match="--overwrite"):
        write_output_dir(out, "test", _build("b"))
    write_output_dir(out, "test", _build("b"), overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "out.txt"] and (out / "out.txt").read_text() == "b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_user_dirs_files_and_inputs_are_refused(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "manifest.json").write_text("{}")
    with pytest.raises(CogqaError, match="did not write"):
        check_output_dir(user, "test", overwrite=True)
    (tmp_path / "f").write_text("x")
    with pytest.raises(CogqaError, match="not a directory"):
        check_output_dir(tmp_path / "f", "test", overwrite=True)
    with pytest.raises(CogqaError, match="overlaps the input"):
        check_output_dir(tmp_path / "ck" / "sub", "test", overwrite=True, inputs=(tmp_path / "ck",))
    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty", "test", overwrite=False)


def test_failed_build_leaves_nothing_and_keeps_the_old_output(tmp_path):
    out = write_output_dir(tmp_path / "o", "test", _build("a"))

    def boom(tmp):
        (tmp / "half").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_output_dir(out, "test", boom, overwrite=True)
    assert (out / "out.txt").read_text() == "a" and sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_temps_of_dead_processes_are_cleaned(tmp_path):
    dead = tmp_path / ".o.cogqa-tmp-999999999-abc"
    alive = tmp_path / f".o.cogqa-tmp-{os.getpid()}-abc"
    other = tmp_path / ".o.tmp-user"
    for d in (dead, alive, other):
        d.mkdir()
    assert clean_stale_temps(tmp_path / "o") == [dead]
    assert not dead.exists() and alive.exists() and other.exists()


def test_prepare_overwrites_legacy_data_dir_but_not_a_user_dir(tmp_path, prepared, capsys):
    data = prepared(tmp_path, n_bytes=20_000)
    (data / MARKER).unlink()  # as written by an older cogqa
    src = str(tmp_path / "data.txt")
    argv = ["data", "prepare", src, "--out", str(data), "--tokenizer", "bytes", "--context", "64", "--overwrite"]
    assert main(argv) == 0 and read_marker(data)["command"] == "data prepare"
    (data / MARKER).unlink()
    (data / "notes.txt").write_text("mine")
    assert main(argv) == 2 and (data / "notes.txt").read_text() == "mine"
    assert "did not write" in capsys.readouterr().err


def test_verify_good_old_and_cheap(tmp_path, prepared, capsys):
    from cogqa.data import check_shards_cheap, verify_data

    data = prepared(tmp_path, n_bytes=20_000)
    assert main(["data", "verify", str(data)]) == 0
    assert "ok:" in capsys.readouterr().out
    assert check_shards_cheap(data)["problems"] == []
    m = json.loads((data / "manifest.json").read_text())
    for split in m["splits"].values():
        for sh in split["shards"]:
            del sh["sha256"]
    (data / "manifest.json").write_text(json.dumps(m))
    report = verify_data(data)
    assert report["problems"] == [] and report["hashed"] == 0 and "no SHA-256" in report["notes"][0]
    shard = data / "train_00000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(CogqaError, match="train_00000.bin"):
        check_shards_cheap(data)


def test_train_refuses_a_damaged_shard(tmp_path, prepared, capsys):
    """cogqa train checks the cheap shard invariants at start: a truncated shard is refused in one line."""
    from conftest import TINY_ARGS

    data = prepared(tmp_path)
    shard = sorted(p for p in data.iterdir() if p.suffix == ".bin")[0]
    shard.write_bytes(shard.read_bytes()[:-7])
    out = tmp_path / "run"
    status = main(["train", "--data", str(data), "--out", str(out), *TINY_ARGS, "--tokens", "4096", "--lr", "1e-3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status != 0 and len(err) == 1 and shard.name in err[0], err
    assert not (out / "checkpoints").exists()


def test_files_written_together_are_all_replaced_or_none(tmp_path):
    from cogqa.files import write_together

    a, b = tmp_path / "results.csv", tmp_path / "results.parquet"
    write_together({a: lambda p: p.write_text("old a"), b: lambda p: p.write_text("old b")})

    def boom(p):
        p.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space") as exc:
        write_together({a: lambda p: p.write_text("new a"), b: boom})
    assert exc.value.filename == str(b)  # the error names the file asked for, not its temporary
    assert (a.read_text(), b.read_text()) == ("old a", "old b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv", "results.parquet"]


def test_an_old_output_moved_aside_by_a_killed_run_is_restored(tmp_path):
    old = tmp_path / ".o.cogqa-old-999999999-abc"
    old.mkdir()
    (old / MARKER).write_text('{"command": "test"}')
    assert clean_stale_temps(tmp_path / "o") == []
    assert (tmp_path / "o" / MARKER).is_file() and not old.exists()
    with pytest.raises(CogqaError, match="--overwrite"):  # restored before the policy check: still protected
        write_output_dir(tmp_path / "o", "test", _build("b"))


def test_single_output_files_and_figure_suffixes(tmp_path):
    from cogqa.files import check_figure_path, check_output_file, json_file_with

    laws = tmp_path / "laws.json"
    assert check_output_file(laws, False) == laws
    laws.write_text('{"form": "power_law_n", "laws": []}')
    with pytest.raises(CogqaError, match="--overwrite"):
        check_output_file(laws, False)
    assert check_output_file(laws, True, ours=json_file_with("form", "laws")) == laws
    mine = tmp_path / "mine.json"
    mine.write_text('{"mine": true}')
    with pytest.raises(CogqaError, match="not a file cogqa wrote"):
        check_output_file(mine, True, ours=json_file_with("form", "laws"))
    with pytest.raises(CogqaError, match="is a directory"):
        check_output_file(tmp_path, True)
    pytest.importorskip("matplotlib")
    assert check_figure_path(tmp_path / "x.PDF").suffix == ".PDF"
    with pytest.raises(CogqaError, match=r"\.png"):
        check_figure_path(tmp_path / "x.foo")
