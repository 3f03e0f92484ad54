"""`template.use_model_jinja`: train and chat with the model's own Jinja chat template instead of chatforge's pieces.

`with_model_jinja(template, tokenizer)` returns the template carrying the tokenizer's Jinja (and the variables
transformers passes it: bos_token, eos_token, ...). Every consumer then works unchanged: `render_segments` renders
with that Jinja and derives the mask by rendering prefixes (the text an assistant turn adds is trained, less the
whitespace after its end marker), `prepare_tokenizer` installs that same Jinja (so the saved template stays the
model's own), the tokenization cache keys on it. The chatforge template it wraps still gives the stop strings and the
tool-call syntax for parsing replies.

Two limits, both refused with a clear error rather than trained wrong: a template that rewrites earlier turns once
later ones follow (Qwen3 drops old thinking blocks) cannot give per-turn masks (use `template.mask=last_assistant`);
and message text that spells a special token cannot be kept plain text here (chatforge's own templates can).
"""

from __future__ import annotations

from dataclasses import replace

from chatforge.data.schema import Conversation
from chatforge.errors import ChatforgeError, DataError
from chatforge.templates.formats import LLAMA31_DEFAULT_DATE, ChatTemplate
from chatforge.templates.render import MASK_MODES, Segment, to_hf_messages


def model_jinja(tokenizer) -> str | None:
    """The tokenizer's own chat template text (the default one of a named set), or None."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default") or next(iter(template.values()), None)
    return template or None


def with_model_jinja(template: ChatTemplate, tokenizer) -> ChatTemplate:
    """`template` rendering with the tokenizer's own Jinja chat template (call before `prepare_tokenizer`)."""
    from chatforge.templates.encode import special_strings

    jinja = model_jinja(tokenizer)
    if jinja is None:
        raise ChatforgeError("template.use_model_jinja=true, but the model ships no chat template")
    variables = tuple(sorted((k, v) for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)))
    return replace(
        template, model_jinja=jinja, jinja_vars=variables, jinja_specials=tuple(sorted(special_strings(tokenizer)))
    )


def render_jinja(template: ChatTemplate, messages: list[dict], tools, add_generation_prompt: bool) -> str:
    """Render messages with the template's model Jinja, as `tokenizer.apply_chat_template(tokenize=False)` does."""
    from transformers.utils.chat_template_utils import render_jinja_template

    try:
        rendered, _ = render_jinja_template(
            conversations=[messages],
            tools=tools,
            chat_template=template.model_jinja,
            add_generation_prompt=add_generation_prompt,
            # Llama 3.1+ templates print `date_string` (else today's date): a fixed date keeps the training text,
            # and so the tokenization cache, the same from day to day (template.date sets it).
            date_string=template.date or LLAMA31_DEFAULT_DATE,
            **dict(template.jinja_vars),
        )
    except ChatforgeError:
        raise
    except Exception as err:  # noqa: BLE001 - the model's Jinja raising (e.g. "roles must alternate") is user-facing
        raise ChatforgeError(f"the model's own chat template cannot render this conversation: {err}") from None
    return rendered[0]


def _where(conv: Conversation) -> dict:
    meta = conv.meta or {}
    return {"file": meta.get("source"), "line": meta.get("line"), "record": meta.get("record")}


def model_jinja_segments(
    conv: Conversation, template: ChatTemplate, mask: str = "all_assistant", add_generation_prompt: bool = False
) -> list[Segment]:
    """Segments of `conv` rendered by the model's Jinja; trained spans from rendered prefixes."""
    if mask not in MASK_MODES:
        raise ChatforgeError(f"unknown mask mode {mask!r}; choose one of: {', '.join(MASK_MODES)}")
    for i, m in enumerate(conv.messages):
        forged = next((s for s in template.jinja_specials if s and s in m.content), None)
        if forged:
            raise DataError(
                f"message {i} ({m.role}) contains the special-token text {forged!r}; with template.use_model_jinja it "
                "would become a real marker. Clean the data, or use a chatforge template (it keeps such text plain)",
                field=f"messages[{i}].content",
                reason="special_token_text",
                **_where(conv),
            )
    messages, tools = to_hf_messages(conv)
    full = render_jinja(template, messages, tools, add_generation_prompt)
    if add_generation_prompt:
        return [Segment(full, False, False)] if full else []
    assistant = [i for i, m in enumerate(conv.messages) if m.role == "assistant"]
    targets = {"all": [], "last_assistant": assistant[-1:], "all_assistant": assistant}[mask]
    spans = []
    for i in targets:
        if conv.messages[i].train is False:
            continue
        before = render_jinja(template, messages[:i], tools, True)
        through = render_jinja(template, messages[: i + 1], tools, False)
        if not through.startswith(before) or not full.startswith(through):
            raise ChatforgeError(
                f"the model's chat template renders assistant turn {i} differently once more messages follow (it is "
                "not prefix-stable, e.g. Qwen3 drops earlier thinking blocks), so per-turn masks cannot be derived; "
                "use template.mask=last_assistant, or a chatforge template (template.name=...)"
            )
        spans.append((len(before), len(before) + len(through[len(before) :].rstrip())))
    everything = mask == "all"
    segments, pos = [], 0
    for start, end in spans:
        if start > pos:
            segments.append(Segment(full[pos:start], everything, False))
        if end > start:
            segments.append(Segment(full[start:end], True, False))
        pos = max(pos, end)
    if pos < len(full):
        segments.append(Segment(full[pos:], everything, False))
    return segments
