"""Ollama Modelfile: its Go TEMPLATE renders the same text as chatforge's renderer for every built-in template.

Rendering uses a small Go text/template interpreter (gotemplate.py) with Ollama's data shapes. Ollama prints tool
specs and tool-call arguments as compact JSON (Go's encoding/json), so for conversations with tools the expected text
is ours with exactly those JSON objects re-printed compactly; everything else must match byte for byte.
"""

from __future__ import annotations

import json
import re

import gotemplate as go
import pytest

from chatforge.data.schema import Conversation, Message, ToolCall
from chatforge.errors import NotSupportedError
from chatforge.export.modelfile import find_template, modelfile_text, template_for, to_go_template
from chatforge.models.tiny import tiny_tokenizer
from chatforge.templates import TEMPLATES, get_template, prepare_tokenizer, render_text

SEARCH = {
    "name": "search_hotels",
    "description": "Find hotels in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "price_max": {"type": "number"}}},
}
WEATHER = {"name": "weather", "description": "", "parameters": {"type": "object", "properties": {}}}

CONVERSATIONS = {
    "single": Conversation([Message("user", "Hello! 你好")]),
    "system_multi_turn": Conversation(
        [
            Message("system", "Be brief."),
            Message("user", "What is 2+2?"),
            Message("assistant", "4."),
            Message("user", "And 3+3?\nThanks"),
        ]
    ),
    "empty_system": Conversation([Message("system", ""), Message("user", "hi")]),
    "tools": Conversation(
        [
            Message("user", "Hotels in Beijing under 500?"),
            Message("assistant", "", [ToolCall("search_hotels", {"price_max": 500, "city": "北京"})]),
            Message("tool", '{"hotels": ["A", "B"]}'),
            Message("assistant", "Found A and B.", [ToolCall("weather", {}), ToolCall("search_hotels", {"city": "x"})]),
            Message("user", "ok"),
        ],
        tools=[SEARCH, WEATHER],
    ),
    "tools_with_system": Conversation([Message("system", "You book hotels."), Message("user", "hi")], tools=[SEARCH]),
    "late_system": Conversation([Message("user", "a"), Message("assistant", "b"), Message("system", "c")]),
    # Back-to-back tool results (one shared turn in Qwen2.5), ending on a tool result.
    "parallel_results": Conversation(
        [
            Message("system", "S"),
            Message("user", "Weather and hotels?"),
            Message("assistant", "", [ToolCall("weather", {}), ToolCall("search_hotels", {"city": "Oslo"})]),
            Message("tool", "sunny"),
            Message("tool", '{"hotels": []}'),
        ],
        tools=[WEATHER, SEARCH],
    ),
    # Ends on the assistant's reply: no generation prompt (ChatGLM3 writes its final </s>).
    "ends_with_reply": Conversation(
        [
            Message("user", "q"),
            Message("assistant", "", [ToolCall("weather", {})]),
            Message("tool", "rain"),
            Message("assistant", "It rains."),
        ],
        tools=[WEATHER],
    ),
}


def _ollama_data(conv: Conversation) -> dict:
    messages = [
        go.Message(
            m.role,
            m.content,
            [go.ToolCall(go.CallFunction(c.name, go.Arguments(c.arguments))) for c in m.tool_calls],
        )
        for m in conv.messages
    ]
    tools = [go.Tool(go.ToolFunction(t["name"], t.get("description", ""), t.get("parameters", {}))) for t in conv.tools]
    return {"Messages": messages, "Tools": tools}


_DECODER = json.JSONDecoder()


def _ollama_spec(value):
    """What Go's encoding/json writes for a tool spec: api.ToolFunction drops an empty description."""
    if isinstance(value, dict):
        value = {k: _ollama_spec(v) for k, v in value.items()}
        if {"name", "parameters"} <= value.keys() and value.get("description") == "":
            del value["description"]
    elif isinstance(value, list):
        value = [_ollama_spec(v) for v in value]
    return value


def _canonical_json(text: str, ollama: bool = False) -> str:
    """Every JSON object/array in `text` re-printed compactly with sorted keys; all other text is kept as it is.

    Ollama prints tool specs and call arguments as Go's encoding/json does (compact, map keys sorted, no indent),
    so JSON values are compared by value; every byte between them must still match. `ollama`: also apply the
    changes Ollama's data types make to a tool spec (the expected side)."""
    out, pos = [], 0
    while pos < len(text):
        if text[pos] in "{[":
            try:
                value, end = _DECODER.raw_decode(text, pos)
            except ValueError:
                value, end = None, -1
            if isinstance(value, (dict, list)):
                value = _ollama_spec(value) if ollama else value
                out.append(json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True))
                pos = end
                continue
        out.append(text[pos])
        pos += 1
    return "".join(out)


# Templates whose rules Go's text/template cannot express: to_go_template refuses them, naming the feature.
REFUSED = {
    "qwen3": "thinking",
    "qwen3_nothink": "thinking",
    "mistral": "ids",
    "chatglm3": "code-style",
}


@pytest.mark.parametrize("name", sorted(TEMPLATES))
@pytest.mark.parametrize("case", sorted(CONVERSATIONS))
def test_go_template_renders_like_chatforge(name, case):
    template = get_template(name)
    if name in REFUSED:
        with pytest.raises(NotSupportedError, match=rf"{re.escape(name)}.*{REFUSED[name]}"):
            to_go_template(template)
        return
    conv = CONVERSATIONS[case]
    rendered = go.Template(to_go_template(template)).execute(_ollama_data(conv))
    expected = render_text(conv, template, add_generation_prompt=conv.messages[-1].role != "assistant")
    if conv.tools or any(m.tool_calls for m in conv.messages):
        rendered, expected = _canonical_json(rendered), _canonical_json(expected, ollama=True)
    assert rendered == expected


def test_tool_json_is_the_only_allowed_difference():
    """The JSON comparison still sees a wrong key, a wrong value, or text outside the JSON."""
    text = 'a {"x": 1, "y": [2, {"z": ""}]} b'
    assert _canonical_json(text) == 'a {"x":1,"y":[2,{"z":""}]} b'
    assert _canonical_json(text) != _canonical_json(text.replace('"y"', '"w"'))
    assert _canonical_json(text) != _canonical_json(text.replace(" b", "b"))
    assert _canonical_json("[INST] {x}") == "[INST] {x}"


def test_custom_default_system_is_found_and_used():
    template = get_template("chatml").with_default_system('Be "careful".\nAlways.')
    tok = tiny_tokenizer()
    prepare_tokenizer(tok, template)
    assert template_for(tok) == template and find_template(tok.chat_template) == template
    conv = CONVERSATIONS["single"]
    rendered = go.Template(to_go_template(template)).execute(_ollama_data(conv))
    assert rendered == render_text(conv, template, add_generation_prompt=True)
    text = modelfile_text("model-q8_0.gguf", template, 8192)
    assert text.startswith("FROM ./model-q8_0.gguf\n")
    assert 'SYSTEM """Be "careful".\nAlways."""' in text
    assert 'PARAMETER stop "<|im_end|>"' in text and "PARAMETER num_ctx 8192" in text
    body = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert body == to_go_template(template)


def test_unknown_tokenizer_template_asks_for_a_name():
    from chatforge.errors import ChatforgeError

    tok = tiny_tokenizer()
    tok.chat_template = "{{ messages }}"
    with pytest.raises(ChatforgeError, match="--template"):
        template_for(tok)
    assert template_for(tok, "llama3").name == "llama3"


def test_custom_template_joins_merged_tool_results():
    from dataclasses import replace

    template = replace(get_template("qwen2.5"), name="joined", tool_join="\n--")
    conv = CONVERSATIONS["parallel_results"]
    rendered = go.Template(to_go_template(template)).execute(_ollama_data(conv))
    expected = render_text(conv, template, add_generation_prompt=True)
    assert "</tool_response>\n--\n<tool_response>" in expected
    assert _canonical_json(rendered) == _canonical_json(expected, ollama=True)


def test_round_counter_is_refused():
    from dataclasses import replace

    template = replace(get_template("chatml"), name="rounds", user="[Round {round}]\n{content}\n")
    with pytest.raises(NotSupportedError, match=r"'rounds'.*\{round\}"):
        to_go_template(template)
