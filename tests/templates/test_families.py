"""Model-family templates: each renders its documented format (system prompt, tools, tool results, reasoning, masks),
tool calls written in a template's syntax parse back, LLaMA-Factory names resolve, and YAML templates work."""

from __future__ import annotations

import re

import pytest
from transformers import AutoTokenizer

from chatforge.data.schema import Conversation, Message, ToolCall
from chatforge.errors import ChatforgeError
from chatforge.models.tiny import tiny_tokenizer
from chatforge.templates import (
    TEMPLATES,
    encode_conversation,
    encode_prompt,
    get_template,
    parse_reply,
    prepare_tokenizer,
    render_text,
    to_hf_messages,
)
from chatforge.templates.formats import ALIASES, load_template_file
from chatforge.templates.render import render_segments, split_reasoning

TOOL = {"name": "search", "description": "Web search", "parameters": {"type": "object"}}


def _conv(*messages, tools=None) -> Conversation:
    return Conversation(list(messages), tools=tools or [])


def _trained(segments) -> str:
    return "".join(s.text for s in segments if s.trained)


def _prepared(name):
    tok = tiny_tokenizer()
    prepare_tokenizer(tok, name)
    return tok


def test_qwen25_default_system_prompt_and_merged_tool_results():
    one_turn = _conv(Message("user", "Hi"), Message("assistant", "Hello"))
    text = render_text(one_turn, get_template("qwen2.5"))
    assert text.startswith(
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    )
    assert not render_text(one_turn, get_template("chatml")).startswith("<|im_start|>system")
    tool_turns = _conv(
        Message("user", "a and b?"),
        Message("assistant", "", [ToolCall("search", {"q": "a"}), ToolCall("search", {"q": "b"})]),
        Message("tool", "A"),
        Message("tool", "B"),
        Message("assistant", "Done."),
        tools=[TOOL],
    )
    qwen = render_text(tool_turns, get_template("qwen2.5"))
    assert (
        "<|im_start|>user\n<tool_response>\nA\n</tool_response>\n<tool_response>\nB\n</tool_response><|im_end|>\n"
        in qwen
    )
    assert render_text(tool_turns, get_template("chatml")).count("<|im_start|>user\n<tool_response>") == 2
    assert '<tool_call>\n{"name": "search", "arguments": {"q": "a"}}\n</tool_call>\n<tool_call>' in qwen
    # the system prompt carries the default text and then the tool block
    assert "You are a helpful assistant.\n\n# Tools\n" in qwen and '"name": "search"' in qwen.split("<tools>\n")[1]


def test_qwen3_thinking_blocks_and_switch():
    conv = _conv(
        Message("user", "2+2?"),
        Message("assistant", "<think>\nadd\n</think>\n\n4."),
        Message("user", "Times 3?"),
        Message("assistant", "<think>\nmultiply\n</think>\n\n12."),
    )
    think = get_template("qwen3")
    text = render_text(conv, think)
    assert "add" not in text, "thinking of turns before the last user turn is dropped"
    assert text.endswith("<|im_start|>assistant\n<think>\nmultiply\n</think>\n\n12.<|im_end|>\n")
    segs = render_segments(conv, think)
    assert _trained(segs).endswith("<think>\nmultiply\n</think>\n\n12.<|im_end|>"), "thinking is a target"
    prompt = _conv(*conv.messages[:1])
    assert render_text(prompt, think, add_generation_prompt=True).endswith("<|im_start|>assistant\n")
    nothink = get_template("qwen3_nothink")
    assert render_text(prompt, nothink, add_generation_prompt=True).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    plain = _conv(Message("user", "Hi"), Message("assistant", "Hello"))
    segs = render_segments(plain, nothink)
    assert _trained(segs) == "Hello<|im_end|>", "the empty block belongs to the prompt when thinking is off"
    assert split_reasoning("<think>\nr\n</think>\n\nA") == ("r", "A")
    # the saved Jinja honours enable_thinking like Qwen3's own: False adds the empty block to the generation prompt
    tok = _prepared("qwen3")
    messages, _ = to_hf_messages(prompt)
    off = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, enable_thinking=False)
    assert off == render_text(prompt, nothink, add_generation_prompt=True)


def test_chatglm3_role_tokens_metadata_line_and_next_marker_target():
    tok = _prepared("chatglm3")
    for marker in ("<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"):
        assert len(tok.encode(marker, add_special_tokens=False)) == 1, marker
    conv = _conv(
        Message("system", "Be brief."),
        Message("user", "Search x"),
        Message("assistant", "", [ToolCall("search", {"q": "x"})]),
        Message("tool", '{"hits": 1}'),
        Message("assistant", "One hit."),
        tools=[TOOL],
    )
    text = render_text(conv, get_template("chatglm3"))
    assert text.startswith("[gMASK]sop<|system|>\nBe brief.\n\nAnswer the following questions")
    call = 'search\n```python\ntool_call(q="x")\n```'  # ChatGLM3's code-style call after the metadata line
    assert f'<|user|>\nSearch x<|assistant|>{call}<|observation|>\n{{"hits": 1}}<|assistant|>\nOne hit.</s>' in text
    # a reply ends where the next role marker starts: that marker is trained, the observation text is not
    assert _trained(render_segments(conv, get_template("chatglm3"))) == f"{call}<|observation|>\nOne hit.</s>"
    reply = parse_reply('search\n```python\ntool_call(q="y", n=2)\n```', get_template("chatglm3"))
    assert reply.tool_calls == [ToolCall("search", {"q": "y", "n": 2})] and reply.content == ""
    assert parse_reply("\nJust text", get_template("chatglm3")).tool_calls == []
    # the JSON layout LLaMA-Factory writes stays available under its own name
    json_reply = parse_reply('search\n{"q": "y"}', get_template("chatglm3_json"))
    assert json_reply.tool_calls == [ToolCall("search", {"q": "y"})]


def test_llama3_and_mistral_tool_formats():
    conv = _conv(
        Message("system", "Sys."),
        Message("user", "Find x"),
        Message("assistant", "", [ToolCall("search", {"q": "x"})]),
        Message("tool", "[]"),
        Message("assistant", "Nothing."),
        tools=[TOOL],
    )
    llama = render_text(conv, get_template("llama3"))
    assert 'assistant<|end_header_id|>\n\n{"name": "search", "parameters": {"q": "x"}}<|eot_id|>' in llama
    assert "<|start_header_id|>ipython<|end_header_id|>\n\n[]<|eot_id|>" in llama
    assert "Environment: ipython" in llama.split("<|eot_id|>")[0]
    mistral = render_text(conv, get_template("mistral"))
    assert mistral.startswith('<s>[AVAILABLE_TOOLS] [{"type": "function", "function": {"name": "search"')
    ids = re.findall(r'"id": "([0-9A-Za-z]{9})"', mistral)  # Mistral call ids: 9 alphanumeric characters
    assert len(ids) == 1
    assert (
        '[/AVAILABLE_TOOLS][INST] Sys.\n\nFind x[/INST][TOOL_CALLS] [{"name": "search", "arguments": {"q": "x"}, '
        f'"id": "{ids[0]}"}}]</s>' in mistral
    )
    assert mistral.endswith(f'[TOOL_RESULTS] {{"content": [], "call_id": "{ids[0]}"}}[/TOOL_RESULTS] Nothing.</s>')


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_tool_calls_parse_back_in_every_template(name):
    """What a template teaches the model to write for tool calls, parse_reply reads back (and plain text stays text)."""
    template = get_template(name)
    for calls, content in (
        ([ToolCall("search", {"q": "北京"})], ""),
        ([ToolCall("a", {}), ToolCall("b", {"x": 1})], ""),
    ):
        prompt = _conv(Message("user", "go"), tools=[TOOL])
        full = _conv(Message("user", "go"), Message("assistant", content, calls), tools=[TOOL])
        head = render_text(prompt, template, add_generation_prompt=True)
        text = render_text(full, template)
        assert text.startswith(head), name
        reply = text[len(head) :]
        for tail in (template.final_end, template.assistant_sep):
            if tail and reply.endswith(tail):
                reply = reply[: -len(tail)]
        message = parse_reply(reply, template)
        assert message.tool_calls == calls, (name, reply)
        assert split_reasoning(message.content)[1] == "", (name, message.content)
    assert parse_reply("Just words.", template).content == "Just words."


def test_llamafactory_names_resolve():
    for lf_name in (
        "llama2",
        "llama3",
        "qwen",
        "qwen3",
        "qwen3_nothink",
        "chatglm3",
        "mistral",
        "gemma",
        "deepseek",
        "deepseek3",
        "yi",
        "baichuan2",
        "chatml",
    ):
        assert get_template(lf_name).name in TEMPLATES
    assert get_template("qwen").name == "qwen2.5" and get_template("Llama3").name == "llama3"
    assert all(target in TEMPLATES for target in ALIASES.values())
    with pytest.raises(ChatforgeError, match="unknown chat template 'vicuna'.*aliases"):
        get_template("vicuna")


# The seed's custom Llama-2 format: "[Round i]" headers, "search:" calls and "return:" results, as a YAML file.
SEED_YAML = """\
name: rounds
bos: "<s>"
system: "{content}\\n\\n"
user: "[Round {round}]\\n问：{content}\\n"
assistant_header: "答："
assistant_end: "</s>"
assistant_sep: "\\n"
tool: "return: {content}\\n"
tool_call: "{name}: {arguments}"
tools_intro: "工具：\\n"
tools_outro: "\\n\\n"
tools_item: function
special_tokens: ["<s>", "</s>"]
"""


def test_yaml_template_expresses_the_round_format(tmp_path):
    path = tmp_path / "rounds.yaml"
    path.write_text(SEED_YAML, encoding="utf-8")
    template = get_template(str(path))
    assert template.name == "rounds"
    conv = _conv(
        Message("user", "北京天气？"),
        Message("assistant", "", [ToolCall("search", {"q": "北京天气"})]),
        Message("tool", "晴"),
        Message("assistant", "晴天。"),
        Message("user", "明天呢？"),
        Message("assistant", "不知道。"),
        tools=[TOOL],
    )
    text = render_text(conv, template)
    assert text.startswith('<s>工具：\n{"name": "search"')
    assert (
        '[Round 1]\n问：北京天气？\n答：search: {"q": "北京天气"}</s>\nreturn: 晴\n答：晴天。</s>\n[Round 2]\n问：明天呢？\n'
        in text
    )
    assert _trained(render_segments(conv, template)) == 'search: {"q": "北京天气"}</s>晴天。</s>不知道。</s>'
    assert parse_reply('search: {"q": "x"}</s>', template).tool_calls == [ToolCall("search", {"q": "x"})]
    # the saved Jinja renders the same ids, including the round counter
    tok = tiny_tokenizer()
    prepare_tokenizer(tok, template)
    tok.save_pretrained(tmp_path / "tok")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    messages, tools = to_hf_messages(conv)
    assert encode_conversation(conv, reloaded, template).input_ids == list(
        reloaded.apply_chat_template(messages, tools=tools, tokenize=True)["input_ids"]
    )
    prompt = _conv(*conv.messages[:5], tools=[TOOL])
    messages, tools = to_hf_messages(prompt)
    assert encode_prompt(prompt, reloaded, template) == list(
        reloaded.apply_chat_template(messages, tools=tools, tokenize=True, add_generation_prompt=True)["input_ids"]
    )


def test_yaml_template_chooses_which_turns_train(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(SEED_YAML + 'trained_roles: ["assistant"]\n', encoding="utf-8")
    conv = _conv(
        Message("user", "q"),
        Message("assistant", "", [ToolCall("search", {})]),
        Message("tool", "r"),
        Message("assistant", "done"),
        tools=[TOOL],
    )
    assert _trained(render_segments(conv, load_template_file(path))) == "done</s>", "tool-calling turns not trained"


def test_yaml_template_problems_are_reported_together(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text('user: "no placeholder"\nassistant_hedaer: "x"\nreasoning: maybe\n', encoding="utf-8")
    with pytest.raises(ChatforgeError) as err:
        get_template(str(path))
    message = str(err.value)
    for needle in (
        "user: must contain {content}",
        "did you mean 'assistant_header'",
        "assistant_end: required",
        "reasoning: 'maybe'",
    ):
        assert needle in message
    with pytest.raises(ChatforgeError, match="not found"):
        get_template(str(tmp_path / "missing.yaml"))


def test_data_show_takes_aliases_and_yaml_templates(tmp_path, capsys):
    import json

    from chatforge.cli import main

    tiny_tokenizer().save_pretrained(tmp_path / "tok")
    data = tmp_path / "d.jsonl"
    data.write_text(
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    )
    (tmp_path / "rounds.yaml").write_text(SEED_YAML, encoding="utf-8")
    for name, shown in (("qwen", "qwen2.5"), (str(tmp_path / "rounds.yaml"), "rounds")):
        argv = ["data", "show", str(data), "--model", str(tmp_path / "tok"), "--template", name, "--color", "never"]
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert f"template {shown}," in out and "[[yo" in out
