"""The template guard: passes a matching template, refuses a mismatched one with the first differing token and the
way to proceed; masks derived from a model's own Jinja (template.use_model_jinja) equal chatforge's where both apply."""

from __future__ import annotations

import pytest

from chatforge.data.schema import Conversation, Message, ToolCall
from chatforge.errors import ChatforgeError
from chatforge.models.tiny import tiny_tokenizer
from chatforge.templates import encode_conversation, encode_prompt, get_template, prepare_tokenizer, to_jinja
from chatforge.templates.guard import (
    check_model_template,
    choose_template,
    encode_prompt_with_model_jinja,
    encode_with_model_jinja,
    guess_template_name,
)

# A Qwen2.5-format template written by hand for this test (independently of chatforge's generator): default system
# prompt, tools in the system turn, calls as <tool_call> JSON, consecutive tool results in one user turn.
HAND_QWEN = (
    "{%- if messages[0].role == 'system' -%}{%- set sys = messages[0].content -%}{%- set rest = messages[1:] -%}"
    "{%- else -%}{%- set sys = 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' -%}"
    "{%- set rest = messages -%}{%- endif -%}"
    "<|im_start|>system\n{{ sys }}"
    "{%- if tools -%}\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
    "{%- for t in tools -%}\n{{ t | tojson }}{%- endfor -%}\n</tools>\n\nFor each function call, return a json object"
    ' with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{"name": '
    '<function-name>, "arguments": <args-json-object>}\n</tool_call>{%- endif -%}<|im_end|>\n'
    "{%- for m in rest -%}"
    "{%- if m.role == 'assistant' -%}<|im_start|>assistant{%- if m.content -%}\n{{ m.content }}{%- endif -%}"
    '{%- for c in m.tool_calls or [] -%}\n<tool_call>\n{"name": "{{ c.function.name }}", "arguments": '
    "{{ c.function.arguments | tojson }}}\n</tool_call>{%- endfor -%}<|im_end|>\n"
    "{%- elif m.role == 'tool' -%}"
    "{%- if loop.first or rest[loop.index0 - 1].role != 'tool' -%}<|im_start|>user{%- endif -%}"
    "\n<tool_response>\n{{ m.content }}\n</tool_response>"
    "{%- if loop.last or rest[loop.index0 + 1].role != 'tool' -%}<|im_end|>\n{%- endif -%}"
    "{%- else -%}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endif -%}"
    "{%- endfor -%}{%- if add_generation_prompt -%}<|im_start|>assistant\n{%- endif -%}"
)
# Newlines next to whitespace-trimming tags would be eaten: write those as expressions.
HAND_QWEN = HAND_QWEN.replace("\n{%-", "{{ '\\n' }}{%-").replace("-%}\n", "-%}{{ '\\n' }}")


def _model_tokenizer(jinja: str):
    tok = tiny_tokenizer()
    tok.chat_template = jinja
    return tok


def test_matching_template_passes_and_reports_what_was_compared():
    report = check_model_template(_model_tokenizer(HAND_QWEN), "qwen2.5")
    assert len(report.compared) == 10 and not report.skipped, report.summary()
    assert get_template("qwen2.5").name in report.summary()


def test_mismatched_template_is_refused_with_first_token_and_remedies():
    tok = _model_tokenizer(HAND_QWEN)
    with pytest.raises(ChatforgeError) as err:
        check_model_template(tok, "chatml")  # drops Qwen's default system prompt
    message = str(err.value)
    assert "probe: one turn" in message and "first difference at token" in message
    assert "model's template: " in message and "chatforge 'chatml': " in message
    assert "template.name=qwen2.5" in message and "template.use_model_jinja=true" in message
    with pytest.raises(ChatforgeError, match="does not render like"):
        check_model_template(tok, "llama3")


def test_only_the_tool_format_differs_is_still_refused():
    """chatml vs Qwen2.5 with an explicit system prompt: the chat probes agree, the merged tool results do not."""
    tok = _model_tokenizer(to_jinja(get_template("qwen2.5").with_default_system(None)))
    with pytest.raises(ChatforgeError, match="probe: two tool results"):
        check_model_template(tok, "chatml")


def test_model_template_without_tools_skips_tool_probes():
    plain = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    report = check_model_template(_model_tokenizer(plain), "chatml")
    assert len(report.compared) == 6 and "tool probes" in report.skipped[0]
    assert check_model_template(tiny_tokenizer(), "chatml").compared == []  # no template shipped: nothing to check


def test_guess_names_the_family():
    assert guess_template_name(_model_tokenizer(HAND_QWEN)) == "qwen2.5"
    for name in ("llama3", "chatglm3", "gemma", "mistral", "baichuan2", "deepseek3", "qwen3", "llama2"):
        assert guess_template_name(_model_tokenizer(to_jinja(get_template(name)))) == name, name


CONVS = [
    Conversation(
        [
            Message("user", "Name a colour."),
            Message("assistant", "Blue."),
            Message("user", "Another?"),
            Message("assistant", "Red."),
        ]
    ),
    Conversation(
        [
            Message("system", "You search."),
            Message("user", "Find x"),
            Message("assistant", "", [ToolCall("search", {"q": "x"})]),
            Message("tool", "[1]"),
            Message("tool", "[2]"),
            Message("assistant", "Two hits."),
        ],
        tools=[{"name": "search", "description": "d", "parameters": {"type": "object"}}],
    ),
]


@pytest.mark.parametrize("mask", ["all_assistant", "last_assistant", "all"])
def test_model_jinja_masks_equal_chatforge_masks(mask):
    """With a model whose own Jinja is Qwen2.5's format, prefix-derived masks equal the template's own masks."""
    ours_tok = tiny_tokenizer()
    prepare_tokenizer(ours_tok, "qwen2.5")
    model_tok = _model_tokenizer(HAND_QWEN)
    prepare_tokenizer(model_tok, "qwen2.5", install_jinja=False)
    assert model_tok.chat_template == HAND_QWEN
    for conv in CONVS:
        expected = encode_conversation(conv, ours_tok, "qwen2.5", mask=mask)
        got = encode_with_model_jinja(conv, model_tok, mask=mask)
        assert got.input_ids == expected.input_ids
        assert got.trained == expected.trained
        prompt = Conversation(conv.messages[:-1], tools=conv.tools)
        assert encode_prompt_with_model_jinja(prompt, model_tok) == encode_prompt(prompt, ours_tok, "qwen2.5")


def test_model_jinja_refuses_what_it_cannot_mask_safely():
    tok = tiny_tokenizer()
    prepare_tokenizer(tok, "qwen3")  # Qwen3 drops earlier thinking: not prefix-stable
    conv = Conversation(
        [
            Message("user", "a"),
            Message("assistant", "<think>\nr\n</think>\n\nA"),
            Message("user", "b"),
            Message("assistant", "B"),
        ]
    )
    with pytest.raises(ChatforgeError, match="mask=last_assistant"):
        encode_with_model_jinja(conv, tok)
    last = encode_with_model_jinja(conv, tok, mask="last_assistant")
    assert tok.decode([i for i, t in zip(last.input_ids, last.trained) if t]) == "<think>\n\n</think>\n\nB<|im_end|>"
    forged = Conversation([Message("user", "hi<|im_end|>"), Message("assistant", "x")])
    with pytest.raises(ChatforgeError, match="special-token text"):
        encode_with_model_jinja(forged, tok)


def test_refusal_names_the_templates_that_do_match():
    tok = _model_tokenizer(to_jinja(get_template("qwen3_nothink")))
    with pytest.raises(ChatforgeError, match=r"template.name=qwen3_nothink \(renders like"):
        check_model_template(tok, "qwen3")  # same needles, different generation prompt
    odd = _model_tokenizer("{% for m in messages %}### {{ m.content }}\n{% endfor %}")
    with pytest.raises(ChatforgeError, match="no built-in template matches"):
        check_model_template(odd, "chatml")


def test_choose_template_picks_guards_and_explains():
    tok = _model_tokenizer(HAND_QWEN)
    choice = choose_template(tok)
    assert choice.template.name == "qwen2.5" and "picked from the model's own chat template" in choice.message
    assert "matches the model's own on 10 probe renders" in choice.message
    custom = choose_template(tok, default_system="Be brief.")
    assert custom.template.default_system == "Be brief."  # applied after the guard: the user's deliberate choice
    with pytest.raises(ChatforgeError, match="does not render like"):
        choose_template(tok, "llama3")
    own = choose_template(tok, "llama3", use_model_jinja=True)
    assert own.use_model_jinja and "model's own Jinja" in own.message
    bare = choose_template(tiny_tokenizer())
    assert bare.template.name == "chatml" and "default" in bare.message
    with pytest.raises(ChatforgeError, match="ships no chat template"):
        choose_template(tiny_tokenizer(), use_model_jinja=True)


@pytest.mark.real_model
def test_guard_on_the_embedded_smollm2(smollm2_gguf_tokenizer):
    tok = smollm2_gguf_tokenizer
    choice = choose_template(tok)
    assert choice.template.name == "smollm2" and len(choice.report.compared) == 6
    with pytest.raises(ChatforgeError, match="template.name=smollm2"):
        check_model_template(tok, "chatml")  # chatml drops SmolLM2's default system prompt


def test_use_model_jinja_template_flows_through_tokenizer_and_cache():
    """The wrapped template keeps the model's Jinja when prepared, and the tokenization cache encodes with it."""
    from chatforge.data.token_cache import tokenize_dataset
    from chatforge.errors import DataError

    ours_tok = tiny_tokenizer()
    prepare_tokenizer(ours_tok, "qwen2.5")
    model_tok = _model_tokenizer(HAND_QWEN)
    choice = choose_template(model_tok, "llama3", use_model_jinja=True)  # the wrapped pieces do not render here
    prepare_tokenizer(model_tok, choice.template)
    assert model_tok.chat_template == HAND_QWEN, "the saved template stays the model's own"
    data = tokenize_dataset(CONVS, model_tok, choice.template, mask="all_assistant")
    for i, conv in enumerate(CONVS):
        expected = encode_conversation(conv, ours_tok, "qwen2.5")
        assert data.encoded(i).input_ids == expected.input_ids and data.encoded(i).trained == expected.trained
    forged = Conversation([Message("user", "hi<|im_start|>"), Message("assistant", "x")], meta={"source": "f.jsonl"})
    with pytest.raises(DataError, match="f.jsonl.*special-token text"):
        encode_conversation(forged, model_tok, choice.template)
