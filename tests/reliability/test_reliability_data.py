"""Bad data files through the real CLI (`chatforge data clean` and `data show`): every case ends in one clean
error naming the file, the line or record, and the field; none in a traceback. Also: huge records stay bounded,
output folders never overwrite their input."""

from __future__ import annotations

import json
import time

import pytest
from corpus import DATA_CASES, DATASET_INFO_CASES, GOOD, write_case_files
from reliability_helpers import check_clean_error, run_subprocess

from chatforge.data import readers


@pytest.mark.parametrize("case", DATA_CASES, ids=[c.id for c in DATA_CASES])
def test_bad_data_file_is_a_clean_error(case, tmp_path, run_cli):
    path = write_case_files(tmp_path, case)
    t0 = time.perf_counter()
    rc, err = run_cli("data", "clean", "--input", path, "--output", tmp_path / "out")
    check_clean_error(rc, err, case.expect)
    assert time.perf_counter() - t0 < 20, "a bad file must fail fast"
    assert not (tmp_path / "out").exists(), "nothing is written when the input is bad"


@pytest.mark.parametrize("case", [c for c in DATA_CASES if c.id in ("lone_surrogate", "gz_truncated")],
                         ids=lambda c: c.id)  # fmt: skip
def test_bad_data_in_a_subprocess(case, tmp_path):
    """The same as a user sees it: real exit code, nothing but the error on stderr."""
    path = write_case_files(tmp_path, case)
    proc = run_subprocess("data", "clean", "--input", path, "--output", tmp_path / "out")
    check_clean_error(proc.returncode, proc.stderr, case.expect)
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_bad_record_is_skipped_and_counted_with_on_error_skip(tmp_path, run_cli, capsys):
    bad = {c.id: c for c in DATA_CASES}
    lines = [GOOD, bad["lone_surrogate"].content.decode().splitlines()[1], GOOD, '{"messages": [', GOOD]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    rc, err = run_cli("data", "clean", "--input", path, "--output", tmp_path / "out", "on_error=skip", "dedup.exact=false",
                      "dedup.near=false", "split.enabled=false")  # fmt: skip
    assert rc == 0, err
    assert len((tmp_path / "out" / "clean.jsonl").read_text().splitlines()) == 3


def test_over_long_line_is_refused_without_reading_it_whole(tmp_path, run_cli, monkeypatch):
    monkeypatch.setattr(readers, "MAX_LINE_BYTES", 4096)
    path = tmp_path / "long.jsonl"
    path.write_text(GOOD + "\n" + json.dumps({"text": "x" * 10_000}) + "\n" + GOOD + "\n")
    rc, err = run_cli("data", "clean", "--input", path, "--output", tmp_path / "out")
    check_clean_error(rc, err, ["long.jsonl", "line 2", "longer than"])
    # skipped, the lines after it are still read at their right line numbers
    result = readers.read_records(path, on_error="skip")
    assert len(result) == 2 and result.skipped["too_large"] == 1
    assert [r.meta["line"] for r in result.records] == [1, 3]


def test_huge_record_is_truncated_and_counted(tmp_path):
    """One 20 MB message costs bounded memory downstream: cut to max_chars while reading, and reported."""
    path = tmp_path / "huge.jsonl"
    big = {"messages": [{"role": "user", "content": "word " * 4_000_000}, {"role": "assistant", "content": "ok"}]}
    path.write_text(json.dumps(big) + "\n" + GOOD + "\n")
    t0 = time.perf_counter()
    result = readers.read_records(path, max_chars=10_000)
    assert time.perf_counter() - t0 < 10
    assert len(result.records[0].messages[0].content) == 10_000
    assert result.records[0].messages[1].content == "ok"
    assert result.truncated == 1 and "truncated 1 messages longer than 10000 characters" in result.summary()


def test_huge_text_document_is_split_not_lost(tmp_path):
    """Pretraining text is split (nothing lost), both a huge .txt paragraph and a huge {"text": ...} record."""
    text = "line of text\n" * 200_000 + "\nsecond paragraph\n"
    (tmp_path / "corpus.txt").write_text(text)
    result = readers.read_records(tmp_path / "corpus.txt", max_chars=10_000)
    docs = [r.text for r in result.records]
    assert max(map(len, docs)) <= 10_000 and docs[-1] == "second paragraph"
    lines = [line for d in docs[:-1] for line in d.strip("\n").split("\n")]
    assert lines == ["line of text"] * 200_000, "every line kept, none cut in the middle"
    (tmp_path / "doc.jsonl").write_text(json.dumps({"text": "word " * 100_000}) + "\n")
    result = readers.read_records(tmp_path / "doc.jsonl", max_chars=30_000)
    assert "".join(r.text for r in result.records) == "word " * 100_000 and result.split == 1
    assert [r.meta["part"] for r in result.records] == list(range(len(result.records)))


@pytest.mark.parametrize("case_id", sorted(DATASET_INFO_CASES))
def test_bad_dataset_info_entry_is_refused(case_id, tmp_path, run_cli):
    registry, expect = DATASET_INFO_CASES[case_id]
    (tmp_path / "x.json").write_text(json.dumps([{"instruction": "a", "output": "b"}]))
    (tmp_path / "dataset_info.json").write_text(json.dumps(registry))
    rc, err = run_cli("data", "show", "d", "--dataset-info", tmp_path / "dataset_info.json")
    check_clean_error(rc, err, expect)


def test_dataset_info_inside_its_folder_still_reads(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.json").write_text(json.dumps([{"instruction": "a", "output": "b"}]))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"d": {"file_name": "sub/../sub/x.json"}}))
    assert len(readers.read_records("d", dataset_info=tmp_path / "dataset_info.json")) == 1


@pytest.mark.parametrize("where", ["same", "inside", "parent"])
def test_clean_output_never_over_its_input(where, tmp_path, run_cli):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text(GOOD + "\n")
    before = (data / "train.jsonl").read_bytes()
    inp, out = {"same": (data, data), "inside": (data, data / "clean"), "parent": (data / "train.jsonl", data)}[where]
    rc, err = run_cli("data", "clean", "--input", inp, "--output", out)
    check_clean_error(rc, err, ["--output", "input"])
    assert (data / "train.jsonl").read_bytes() == before
    assert sorted(p.name for p in data.iterdir()) == ["train.jsonl"]


def test_clean_refuses_a_foreign_non_empty_folder_and_replaces_its_own(tmp_path, run_cli):
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                                      {"role": "assistant", "content": f"a{i}"}]})
                             for i in range(20)) + "\n")  # fmt: skip
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    rc, err = run_cli("data", "clean", "--input", src, "--output", out)
    check_clean_error(rc, err, ["not empty", "--overwrite"])
    rc, err = run_cli("data", "clean", "--input", src, "--output", out, "--overwrite")
    check_clean_error(rc, err, ["did not write"])
    assert (out / "notes.txt").read_text() == "mine"
    fresh = tmp_path / "fresh"
    assert run_cli("data", "clean", "--input", src, "--output", fresh)[0] == 0
    assert run_cli("data", "clean", "--input", src, "--output", fresh)[0] == 2  # a second run needs --overwrite
    assert run_cli("data", "clean", "--input", src, "--output", fresh, "--overwrite", "seed=3")[0] == 0
    assert "seed: 3" in (fresh / "clean_config.yaml").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_convert_output_never_over_its_input(tmp_path, run_cli):
    src = tmp_path / "webqa.json"
    src.write_text("{}")
    rc, err = run_cli("data", "convert", "webqa", "--input", src, "--output", tmp_path)
    check_clean_error(rc, err, ["--output", "contains the input"])
    rc, err = run_cli("data", "convert", "webqa", "--input", src, "--output", src)
    check_clean_error(rc, err, ["is a file"])
    assert src.read_text() == "{}"


def test_dataset_dir_allows_paths_inside_it_only(tmp_path, run_cli):
    (tmp_path / "reg").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.json").write_text(json.dumps([{"instruction": "a", "output": "b"}]))
    registry = tmp_path / "reg" / "dataset_info.json"
    registry.write_text(json.dumps({"d": {"file_name": "../data/x.json"}, "e": {"file_name": "../../x.json"}}))
    with pytest.raises(readers.DataError, match="set data.dataset_dir"):
        readers.read_records("d", dataset_info=registry)
    with pytest.raises(readers.DataError, match=r"e\.file_name.*outside data\.dataset_dir"):
        readers.read_records("d", dataset_info=registry, dataset_dir=tmp_path)
    registry.write_text(json.dumps({"d": {"file_name": "../data/x.json"}}))
    assert len(readers.read_records("d", dataset_info=registry, dataset_dir=tmp_path)) == 1
    rc, err = run_cli("data", "show", "d", "--dataset-info", registry, "--dataset-dir", tmp_path / "nope")
    check_clean_error(rc, err, ["dataset_dir", "not a folder"])


def test_clean_output_is_never_the_working_folder(tmp_path, run_cli, monkeypatch):
    work = tmp_path / "empty"
    work.mkdir()
    monkeypatch.chdir(work)
    src = tmp_path / "in.jsonl"
    src.write_text(GOOD + "\n")
    for out in (".", str(work), str(tmp_path / "empty" / ".." / "empty")):
        rc, err = run_cli("data", "clean", "--input", src, "--output", out)
        check_clean_error(rc, err, ["current folder"])
    assert work.is_dir() and list(work.iterdir()) == []
