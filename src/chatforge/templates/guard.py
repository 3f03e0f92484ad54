"""Guard against training or serving a model with a chat template other than its own, and the way around it.

A model folder or GGUF usually ships a Jinja chat template. `check_model_template(tokenizer, template)` renders a set
of probe conversations (system prompt, multi-turn, tool definitions, tool calls, tool results back to back, the
generation prompt) with that Jinja and with chatforge's template and refuses, naming the first differing token, when
they disagree: training on one format and chatting in another silently degrades a model.

The two ways to proceed: pick the matching chatforge template (`template.name=...`), or keep the model's own format
with `template.use_model_jinja: true` (`choose_template(..., use_model_jinja=True)` returns the template wrapping the
model's Jinja, see `chatforge.templates.model_jinja`): masks come from rendering prefixes of each conversation with
the model's Jinja, and the saved template stays the model's own.

`guess_template_name(tokenizer)` names the built-in template that a tokenizer's own Jinja looks like.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

from chatforge.data.schema import Conversation, Message, ToolCall
from chatforge.errors import ChatforgeError
from chatforge.templates.encode import Encoded, encode_conversation, encode_prompt, prepare_tokenizer, special_strings
from chatforge.templates.formats import (
    CHATML,
    LLAMA31_DEFAULT_DATE,
    ChatTemplate,
    check_date,
    get_template,
    with_date,
)
from chatforge.templates.model_jinja import model_jinja, with_model_jinja
from chatforge.templates.render import to_hf_messages

_PROBE_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def probe_conversations() -> list[tuple[str, str, Conversation]]:
    """(name, kind, conversation) probes; kind 'chat' or 'tools' (skipped when the model's template has no tools)."""
    call = Message("assistant", "", [ToolCall("get_weather", {"city": "Paris"})])
    return [
        ("one turn", "chat", Conversation([Message("user", "Hello!"), Message("assistant", "Hi, how can I help?")])),
        (
            "system prompt",
            "chat",
            Conversation([Message("system", "You are terse."), Message("user", "2+2?"), Message("assistant", "4")]),
        ),
        (
            "multi-turn",
            "chat",
            Conversation(
                [
                    Message("user", "Name a colour."),
                    Message("assistant", "Blue."),
                    Message("user", "Another one?"),
                    Message("assistant", "Red."),
                ]
            ),
        ),
        (
            "tool call and result",
            "tools",
            Conversation(
                [
                    Message("user", "Weather in Paris?"),
                    call,
                    Message("tool", '{"temp_c": 21}'),
                    Message("assistant", "It is 21 °C."),
                ],
                tools=[_PROBE_TOOL],
            ),
        ),
        (
            "two tool results",
            "tools",
            Conversation(
                [
                    Message("system", "You check the weather."),
                    Message("user", "Paris and Rome?"),
                    Message(
                        "assistant",
                        "",
                        [ToolCall("get_weather", {"city": "Paris"}), ToolCall("get_weather", {"city": "Rome"})],
                    ),
                    Message("tool", '{"temp_c": 21}'),
                    Message("tool", '{"temp_c": 25}'),
                    Message("assistant", "Paris 21 °C, Rome 25 °C."),
                ],
                tools=[_PROBE_TOOL],
            ),
        ),
    ]


def _jinja_kwargs(template: ChatTemplate | None) -> dict:
    """Variables for rendering a model's own Jinja: Llama 3.1+ templates put `date_string` (else today's date, or
    their default) in the system header; pass the date chatforge's template writes, so a dated header is compared
    like for like instead of failing on the day the check runs."""
    date = template.date if template is not None and template.date else LLAMA31_DEFAULT_DATE
    return {"date_string": date}


def _render_ids(
    tokenizer, jinja: str, conv: Conversation, generation: bool, template: ChatTemplate | None = None
) -> list[int]:
    messages, tools = to_hf_messages(conv)
    out = tokenizer.apply_chat_template(
        messages,
        tools=tools,
        chat_template=jinja,
        tokenize=True,
        add_generation_prompt=generation,
        **_jinja_kwargs(template),
    )
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@dataclass
class GuardReport:
    template: str
    compared: list[str] = field(default_factory=list)  # probe renders that matched
    skipped: list[str] = field(default_factory=list)  # with the reason

    def summary(self) -> str:
        line = f"chat template {self.template!r} matches the model's own on {len(self.compared)} probe renders"
        return line + (f" (skipped: {'; '.join(self.skipped)})" if self.skipped else "")


def _tools_supported(tokenizer, jinja: str, template: ChatTemplate | None = None) -> bool:
    """Does the model's template show tool definitions and tool calls at all?"""
    name, _, conv = probe_conversations()[3]
    messages, tools = to_hf_messages(conv)
    kw = _jinja_kwargs(template)
    try:
        with_tools = tokenizer.apply_chat_template(messages, tools=tools, chat_template=jinja, tokenize=False, **kw)
        without = tokenizer.apply_chat_template(messages, chat_template=jinja, tokenize=False, **kw)
    except Exception:  # noqa: BLE001 - any template error means: this template cannot render tools
        return False
    return with_tools != without and "Paris" in with_tools.split("Weather in Paris?", 1)[-1]


def _show(tokenizer, ids: list[int], k: int) -> str:
    if k >= len(ids):
        return "<end>"
    return f"{tokenizer.decode([ids[k]])!r} (id {ids[k]})"


def _first_mismatch(tokenizer, jinja: str, template: ChatTemplate, report: GuardReport):
    """(probe label, ours, theirs) of the first probe render that differs, or None; fills `report`."""
    ours_tok = tokenizer
    if _missing_markers(tokenizer, template):  # prepare_tokenizer would change it: work on a copy
        ours_tok = copy.deepcopy(tokenizer)
        prepare_tokenizer(ours_tok, template, install_jinja=False)
    tools_ok = _tools_supported(tokenizer, jinja, template)
    if not tools_ok:
        report.skipped.append("tool probes (the model's template has no tool format; chatforge's applies)")
    final_end = ours_tok.encode(template.final_end, add_special_tokens=False) if template.final_end else []
    for name, kind, conv in probe_conversations():
        if kind == "tools" and not tools_ok:
            continue
        prompt = Conversation(conv.messages[:-1], tools=conv.tools)
        for label, c, generation in ((name, conv, False), (f"{name}, generation prompt", prompt, True)):
            try:
                theirs = _render_ids(tokenizer, jinja, c, generation, template)
            except Exception as err:  # noqa: BLE001 - a template that raises cannot render this kind of chat
                report.skipped.append(f"{label} (the model's template raised: {str(err)[:80]})")
                continue
            if generation:
                ours = encode_prompt(c, ours_tok, template)
            else:
                ours = encode_conversation(c, ours_tok, template).input_ids
                if final_end and ours[-len(final_end) :] == final_end and theirs[-len(final_end) :] != final_end:
                    ours = ours[: -len(final_end)]  # the end-of-conversation marker is a training target only
            if ours != theirs:
                return label, ours, theirs
            report.compared.append(label)
    return None


def _missing_markers(tokenizer, template: ChatTemplate) -> list[str]:
    """Markers of `template` that are not yet special tokens of `tokenizer`."""
    specials = set(special_strings(tokenizer))
    return [t for t in template.special_tokens if t not in specials]


def check_model_template(tokenizer, template: ChatTemplate | str) -> GuardReport:
    """Refuse (ChatforgeError) when `template` renders the probe conversations differently from the tokenizer's own
    Jinja chat template. Call it before `prepare_tokenizer` (which replaces the tokenizer's template). Returns a
    report of what was compared; a tokenizer without a chat template passes with nothing compared."""
    template = get_template(template)
    report = GuardReport(template.name)
    jinja = model_jinja(tokenizer)
    if jinja is None:
        report.skipped.append("the model ships no chat template")
        return report
    mismatch = _first_mismatch(tokenizer, jinja, template, report)
    if mismatch is not None:
        _refuse(tokenizer, template, *mismatch)
    return report


def matching_templates(tokenizer) -> list[str]:
    """Built-in templates that render every probe exactly like the tokenizer's own Jinja (slow-ish: one tokenizer
    copy per template; used to suggest a fix)."""
    from chatforge.templates.formats import TEMPLATES

    jinja = model_jinja(tokenizer)
    if jinja is None:
        return []
    found = []
    vocab = tokenizer.get_vocab()
    for name, template in TEMPLATES.items():
        if any(t not in vocab for t in template.special_tokens):
            continue  # its markers would be new tokens: the model's template cannot render them as one token
        report = GuardReport(name)
        if _first_mismatch(tokenizer, jinja, template, report) is None and report.compared:
            found.append(name)
    return found


def _refuse(tokenizer, template: ChatTemplate, label: str, ours: list[int], theirs: list[int]) -> None:
    k = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    context = tokenizer.decode(theirs[max(0, k - 8) : k])
    matches = [m for m in matching_templates(tokenizer) if m != template.name]
    if matches:
        hint = "template.name=" + " or template.name=".join(matches) + " (renders like the model's own)"
    else:
        hint = "no built-in template matches: write a YAML template (template.name=FILE.yaml)"
    raise ChatforgeError(
        f"chat template {template.name!r} does not render like the model's own chat template.\n"
        f"  probe: {label}; first difference at token {k}, after {context!r}:\n"
        f"    model's template: {_show(tokenizer, theirs, k)}\n"
        f"    chatforge {template.name!r}: {_show(tokenizer, ours, k)}\n"
        f"  to proceed: {hint}, or keep the model's own format with template.use_model_jinja=true"
    )


# (needle in the Jinja text, template name): the first found wins, so the specific ones come first.
_NEEDLES = (
    ("You are a helpful AI assistant named SmolLM", "smollm2"),
    ("You are Qwen, created by Alibaba Cloud", "qwen2.5"),
    ("enable_thinking", "qwen3"),
    ("[gMASK]", "chatglm3"),
    ("<|observation|>", "chatglm3"),
    ("<reserved_106>", "baichuan2"),
    ("<start_of_turn>", "gemma"),
    ("<｜User｜>", "deepseek3"),
    ("<｜Assistant｜>", "deepseek3"),
    ("[AVAILABLE_TOOLS]", "mistral"),
    ("[TOOL_CALLS]", "mistral"),
    ("<<SYS>>", "llama2"),
    ("Cutting Knowledge Date", "llama3.1"),
    ("<|start_header_id|>", "llama3"),
    ("<|im_start|>", "chatml"),
    ("Human: ", "human_assistant"),
    ("Assistant:", "deepseek"),
    ("[INST]", "mistral"),
)


def guess_template_name(tokenizer) -> str | None:
    """The built-in template a tokenizer's own chat template looks like (by marker text), or None."""
    jinja = model_jinja(tokenizer)
    if not jinja:
        return None
    for needle, name in _NEEDLES:
        if needle in jinja:
            return name
    return None


# ----------------------------------------------------------------------------------------------- use_model_jinja


def encode_with_model_jinja(
    conv: Conversation, tokenizer, mask: str = "all_assistant", max_length: int | None = None
) -> Encoded:
    """Ids and trained mask of `conv` rendered by the tokenizer's own Jinja chat template (template.use_model_jinja).

    A trained assistant turn is the text it adds: render(messages[:i+1]) minus render(messages[:i]) with the
    generation prompt, less trailing whitespace after its end marker. Raises ChatforgeError when the template does
    not render earlier turns as a prefix of later renders (Qwen3 drops old thinking blocks: use
    mask=last_assistant there), or DataError when message text spells a special token. Same result as
    `encode_conversation(conv, tokenizer, with_model_jinja(template, tokenizer), mask)` for any template."""
    return encode_conversation(conv, tokenizer, with_model_jinja(CHATML, tokenizer), mask, max_length)


def encode_prompt_with_model_jinja(conv: Conversation, tokenizer) -> list[int]:
    """The generation prompt rendered by the tokenizer's own Jinja chat template."""
    return encode_prompt(conv, tokenizer, with_model_jinja(CHATML, tokenizer))


# ---------------------------------------------------------------------------------------------- choosing a template


@dataclass
class TemplateChoice:
    """The template a run uses, how it was chosen, and what the guard compared (print `message` at start)."""

    template: ChatTemplate
    use_model_jinja: bool
    source: str
    report: GuardReport | None = None

    @property
    def message(self) -> str:
        if self.use_model_jinja:
            return (
                f"chat template: the model's own Jinja (template.use_model_jinja; {self.template.name!r} gives "
                "stop strings and the tool-call syntax)"
            )
        line = f"chat template: {self.template.name} ({self.source})"
        if self.report is not None and self.report.compared:
            line += f"; matches the model's own on {len(self.report.compared)} probe renders"
        elif self.report is not None and self.report.skipped:
            line += f"; {self.report.skipped[0]}"
        return line


def choose_template(
    tokenizer,
    name: str | None = None,
    *,
    use_model_jinja: bool = False,
    default_system: str | None = None,
    fallback: str = "chatml",
    check: bool = True,
    date: str | None = None,
) -> TemplateChoice:
    """Pick the run's template: `name` (template.name) if given, else the family the tokenizer's own Jinja looks like,
    else `fallback`; then guard it against the model's own template (unless `use_model_jinja`, or `check=False` for
    tokenizers chatforge just built). `default_system` (template.default_system) is applied after the check: it is the
    user's deliberate change. `date` (template.date, "DD Mon YYYY" or "today") sets a dated template's header (Llama
    3.1) before the check. Call before `prepare_tokenizer`."""
    if name:
        template, source = get_template(name), "template.name"
    else:
        guess = guess_template_name(tokenizer)
        if guess:
            template, source = get_template(guess), "picked from the model's own chat template"
        else:
            template, source = get_template(fallback), "the model has no recognisable chat template; default"
    if date is not None and use_model_jinja:  # the model's own Jinja gets it as date_string
        template = replace(template, date=check_date(date))
    elif date is not None:  # template.date: the guard compares with the model's Jinja rendered for that date
        template = with_date(template, date)
    report = None
    if use_model_jinja:
        template = with_model_jinja(template, tokenizer)
    elif check:
        report = check_model_template(tokenizer, template)
    if default_system is not None:
        template = template.with_default_system(default_system)
    return TemplateChoice(template, use_model_jinja, source, report)
