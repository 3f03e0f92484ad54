"""`chatforge data show`: trained spans are exactly the assistant replies with their end-of-turn marker."""

from __future__ import annotations

import json
import re

import pytest

from chatforge.data.readers import ReadResult, read_records
from chatforge.data.schema import Conversation, Message, PreferencePair, TextDoc
from chatforge.data.show import CLOSE, GREEN, GREY, OPEN, RESET, render_masked, show_records
from chatforge.templates import encode_conversation

CONV = Conversation(
    [
        Message("system", "Be brief."),
        Message("user", "Hello world! 你好"),
        Message("assistant", "Paris is the capital."),
        Message("user", "Why?"),
        Message("assistant", "Because 北京 is not."),
    ]
)
TRAINED_SPAN = re.compile(re.escape(OPEN) + "(.*?)" + re.escape(CLOSE), re.S)


@pytest.mark.parametrize("style", ["bytelevel", "metaspace"])
@pytest.mark.parametrize("template, end", [("chatml", "<|im_end|>"), ("llama3", "<|eot_id|>")])
def test_plain_markers_wrap_exactly_the_replies(request, style, template, end):
    tok = request.getfixturevalue("tiny_tok" if style == "bytelevel" else "tiny_tok_metaspace")
    enc = encode_conversation(CONV, tok, template)
    text = render_masked(enc.input_ids, enc.trained, tok, color=False)
    assert TRAINED_SPAN.findall(text) == ["Paris is the capital." + end, "Because 北京 is not." + end]
    # Nothing is lost or added: without the markers it is the decoded sequence.
    plain = text.replace(OPEN, "").replace(CLOSE, "")
    assert plain == tok.decode(enc.input_ids, skip_special_tokens=False)
    assert "Hello world! 你好" in TRAINED_SPAN.sub("", text)


def test_colour_mode_and_grouping(tiny_tok):
    enc = encode_conversation(CONV, tiny_tok, "chatml", mask="last_assistant")
    text = render_masked(enc.input_ids, enc.trained, tiny_tok, color=True)
    assert OPEN not in text
    greens = re.findall(re.escape(GREEN) + "(.*?)" + re.escape(RESET), text, re.S)
    assert greens == ["Because 北京 is not.<|im_end|>"]  # last_assistant: the first reply is grey
    assert text.startswith(GREY) and text.count(GREY) == 2
    ids = tiny_tok.encode("hello world", add_special_tokens=False)
    assert render_masked(ids, [True] * len(ids), tiny_tok, color=False) == "[[hello world]]"
    assert render_masked([], [], tiny_tok, color=False) == ""
    with pytest.raises(ValueError):
        render_masked(ids, [True], tiny_tok, color=False)


def test_show_records_counts_and_kinds(tiny_tok):
    pair = PreferencePair(
        Conversation([Message("user", "Q?")]), Message("assistant", "good"), Message("assistant", "bad")
    )
    doc = TextDoc("some text")
    for rec, where in ((CONV, {"source": "f.jsonl", "line": 4}), (pair, {"record": 2}), (doc, {"source": "t.txt"})):
        rec.meta.update(where)
    result = ReadResult([CONV, pair, doc])
    out = show_records(result, tiny_tok, "chatml", color=False)
    enc = encode_conversation(CONV, tiny_tok, "chatml")
    assert "===== #1 (f.jsonl line 4) =====" in out
    assert f"----- {len(enc)} tokens, {enc.num_trained} trained -----" in out
    assert "#2 chosen (record 2)" in out and "#2 rejected (record 2)" in out
    assert TRAINED_SPAN.findall(out.split("#2 chosen")[1].split("=====")[1]) == ["good<|im_end|>"]
    assert TRAINED_SPAN.findall(out.split("#3")[1]) == ["some text</s>"]  # pretraining text: all trained, plus EOS
    totals = re.findall(r"----- (\d+) tokens, (\d+) trained", out)
    summary = re.search(r"3 of 3 records shown: (\d+) tokens, (\d+) trained", out)
    assert summary and int(summary[1]) == sum(int(t) for t, _ in totals)
    assert int(summary[2]) == sum(int(n) for _, n in totals)
    limited = show_records(result, tiny_tok, "chatml", limit=1, color=False)
    assert "#2" not in limited and "1 of 3 records shown" in limited


def test_cli_on_a_saved_tokenizer(tmp_path, tiny_tok, capsys):
    from chatforge.data.show import main
    from chatforge.models.tiny import tiny_llama_config

    tiny_tok.save_pretrained(tmp_path / "tok")  # an HF folder needs config.json besides the tokenizer
    tiny_llama_config(len(tiny_tok)).save_pretrained(tmp_path / "tok")
    data = tmp_path / "d.jsonl"
    rows = [{"instruction": f"Say {i}.", "input": "", "output": f"{i}!"} for i in range(3)]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n", encoding="utf-8")
    argv = [str(data), "--model", str(tmp_path / "tok"), "--template", "chatml", "--limit", "2", "--on-error", "skip"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert TRAINED_SPAN.findall(out) == ["0!<|im_end|>", "1!<|im_end|>"]
    assert "2 of 3 records shown" in out and "malformed_json: 1" in err


@pytest.mark.real_model
@pytest.mark.shared_data
@pytest.mark.integration
@pytest.mark.parametrize("name", ["alpaca_en_demo.json", "glaive_toolcall_en_demo.json"])
def test_cli_on_llamafactory_demo_with_smollm2(shared_data, smollm2_available, capsys, name):
    """The issue's acceptance commands: replies (and tool calls) trained, prompts and observations not."""
    from chatforge.data.show import main

    path = shared_data / "llamafactory_demo" / name
    assert main([str(path), "--limit", "2"]) == 0
    out = capsys.readouterr().out
    records = read_records(path).records[:2]
    replies = [m for r in records for m in r.messages if m.role == "assistant"]
    spans = TRAINED_SPAN.findall(out)
    assert len(spans) == len(replies) and all(s.endswith("<|im_end|>") for s in spans)
    for span, reply in zip(spans, replies):
        assert reply.content in span
        for call in reply.tool_calls:
            assert f'"name": "{call.name}"' in span
    for r in records:
        for m in r.messages:
            if m.role in ("user", "tool"):
                assert all(m.content not in s for s in spans)
