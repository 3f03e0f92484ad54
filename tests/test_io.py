"""chatforge.io: atomic file and folder writes, leftover cleanup, the lock file, and the output-over-input guard."""

from __future__ import annotations

import json
import os
import stat

import pytest

from chatforge import io as cio
from chatforge.errors import ChatforgeError


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_writes_replace_whole_files_with_0644(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(cio.os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    target = tmp_path / "sub" / "a.json"
    cio.atomic_write_json(target, {"x": "é"})
    assert json.loads(target.read_text("utf-8")) == {"x": "é"} and _mode(target) == 0o644
    cio.atomic_write_text(target, "two")
    cio.atomic_write_bytes(tmp_path / "b.bin", b"\0\1")
    assert target.read_text() == "two" and (tmp_path / "b.bin").read_bytes() == b"\0\1"
    assert len(synced) >= 6  # each file and its folder
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["a.json"]


def test_a_failed_write_keeps_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "t.jsonl"
    target.write_text("old\n")
    with pytest.raises(RuntimeError):
        with cio.atomic_open(target) as f:
            f.write("partial")
            raise RuntimeError("boom")
    assert target.read_text() == "old\n" and os.listdir(tmp_path) == ["t.jsonl"]


def test_targets_that_cannot_be_files_are_clear_errors(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(ChatforgeError, match="a folder of that name exists"):
        cio.atomic_write_text(tmp_path / "d", "x")
    (tmp_path / "f").write_text("x")
    with pytest.raises(ChatforgeError, match="is a file, not a folder"):
        cio.atomic_write_text(tmp_path / "f" / "x.txt", "x")


def test_atomic_dir_builds_beside_and_renames(tmp_path):
    out = tmp_path / "out"
    with cio.atomic_dir(out) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".tmp-out-") and not out.exists()
        (tmp / "a.txt").write_text("1")
    assert (out / "a.txt").read_text() == "1" and _mode(out) == 0o755
    with pytest.raises(ChatforgeError, match="already exists"):
        with cio.atomic_dir(out):
            pass
    with pytest.raises(ValueError):
        with cio.atomic_dir(out, replace=True) as tmp:
            (tmp / "b.txt").write_text("2")
            raise ValueError
    assert sorted(os.listdir(out)) == ["a.txt"] and cio.clean_leftovers(tmp_path) == []
    with cio.atomic_dir(out, replace=True) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(os.listdir(out)) == ["b.txt"] and sorted(os.listdir(tmp_path)) == ["out"]


def test_clean_leftovers_touches_only_its_own_prefix(tmp_path):
    (tmp_path / ".tmp-x-1").mkdir()
    (tmp_path / ".tmp-y-2").write_text("")
    (tmp_path / "tmp-user").write_text("")
    (tmp_path / ".tmpfile").write_text("")
    assert [p.name for p in cio.clean_leftovers(tmp_path, stem="x")] == [".tmp-x-1"]
    assert [p.name for p in cio.clean_leftovers(tmp_path, older_than=3600)] == []  # too young
    assert [p.name for p in cio.clean_leftovers(tmp_path)] == [".tmp-y-2"]
    assert sorted(os.listdir(tmp_path)) == [".tmpfile", "tmp-user"]


def test_lock_file_fails_fast_within_one_process_too(tmp_path):
    lock = tmp_path / ".lock"
    with cio.lock_file(lock):
        with pytest.raises(ChatforgeError, match=rf"run folder X is in use .*process {os.getpid()}"):
            with cio.lock_file(lock, what="run folder X"):
                pass
    with cio.lock_file(lock):
        pass


@pytest.mark.parametrize(
    "output,inputs,words",
    [
        ("data", ["data"], "is the input"),
        ("data/out", ["data"], "inside the input folder"),
        ("data", ["data/a.jsonl"], "contains the input"),
        (".", ["data/a.jsonl"], "contains the input"),
    ],
)
def test_check_not_inside(tmp_path, monkeypatch, output, inputs, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.jsonl").write_text("")
    with pytest.raises(ChatforgeError, match=words):
        cio.check_not_inside(output, inputs)


def test_check_not_inside_allows_siblings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.jsonl").write_text("")
    cio.check_not_inside("clean", ["data", "data/a.jsonl"])
    cio.check_not_inside("data2", ["data"])


def test_atomic_dir_never_replaces_the_working_folder(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for name in (".", str(work), str(tmp_path)):
        with pytest.raises(ChatforgeError, match="current working folder"):
            with cio.atomic_dir(name, replace=True):
                pass
    assert work.is_dir() and sorted(os.listdir(tmp_path)) == ["work"]
    with cio.atomic_dir("out/") as tmp:
        (tmp / "f").write_text("1")
    assert (work / "out" / "f").read_text() == "1"
