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


def _as_ollama_prints_json(text: str) -> str:
    """Our rendering with tool specs and call arguments printed the way Ollama (Go) prints them."""

    def spec(match):
        f = json.loads(match.group(1))["function"]
        fn = go.ToolFunction(f["name"], f.get("description", ""), f.get("parameters", {}))
        return '{"type": "function", "function": ' + str(fn) + "}"

    def call(match):
        try:
            obj = json.loads(match.group(1))
        except ValueError:  # the format description in the tool block, not a call
            return match.group(0)
        args = str(go.Arguments(obj["arguments"]))
        return f'<tool_call>\n{{"name": {json.dumps(obj["name"], ensure_ascii=False)}, "arguments": {args}}}\n'

    text = re.sub(r'^(\{"type": "function", "function": .*\})$', spec, text, flags=re.M)
    return re.sub(r"<tool_call>\n(.*)\n", call, text)


@pytest.mark.parametrize("name", sorted(TEMPLATES))
@pytest.mark.parametrize("case", sorted(CONVERSATIONS))
def test_go_template_renders_like_chatforge(name, case):
    template = get_template(name)
    conv = CONVERSATIONS[case]
    rendered = go.Template(to_go_template(template)).execute(_ollama_data(conv))
    expected = render_text(conv, template, add_generation_prompt=conv.messages[-1].role != "assistant")
    if conv.tools or any(m.tool_calls for m in conv.messages):
        expected = _as_ollama_prints_json(expected)
    assert rendered == expected


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
