"""Family-specific details: Llama 3.1's dated system header (and the guard on real-style 3.1 templates), Mistral's
9-character tool-call ids, ChatGLM3's code-style `tool_call(...)` calls, and the Ollama export refusing what a Go
template cannot express. Python rendering and the generated Jinja are compared token for token."""

from __future__ import annotations

import re

import pytest

from chatforge.config import TemplateConfig
from chatforge.data.schema import Conversation, Message, ToolCall
from chatforge.errors import ChatforgeError, NotSupportedError
from chatforge.models.tiny import tiny_tokenizer
from chatforge.templates import encode_conversation, get_template, parse_reply, prepare_tokenizer, render_text
from chatforge.templates.formats import check_date, with_date
from chatforge.templates.guard import check_model_template, choose_template, guess_template_name
from chatforge.templates.render import py_kwargs, to_hf_messages, tool_call_id

TOOL = {
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def _jinja_ids(template, conv: Conversation, generation: bool = False, **kw) -> tuple[list[int], list[int]]:
    """(chatforge's ids, the saved Jinja's ids) for one conversation on a tiny tokenizer prepared for `template`."""
    tok = tiny_tokenizer()
    prepare_tokenizer(tok, template)
    messages, tools = to_hf_messages(conv)
    theirs = tok.apply_chat_template(messages, tools=tools, tokenize=True, add_generation_prompt=generation, **kw)
    theirs = list(theirs["input_ids"] if hasattr(theirs, "keys") else theirs)
    return encode_conversation(conv, tok, template).input_ids, theirs


# ------------------------------------------------------------------------------------------------------- Llama 3.1

# A Llama-3.1-style chat template written for this test: the dated system header on every conversation, the date
# from `date_string`, else today's (`strftime_now`, as the 3.2/3.3 templates do), else the default.
HAND_LLAMA31 = (
    "{%- if date_string is not defined -%}{%- if strftime_now is defined -%}"
    "{%- set date_string = strftime_now('%d %b %Y') -%}{%- else -%}{%- set date_string = '26 Jul 2024' -%}"
    "{%- endif -%}{%- endif -%}"
    "{%- if messages[0].role == 'system' -%}{%- set sys = messages[0].content -%}{%- set rest = messages[1:] -%}"
    "{%- else -%}{%- set sys = '' -%}{%- set rest = messages -%}{%- endif -%}"
    "{{ '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{ 'Cutting Knowledge Date: December 2023\\nToday Date: ' + date_string + '\\n\\n' + sys + '<|eot_id|>' }}"
    "{%- for m in rest -%}"
    "{{ '<|start_header_id|>' + m.role + '<|end_header_id|>\\n\\n' + m.content + '<|eot_id|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif -%}"
)


def test_llama31_system_header_with_and_without_a_system_message():
    t = get_template("llama3.1")
    plain = render_text(Conversation([Message("user", "Hi")]), t, add_generation_prompt=True)
    assert plain == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    dated = with_date(t, "05 Mar 2025")
    conv = Conversation([Message("system", "Be terse."), Message("user", "Hi")], tools=[TOOL])
    text = render_text(conv, dated)
    head = "<|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\nCutting Knowledge Date: December 2023"
    assert head in text and "\nToday Date: 05 Mar 2025\n\nBe terse.\n\nEnvironment: ipython\n\nYou can call" in text
    assert get_template("llama3.2") == t and get_template("llama3").system_header == ""


@pytest.mark.parametrize("date", [None, "05 Mar 2025"])
def test_llama31_jinja_equals_chatforge_and_honours_date_string(date):
    t = with_date(get_template("llama3.1"), date)
    conv = Conversation(
        [Message("user", "Weather?"), Message("assistant", "", [ToolCall("get_weather", {"city": "Oslo"})])],
        tools=[TOOL],
    )
    ours, theirs = _jinja_ids(t, conv)
    assert ours == theirs
    # A renderer that passes its own date (transformers' date_string) gets that date in the saved template.
    tok = tiny_tokenizer()
    prepare_tokenizer(tok, t)
    text = tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False, date_string="01 Jan 2030")
    assert "Today Date: 01 Jan 2030\n\n" in text


def test_guard_accepts_a_real_style_llama31_template_whatever_the_day():
    tok = tiny_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|eom_id|>"]})  # as a real Llama 3.1 tokenizer has
    tok.chat_template = HAND_LLAMA31
    assert guess_template_name(tok) == "llama3.1"
    report = check_model_template(tok, "llama3.1")
    assert len(report.compared) == 6  # 3 chat probes, each also as a generation prompt (no tools in this one)
    choice = choose_template(tok, date="05 Mar 2025")  # template.date: compared with the model's Jinja on that date
    assert choice.template.name == "llama3.1" and choice.template.date == "05 Mar 2025"
    with pytest.raises(ChatforgeError, match="template.name=llama3.1"):
        check_model_template(tok, "llama3")  # the undated Llama 3 format really differs: refused, with the remedy


def test_template_date_is_checked():
    assert check_date("05 Mar 2025") == "05 Mar 2025"
    assert re.fullmatch(r"\d\d [A-Z][a-z]{2} \d{4}", check_date("today"))
    for bad in ("2025-03-05", "5 Mar 2025", "31 Feb 2025", "05 March 2025"):
        with pytest.raises(ChatforgeError, match="DD Mon YYYY"):
            check_date(bad)
    assert TemplateConfig(date="2025-03-05").check_config()[0][0] == "date"
    assert TemplateConfig(date="05 Mar 2025").check_config() == []
    with pytest.raises(ChatforgeError, match="no date header"):
        with_date(get_template("chatml"), "05 Mar 2025")


# --------------------------------------------------------------------------------------------------------- Mistral


def _mistral_conv(calls: list[ToolCall]) -> Conversation:
    return Conversation(
        [Message("user", "Paris and Rome?"), Message("assistant", "", calls)]
        + [Message("tool", f'{{"temp_c": {20 + k}}}') for k in range(len(calls))]
        + [Message("assistant", "Done.")],
        tools=[TOOL],
    )


def test_mistral_calls_carry_nine_character_ids_quoted_by_their_results():
    calls = [ToolCall("get_weather", {"city": "Paris"}), ToolCall("get_weather", {"city": "Rome"})]
    text = render_text(_mistral_conv(calls), get_template("mistral"))
    ids = re.findall(r'"id": "([^"]*)"', text)
    assert len(ids) == 2 and all(re.fullmatch(r"[0-9A-Za-z]{9}", i) for i in ids) and ids[0] != ids[1]
    assert re.findall(r'"call_id": "([^"]*)"', text) == ids  # each result answers its call, in order
    assert ids == [tool_call_id(0, calls[0]), tool_call_id(1, calls[1])]  # reproducible (cache keys, saved Jinja)
    ours, theirs = _jinja_ids(get_template("mistral"), _mistral_conv(calls))
    assert ours == theirs
    # The model's reply in this format parses back (the id is read past, calls keep name and arguments).
    reply = parse_reply(f'[TOOL_CALLS] [{{"name": "get_weather", "arguments": {{"city": "Oslo"}}, "id": "{ids[0]}"}}]')
    assert reply.tool_calls == []  # without the template it is text
    reply = parse_reply(
        f'[TOOL_CALLS] [{{"name": "get_weather", "arguments": {{"city": "Oslo"}}, "id": "{ids[0]}"}}]</s>',
        get_template("mistral"),
    )
    assert reply.tool_calls == [ToolCall("get_weather", {"city": "Oslo"})]


def test_mistral_jinja_uses_client_ids_and_refuses_calls_without_one():
    tok = tiny_tokenizer()
    prepare_tokenizer(tok, get_template("mistral"))
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
    messages = [
        {"role": "user", "content": "Oslo?"},
        {"role": "assistant", "content": "", "tool_calls": [dict(call, id="abcDEF123")]},
        {"role": "tool", "content": "{}", "tool_call_id": "abcDEF123"},
    ]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert '"id": "abcDEF123"' in text and '"call_id": "abcDEF123"' in text
    messages[1]["tool_calls"] = [call]
    with pytest.raises(Exception, match="id"):
        tok.apply_chat_template(messages, tokenize=False)


# -------------------------------------------------------------------------------------------------------- ChatGLM3


ARGS = {"city": "北京", "days": 2, "metric": True, "units": None, "tags": ["a", 1.5, False], "where": {"lat": 1}}


def test_chatglm3_code_style_calls_render_parse_and_match_the_jinja():
    t = get_template("chatglm3")
    assert py_kwargs(ARGS) == ('city="北京", days=2, metric=True, units=None, tags=["a", 1.5, False], where={"lat": 1}')
    conv = Conversation(
        [Message("user", "Weather?"), Message("assistant", "", [ToolCall("get_weather", ARGS)]), Message("tool", "ok")],
        tools=[TOOL],
    )
    text = render_text(conv, t)
    call = f"<|assistant|>get_weather\n```python\ntool_call({py_kwargs(ARGS)})\n```<|observation|>"
    assert call in text
    ours, theirs = _jinja_ids(t, conv)
    assert ours == theirs
    reply = parse_reply(f"get_weather\n```python\ntool_call({py_kwargs(ARGS)})\n```", t)
    assert reply.tool_calls == [ToolCall("get_weather", ARGS)] and reply.content == ""
    spread = parse_reply('f\n```python\ntool_call(**{"not-an-identifier": 1}, b=2)\n```', t)
    assert spread.tool_calls == [ToolCall("f", {"not-an-identifier": 1, "b": 2})]


def test_chatglm3_code_calls_are_never_evaluated_and_bad_names_are_refused():
    t = get_template("chatglm3")
    hostile = "f\n```python\ntool_call(x=__import__('os').system('echo hi'))\n```"
    reply = parse_reply(hostile, t)
    assert reply.tool_calls == [] and "__import__" in reply.content  # not a literal: stays text, nothing runs
    with pytest.raises(ChatforgeError, match="chatglm3_json"):
        render_text(Conversation([Message("user", "x"), Message("assistant", "", [ToolCall("f", {"a-b": 1})])]), t)


# ---------------------------------------------------------------------------------------------------------- Ollama


@pytest.mark.parametrize("name, why", [("mistral", "ids"), ("chatglm3", "code-style")])
def test_ollama_export_refuses_tool_formats_it_cannot_write(name, why):
    from chatforge.export.modelfile import modelfile_text, to_go_template

    with pytest.raises(NotSupportedError, match=rf"'{name}'.*{why}.*without --ollama"):
        to_go_template(get_template(name))
    with pytest.raises(NotSupportedError):
        modelfile_text("model-q8_0.gguf", get_template(name), 4096)
    assert "tool_call" not in to_go_template(get_template("chatglm3_json"))


def test_ollama_export_writes_the_llama31_header_with_its_date():
    from chatforge.export.modelfile import to_go_template

    go = to_go_template(with_date(get_template("llama3.1"), "05 Mar 2025"))
    assert "Today Date: 05 Mar 2025" in go and "Environment: ipython" in go


def test_data_show_default_picks_llama31_for_a_dated_template():
    from chatforge.models.loading import default_template_for

    tok = tiny_tokenizer()
    tok.chat_template = HAND_LLAMA31
    assert default_template_for(tok) == "llama3.1"


def test_use_model_jinja_renders_a_fixed_date_not_today():
    """Training on a 3.2-style template's own Jinja: the date is the template's (stable text and cache), not the
    day the run happens to start."""
    tok = tiny_tokenizer()
    tok.chat_template = HAND_LLAMA31
    conv = Conversation([Message("user", "Hi"), Message("assistant", "Hello")])
    for date, want in ((None, "26 Jul 2024"), ("05 Mar 2025", "05 Mar 2025")):
        choice = choose_template(tok, use_model_jinja=True, date=date)
        text = tok.decode(encode_conversation(conv, tok, choice.template).input_ids)
        assert f"Today Date: {want}\n\n" in text
