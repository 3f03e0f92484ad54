"""LLaMA-Factory dataset_info.json: entries parse, column mappings and tags apply, hub entries refuse, real files load."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from chatforge.data.llamafactory import load_dataset_info
from chatforge.data.readers import read_records
from chatforge.data.schema import Conversation, PreferencePair, TextDoc
from chatforge.errors import ChatforgeError, DataError, NotSupportedError


def registry(tmp_path: Path, info: dict, files: dict[str, object]) -> Path:
    for name, content in files.items():
        text = content if isinstance(content, str) else json.dumps(content)
        (tmp_path / name).write_text(text, encoding="utf-8")
    path = tmp_path / "dataset_info.json"
    path.write_text(json.dumps(info), encoding="utf-8")
    return path


def test_columns_tags_ranking_and_kto(tmp_path):
    info = {
        "qa": {"file_name": "qa.jsonl", "columns": {"prompt": "question", "response": "answer", "system": "sys"}},
        "chat": {
            "file_name": "chat.json",
            "formatting": "sharegpt",
            "columns": {"messages": "dialog", "kto_tag": "ok"},
            "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "U", "assistant_tag": "A"},
        },
        "pairs": {
            "file_name": "pairs.json",
            "ranking": True,
            "columns": {"prompt": "q", "chosen": "c", "rejected": "r"},
        },
        "corpus": {"file_name": "corpus.jsonl", "columns": {"prompt": "content"}},
        "lines": {"file_name": "lines.txt"},
    }
    files = {
        "qa.jsonl": '{"question": "Q?", "answer": "A.", "sys": "S"}\n',
        "chat.json": [{"dialog": [{"speaker": "U", "text": "hi"}, {"speaker": "A", "text": "yo"}], "ok": False}],
        "pairs.json": [{"q": "Q?", "c": "good", "r": "bad"}],
        "corpus.jsonl": '{"content": "doc one"}\n{"content": "doc two"}\n',
        "lines.txt": "line one\nline two\n\nline three\n",
    }
    path = registry(tmp_path, info, files)
    specs = load_dataset_info(path)
    assert specs["chat"].tags["role_tag"] == "speaker" and specs["pairs"].ranking
    (qa,) = read_records("qa", dataset_info=path).records
    assert [(m.role, m.content) for m in qa.messages] == [("system", "S"), ("user", "Q?"), ("assistant", "A.")]
    assert qa.meta["dataset"] == "qa"
    (chat,) = read_records("chat", dataset_info=tmp_path).records  # the folder works as well as the file
    assert [m.role for m in chat.messages] == ["user", "assistant"] and chat.meta["kto_label"] is False
    (pair,) = read_records("pairs", dataset_info=path).records
    assert isinstance(pair, PreferencePair) and pair.chosen.content == "good" and pair.rejected.content == "bad"
    corpus = read_records("corpus", dataset_info=path).records
    assert [d.text for d in corpus] == ["doc one", "doc two"]
    lines = read_records("lines", dataset_info=path).records  # one document per line, as LLaMA-Factory reads .txt
    assert [d.text for d in lines] == ["line one", "line two", "line three"]


def test_hub_only_and_missing_entries(tmp_path):
    info = {
        "hub": {"hf_hub_url": "someone/data", "ms_hub_url": "x/y"},
        "script": {"script_url": "my_script"},
        "gone": {"file_name": "gone.json"},
        "images": {"file_name": "mm.json", "formatting": "sharegpt", "columns": {"messages": "m", "images": "images"}},
    }
    path = registry(tmp_path, info, {"mm.json": []})
    with pytest.raises(NotSupportedError, match="'hub'.*hf_hub_url=someone/data"):
        read_records("hub", dataset_info=path)
    with pytest.raises(NotSupportedError, match="'script'"):
        read_records("script", dataset_info=path)
    with pytest.raises(ChatforgeError, match="gone.json does not exist"):
        read_records("gone", dataset_info=path)
    with pytest.raises(NotSupportedError, match="images"):
        read_records("images", dataset_info=path)
    with pytest.raises(ChatforgeError, match="not registered.*registered: gone, hub, images, script"):
        read_records("nope", dataset_info=path)
    plain = tmp_path / "plain.jsonl"  # a file path beside a registry is read as a file
    plain.write_text('{"text": "x"}\n', encoding="utf-8")
    assert len(read_records(plain, dataset_info=path)) == 1


@pytest.mark.parametrize(
    "entry, field",
    [
        ({"file_name": "a.json", "formatting": "xml"}, "e.formatting"),
        ({"file_name": "a.json", "columns": {"answer": "a"}}, "e.columns"),
        ({"file_name": "a.json", "tags": {"speaker_tag": "s"}}, "e.tags"),
        ({"file_name": "a.json", "ranking": "yes"}, "e.ranking"),
        ({"file_nam": "a.json"}, "e"),
        ({"formatting": "alpaca"}, "e"),
    ],
)
def test_bad_registry_entries_are_located(tmp_path, entry, field):
    path = registry(tmp_path, {"e": entry}, {})
    with pytest.raises(DataError) as info:
        load_dataset_info(path)
    assert info.value.file == str(path) and info.value.field == field


def _file_record_count(path: Path) -> int:
    """Count records independently of chatforge: JSON array length, or non-blank lines (JSONL, LLaMA-Factory txt)."""
    if path.suffix == ".json":
        return len(json.loads(path.read_text(encoding="utf-8")))
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def _lf_broken_tool_order(path: Path) -> list[int]:
    """Records where an observation follows something other than a function_call (a tool result with no call)."""
    bad = []
    for i, rec in enumerate(json.loads(path.read_text(encoding="utf-8"))):
        turns = [m["from"] for m in rec.get("conversations", [])]
        if any(t == "observation" and (j == 0 or turns[j - 1] not in ("function_call", "observation"))
               for j, t in enumerate(turns)):  # fmt: skip
            bad.append(i)
    return bad


@pytest.mark.shared_data
def test_every_local_dataset_in_llamafactory_demo_loads(shared_data):
    """Every registered dataset with a file present loads; loaded + skipped == the file's records, per dataset.

    The only records chatforge refuses are genuinely broken ones (a tool result after a plain-text assistant turn,
    which LLaMA-Factory accepts because it only checks turn parity); they are found independently here and must be
    exactly the skipped ones.
    """
    folder = shared_data / "llamafactory_demo"
    specs = load_dataset_info(folder / "dataset_info.json")
    local = {name: spec for name, spec in specs.items() if spec.path is not None and spec.path.exists()}
    assert len(local) >= 10, sorted(local)
    kinds = {}
    for name, spec in local.items():
        result = read_records(name, dataset_info=folder, on_error="skip")
        expected = _file_record_count(spec.path)
        broken = _lf_broken_tool_order(spec.path) if spec.path.suffix == ".json" else []
        assert len(result.records) == expected - len(broken), name
        assert result.skipped == (Counter({"turn_order": len(broken)}) if broken else Counter()), name
        if spec.path.suffix == ".json":  # and precisely the other records, in file order
            assert [r.meta["record"] for r in result.records] == [i for i in range(expected) if i not in broken]
        kinds[name] = type(result.records[0]).__name__
    assert kinds["alpaca_en_demo"] == kinds["glaive_toolcall_en_demo"] == kinds["kto_en_demo"] == "Conversation"
    assert kinds["dpo_en_demo"] == kinds["dpo_zh_demo"] == PreferencePair.__name__
    assert kinds["wiki_demo"] == kinds["c4_demo"] == TextDoc.__name__
    # The broken records are a real finding, not a reader artefact: exactly two in the Chinese glaive demo.
    assert _lf_broken_tool_order(folder / "glaive_toolcall_zh_demo.json") == [197, 293]
    assert isinstance(read_records("glaive_toolcall_en_demo", dataset_info=folder).records[0], Conversation)
