"""Readers: every format and container converts to the right records; every kind of bad input is located or counted."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from chatforge.data.readers import read_records
from chatforge.data.schema import Conversation, Message, PreferencePair, TextDoc, ToolCall
from chatforge.errors import ChatforgeError, DataError

ALPACA = {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}
SHAREGPT_TOOL = {
    "conversations": [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "Weather in Paris?"},
        {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "Paris"}}'},
        {"from": "observation", "value": '{"temp": 21}'},
        {"from": "gpt", "value": "21 degrees."},
    ],
    "tools": '[{"name": "weather", "description": "Get weather", "parameters": {"type": "object"}}]',
}
OPENAI_TOOL = {
    "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": '{"temp": 21}'},
        {"role": "assistant", "content": "21 degrees."},
    ],
    "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
}


def write_json(path: Path, records: list) -> Path:
    path.write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def write_jsonl(path: Path, records: list) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def roles(conv: Conversation) -> list[str]:
    return [m.role for m in conv.messages]


# --- formats ---


def test_alpaca_with_system_and_history(tmp_path):
    rec = {**ALPACA, "system": "You add.", "history": [["1+1?", "2"], ["2+2?", "4"]]}
    (conv,) = read_records(write_json(tmp_path / "a.json", [rec])).records
    assert roles(conv) == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]
    assert conv.messages[5].content == "Add the numbers.\n2 and 3"  # LLaMA-Factory's instruction + "\n" + input
    assert conv.messages[-1].content == "5"
    assert conv.meta["record"] == 0 and conv.meta["source"].endswith("a.json")


def test_alpaca_empty_input_and_empty_system_mean_absent(tmp_path):
    rec = {"instruction": "Say hi.", "input": "", "output": "hi", "system": ""}
    (conv,) = read_records(write_json(tmp_path / "a.json", [rec])).records
    assert roles(conv) == ["user", "assistant"] and conv.messages[0].content == "Say hi."


def test_sharegpt_tool_calls_and_observations(tmp_path):
    (conv,) = read_records(write_json(tmp_path / "s.json", [SHAREGPT_TOOL])).records
    assert roles(conv) == ["system", "user", "assistant", "tool", "assistant"]
    assert conv.messages[2].tool_calls == [ToolCall("weather", {"city": "Paris"})]
    assert conv.messages[3].content == '{"temp": 21}'
    assert conv.tools == [{"name": "weather", "description": "Get weather", "parameters": {"type": "object"}}]


def test_sharegpt_parallel_calls_and_system_column(tmp_path):
    rec = {
        "conversations": [
            {"from": "human", "value": "Weather in Paris and Rome?"},
            {"from": "function_call", "value": json.dumps([{"name": "w", "arguments": {"c": "P"}},
                                                           {"name": "w", "arguments": '{"c": "R"}'}])},
            {"from": "observation", "value": "21"},
            {"from": "observation", "value": "25"},
            {"from": "gpt", "value": "21 and 25."},
        ],
        "system": "Be brief.",
    }  # fmt: skip
    (conv,) = read_records(write_json(tmp_path / "s.json", [rec])).records
    assert roles(conv) == ["system", "user", "assistant", "tool", "tool", "assistant"]
    assert [c.arguments for c in conv.messages[2].tool_calls] == [{"c": "P"}, {"c": "R"}]


def test_openai_messages_tool_calls_round_trip(tmp_path):
    (conv,) = read_records(write_jsonl(tmp_path / "o.jsonl", [OPENAI_TOOL])).records
    assert roles(conv) == ["user", "assistant", "tool", "assistant"]
    assert conv.messages[1].tool_calls == [ToolCall("weather", {"city": "Paris"})] and conv.messages[1].content == ""
    assert conv.tools == [{"name": "weather", "parameters": {"type": "object"}}]
    assert conv.meta["line"] == 1
    # What chatforge writes (Conversation.to_dict) reads back to the same conversation.
    conv.messages[0].train = False
    again = read_records(write_jsonl(tmp_path / "back.jsonl", [conv.to_dict()])).records[0]
    assert again.messages == conv.messages and again.tools == conv.tools


def test_openai_content_parts_are_joined(tmp_path):
    rec = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
                        {"role": "assistant", "content": "Hello"}]}  # fmt: skip
    (conv,) = read_records(write_jsonl(tmp_path / "o.jsonl", [rec])).records
    assert conv.messages[0].content == "Hi there"


@pytest.mark.parametrize(
    "rec",
    [
        # LLaMA-Factory sharegpt ranking
        {"conversations": [{"from": "human", "value": "Q?"}], "chosen": {"from": "gpt", "value": "good"},
         "rejected": {"from": "gpt", "value": "bad"}},
        # LLaMA-Factory alpaca ranking
        {"instruction": "Q?", "input": "", "chosen": "good", "rejected": "bad"},
        # TRL explicit prompt, strings
        {"prompt": "Q?", "chosen": "good", "rejected": "bad"},
        # TRL explicit prompt, message lists
        {"prompt": [{"role": "user", "content": "Q?"}], "chosen": [{"role": "assistant", "content": "good"}],
         "rejected": [{"role": "assistant", "content": "bad"}]},
        # TRL implicit prompt: whole conversations sharing the prompt
        {"chosen": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "good"}],
         "rejected": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "bad"}]},
    ],
)  # fmt: skip
def test_preference_shapes(tmp_path, rec):
    (pair,) = read_records(write_jsonl(tmp_path / "p.jsonl", [rec])).records
    assert isinstance(pair, PreferencePair)
    assert pair.prompt.messages == [Message("user", "Q?")]
    assert pair.chosen == Message("assistant", "good") and pair.rejected == Message("assistant", "bad")


def test_text_formats(tmp_path):
    txt = tmp_path / "t.txt"
    txt.write_text("First para\nstill first.\n\n   \nSecond para.\n\n\nThird.\n", encoding="utf-8")
    docs = read_records(txt).records
    assert [d.text for d in docs] == ["First para\nstill first.", "Second para.", "Third."]
    assert [d.meta["line"] for d in docs] == [1, 5, 8]
    docs = read_records(write_jsonl(tmp_path / "t.jsonl", [{"text": "a b"}, {"text": "c"}])).records
    assert all(isinstance(d, TextDoc) for d in docs) and [d.text for d in docs] == ["a b", "c"]


def test_gzip_containers_and_json_lines_in_a_json_file(tmp_path):
    gz = tmp_path / "a.jsonl.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write(json.dumps(ALPACA) + "\n" + json.dumps(ALPACA) + "\n")
    assert len(read_records(gz)) == 2
    gz = tmp_path / "a.json.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        json.dump([ALPACA] * 3, f)
    assert len(read_records(gz)) == 3
    # datasets/LLaMA-Factory read JSON Lines even when the file is called .json
    assert len(read_records(write_jsonl(tmp_path / "lines.json", [ALPACA] * 2))) == 2


def test_column_mapping_and_explicit_format(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "Q?", "answer": "A."}])
    (conv,) = read_records(path, format="alpaca", columns={"prompt": "question", "response": "answer"}).records
    assert [(m.role, m.content) for m in conv.messages] == [("user", "Q?"), ("assistant", "A.")]
    with pytest.raises(ChatforgeError, match="format"):
        read_records(path)  # keys tell no known format
    with pytest.raises(ChatforgeError, match="unknown column key"):
        read_records(path, format="alpaca", columns={"answer_col": "answer"})


# --- bad input: each error names the file, the line or record, and the field ---

GOOD = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})


def msgs(*pairs: tuple[str, str]) -> str:
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in pairs]})


BAD_LINES = {
    "malformed_json": ('{"messages": [', None),
    "missing_field": (json.dumps({"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}),
                      "messages[0].content"),
    "wrong_type": (json.dumps({"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]}),
                   "messages[0].content"),
    "unknown_role": (msgs(("user", "hi"), ("bot", "hello")), "messages[1].role"),
    "empty_content": (msgs(("user", "  "), ("assistant", "hello")), "messages[0].content"),
    "bad_tool_call": (json.dumps({"messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{city: Paris"}}]},
        {"role": "tool", "content": "1"}, {"role": "assistant", "content": "ok"}]}),
        "messages[1].tool_calls[0].function.arguments"),
}  # fmt: skip


@pytest.mark.parametrize("reason", sorted(BAD_LINES))
def test_bad_jsonl_line_is_located(tmp_path, reason):
    bad, field = BAD_LINES[reason]
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, GOOD, bad, GOOD])
    with pytest.raises(DataError) as info:
        read_records(path)
    err = info.value
    assert (err.file, err.line, err.field, err.reason) == (str(path), 3, field, reason)
    assert str(path) in str(err) and "line 3" in str(err)


ORDER_CASES = {
    "two users in a row": (msgs(("user", "a"), ("user", "b"), ("assistant", "c")), "messages[1]"),
    "assistant first": (msgs(("assistant", "a"), ("user", "b"), ("assistant", "c")), "messages[0]"),
    "assistant right after system": (msgs(("system", "s"), ("assistant", "a")), "messages[1]"),
    "two assistants in a row": (msgs(("user", "a"), ("assistant", "b"), ("assistant", "c")), "messages[2]"),
    "tool without call": (msgs(("user", "a"), ("assistant", "b"), ("tool", "r"), ("assistant", "c")), "messages[2]"),
    "system not first": (msgs(("user", "a"), ("system", "s"), ("assistant", "c")), "messages[1]"),
    "ends with user": (msgs(("user", "a"), ("assistant", "b"), ("user", "c")), "messages"),
}


@pytest.mark.parametrize("case", sorted(ORDER_CASES))
def test_turn_order_errors(tmp_path, case):
    bad, field = ORDER_CASES[case]
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, bad])
    with pytest.raises(DataError) as info:
        read_records(path)
    assert (info.value.line, info.value.field, info.value.reason) == (2, field, "turn_order")


def test_more_tool_results_than_calls(tmp_path):
    rec = dict(SHAREGPT_TOOL)
    convs = list(rec["conversations"])
    rec["conversations"] = convs[:4] + [convs[3]] + convs[4:]  # two observations for one call
    with pytest.raises(DataError, match="without a preceding") as info:
        read_records(write_json(tmp_path / "s.json", [SHAREGPT_TOOL, rec]))
    assert (info.value.record, info.value.field) == (1, "conversations[4]")


def test_sharegpt_errors_name_the_record_index(tmp_path):
    bad_call = {"conversations": [{"from": "human", "value": "x"}, {"from": "function_call", "value": "weather(Paris)"},
                                  {"from": "observation", "value": "1"}, {"from": "gpt", "value": "ok"}]}  # fmt: skip
    with pytest.raises(DataError) as info:
        read_records(write_json(tmp_path / "s.json", [SHAREGPT_TOOL, bad_call]))
    assert (info.value.record, info.value.field, info.value.reason) == (1, "conversations[1].value", "bad_tool_call")
    assert info.value.line is None and "record 1" in str(info.value)
    no_from = {"conversations": [{"from": "human", "value": "x"}, {"role": "gpt", "value": "y"}]}
    with pytest.raises(DataError, match="no 'from'") as info:
        read_records(write_json(tmp_path / "s2.json", [SHAREGPT_TOOL, no_from]))
    assert (info.value.record, info.value.field, info.value.reason) == (1, "conversations[1].from", "missing_field")


def test_alpaca_missing_output_and_wrong_history(tmp_path):
    with pytest.raises(DataError) as info:
        read_records(write_json(tmp_path / "a.json", [ALPACA, {"instruction": "x", "input": ""}]))
    assert (info.value.record, info.value.field, info.value.reason) == (1, "output", "missing_field")
    with pytest.raises(DataError) as info:
        read_records(write_json(tmp_path / "b.json", [{**ALPACA, "history": [["only user"]]}]))
    assert (info.value.record, info.value.field, info.value.reason) == (0, "history[0]", "wrong_type")
    with pytest.raises(DataError) as info:
        read_records(write_json(tmp_path / "c.json", [{**ALPACA, "output": " "}]))
    assert (info.value.field, info.value.reason) == ("output", "empty_content")


def test_malformed_json_array_names_the_line(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[\n{"instruction": "a", "output": "b"},\n{"instruction": "a" "output": "b"}\n]', encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_records(path)
    assert (info.value.line, info.value.reason) == (3, "malformed_json")


def test_single_json_object_file_is_refused(tmp_path):
    path = tmp_path / "squad.json"
    path.write_text(json.dumps({"version": "2", "data": []}, indent=2), encoding="utf-8")
    with pytest.raises(DataError, match="one JSON object"):
        read_records(path)


def test_skip_counts_every_bad_record_per_reason(tmp_path):
    lines = [GOOD] + [bad for bad, _ in BAD_LINES.values()] + [bad for bad, _ in ORDER_CASES.values()] + [GOOD]
    path = write_jsonl(tmp_path / "d.jsonl", lines)
    result = read_records(path, on_error="skip")
    assert len(result.records) == 2
    assert sum(result.skipped.values()) == len(BAD_LINES) + len(ORDER_CASES)  # nothing dropped silently
    assert result.skipped["turn_order"] == len(ORDER_CASES)
    for reason in BAD_LINES:
        assert result.skipped[reason] == 1
    summary = result.summary()
    assert "skipped 13" in summary and "malformed_json: 1" in summary and "line 2" in summary
    assert [r.meta["line"] for r in result.records] == [1, len(lines)]


def test_bad_arguments_to_read_records(tmp_path):
    with pytest.raises(ChatforgeError, match="no such file"):
        read_records(tmp_path / "missing.jsonl")
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD])
    with pytest.raises(ChatforgeError, match="on_error"):
        read_records(path, on_error="ignore")
    with pytest.raises(ChatforgeError, match="unknown data format"):
        read_records(path, format="csv")
    txt = tmp_path / "t.txt"
    txt.write_text("hello", encoding="utf-8")
    with pytest.raises(ChatforgeError, match="raw text"):
        read_records(txt, format="alpaca")
    latin = tmp_path / "l.jsonl"
    latin.write_bytes('{"text": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        read_records(latin)


def test_what_chatforge_writes_reads_back(tmp_path):
    """Preference pairs and text docs in chatforge's own JSONL (messages + chosen/rejected messages, meta) round-trip."""
    pair = {
        "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q?"}],
        "chosen": {"role": "assistant", "content": "good"},
        "rejected": {"role": "assistant", "content": "bad"},
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "meta": {"split": "train"},
    }
    (got,) = read_records(write_jsonl(tmp_path / "p.jsonl", [pair])).records
    assert got.prompt.messages == [Message("system", "S"), Message("user", "Q?")] and got.prompt.tools == [
        {"name": "f"}
    ]
    assert (got.chosen.content, got.rejected.content, got.meta["split"]) == ("good", "bad", "train")
    (doc,) = read_records(write_jsonl(tmp_path / "t.jsonl", [{"text": "abc", "meta": {"lang": "en"}}])).records
    assert doc.text == "abc" and doc.meta["lang"] == "en" and doc.meta["line"] == 1


def test_a_folder_reads_every_file_with_its_own_format(tmp_path):
    write_json(tmp_path / "a.json", [ALPACA])
    write_jsonl(tmp_path / "b.jsonl", [OPENAI_TOOL])
    (tmp_path / "c.txt").write_text("one\n\ntwo\n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored: not a data file", encoding="utf-8")
    recs = read_records(tmp_path).records
    assert [type(r).__name__ for r in recs] == ["Conversation", "Conversation", "TextDoc", "TextDoc"]
    assert [Path(r.meta["source"]).name for r in recs] == ["a.json", "b.jsonl", "c.txt", "c.txt"]


# --- OpenAI format as the OpenAI spec defines it ---


def test_openai_assistant_tool_calls_without_content_key(tmp_path):
    rec = json.loads(json.dumps(OPENAI_TOOL))
    del rec["messages"][1]["content"]  # the spec makes content optional when tool_calls is present
    (conv,) = read_records(write_jsonl(tmp_path / "o.jsonl", [rec])).records
    assert conv.messages[1].content == "" and conv.messages[1].tool_calls == [ToolCall("weather", {"city": "Paris"})]


def test_openai_weight_zero_is_not_trained(tmp_path):
    from chatforge.templates import get_template, render_segments

    rec = {
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "WRONG", "weight": 0},
            {"role": "user", "content": "b"},
            {"role": "assistant", "content": "RIGHT", "weight": 1},
        ]
    }
    (conv,) = read_records(write_jsonl(tmp_path / "w.jsonl", [rec])).records
    assert [m.train for m in conv.messages] == [None, False, None, True]
    trained = "".join(s.text for s in render_segments(conv, get_template("chatml"), "all_assistant") if s.trained)
    assert "RIGHT" in trained and "WRONG" not in trained


def test_openai_spec_fields(tmp_path):
    rec = {
        "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]},
            {"role": "user", "name": "alice", "content": "Weather and time?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "w", "type": "function", "function": {"name": "weather", "arguments": "{}"}},
                    {"id": "t", "type": "function", "function": {"name": "time", "arguments": "{}"}},
                ],
            },
            {"role": "tool", "tool_call_id": "t", "content": "noon"},  # results in another order than the calls
            {"role": "tool", "tool_call_id": "w", "content": "sunny"},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "No more."}]},
        ]
    }
    (conv,) = read_records(write_jsonl(tmp_path / "s.jsonl", [rec])).records
    assert roles(conv) == ["system", "user", "assistant", "tool", "tool", "assistant"]
    assert conv.messages[0].content == "Be brief." and conv.messages[-1].content == "No more."
    assert [m.content for m in conv.messages[3:5]] == ["sunny", "noon"]  # put into call order


def test_openai_legacy_function_call_and_refusal_without_content(tmp_path):
    rec = {
        "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": '{"a": 1}'}},
            {"role": "function", "name": "f", "content": "1"},
            {"role": "assistant", "refusal": "I cannot."},
        ]
    }
    (conv,) = read_records(write_jsonl(tmp_path / "f.jsonl", [rec])).records
    assert conv.messages[1].tool_calls == [ToolCall("f", {"a": 1})] and conv.messages[3].content == "I cannot."


def test_duplicate_tool_result_is_refused(tmp_path):
    rec = json.loads(json.dumps(OPENAI_TOOL))
    rec["messages"].insert(3, dict(rec["messages"][2]))
    with pytest.raises(DataError, match="more tool results|second result|without a preceding"):
        read_records(write_jsonl(tmp_path / "d.jsonl", [rec]))


def test_max_nesting_ignores_brackets_inside_strings():
    import random

    from chatforge.data.readers import max_nesting

    tricky = ['a"[{', "\\", '\\"', "x\\\\", "\n]", "}}}", "[[[", 'q"', "é[", 1, None]
    rng = random.Random(0)
    for _ in range(200):
        depth = rng.randint(1, 250)
        obj: object = rng.choice(tricky)
        for _ in range(depth):
            sib = [rng.choice(tricky) for _ in range(rng.randint(0, 2))]
            obj = [*sib, obj] if rng.random() < 0.5 else {"k[": obj, **{f'{i}"{{': s for i, s in enumerate(sib)}}
        text = json.dumps([obj, "]]]]"], ensure_ascii=rng.random() < 0.5)
        assert max_nesting(text) == depth + 1 or (depth + 1 <= 100 and max_nesting(text) >= depth + 1)
