"""An Ollama `Modelfile` whose TEMPLATE (Go template syntax) is generated from chatforge's template definition.

The TEMPLATE walks Ollama's `.Messages` (Role, Content, ToolCalls) and `.Tools` and writes the same pieces, switch by
switch, as `chatforge.templates.render`: BOS, the first system message (or the template's default system prompt)
with the tool block (in the system prompt, or before the first user turn as Mistral does), the system prompt folded
into the first user turn (Llama 2, Mistral, Gemma), user / assistant / tool turns with the reply prefix, tool calls in
the template's own syntax (`<tool_call>` JSON, Llama 3's bare JSON, ChatGLM3's name line, Mistral's `[TOOL_CALLS]`
list), back-to-back tool results sharing one turn (Qwen2.5), ChatGLM3's final `</s>`, and the assistant header as the
generation prompt when the last message is not the assistant's. Every literal is a quoted Go string action, so no
whitespace trimming can change it. The only difference from training: Ollama prints tool specs and tool-call
arguments as compact JSON (no spaces, no indent, keys sorted, an empty tool description left out), where chatforge's
renderer writes `json.dumps` spacing.

Not expressible in a Go template (no string functions, no arithmetic), so `to_go_template` raises NotSupportedError:
Qwen3's thinking blocks (`qwen3`, `qwen3_nothink`), a `{round}` counter in the user turn, and templates that render
with the model's own Jinja (`template.use_model_jinja`).

Also written: `FROM` the GGUF file, `SYSTEM` (the template's default system prompt, if any), `PARAMETER stop` for
the end-of-turn marker, `PARAMETER num_ctx` from the model's context length.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from chatforge.errors import ChatforgeError, NotSupportedError
from chatforge.templates.formats import TEMPLATES, ChatTemplate, get_template
from chatforge.templates.render import _parts, to_jinja

_MARK = "\u0000chatforge-default-system\u0000"


def find_template(jinja: str) -> ChatTemplate | None:
    """The built-in template (with its default system prompt, possibly a custom one) whose Jinja is `jinja`."""
    for template in TEMPLATES.values():
        if to_jinja(template) == jinja:
            return template
    for template in TEMPLATES.values():
        before, _, after = to_jinja(template.with_default_system(_MARK)).partition(json.dumps(_MARK))
        if jinja.startswith(before) and jinja.endswith(after) and len(jinja) > len(before) + len(after):
            try:
                value = json.loads(jinja[len(before) : len(jinja) - len(after)])
            except ValueError:
                continue
            candidate = template.with_default_system(value)
            if isinstance(value, str) and to_jinja(candidate) == jinja:
                return candidate
    return None


def _q(text: str) -> str:
    """A Go template action printing `text` literally (JSON string escapes are valid Go string escapes)."""
    return "{{ " + json.dumps(text, ensure_ascii=False) + " }}" if text else ""


def _piece(piece: str, exprs: dict[str, str]) -> str:
    """A template piece as Go actions: literals quoted, placeholders printed from `exprs` (others print nothing,
    as chatforge's renderer drops a placeholder it has no value for)."""
    out = []
    for text, key in _parts(piece):
        if key is None:
            out.append(_q(text))
        elif key in exprs:
            out.append(exprs[key])
    return "".join(out)


def _refuse(t: ChatTemplate) -> None:
    """NotSupportedError for the parts of a template that Go's text/template (Ollama's funcs) cannot express."""
    if t.model_jinja is not None:
        raise NotSupportedError(
            f"template {t.name!r} renders with the model's own Jinja (template.use_model_jinja); no Ollama TEMPLATE "
            "can be generated from it"
        )
    if t.reasoning != "none":
        raise NotSupportedError(
            f"template {t.name!r}: Qwen3 thinking blocks (reasoning: {t.reasoning}) cannot be written as an Ollama "
            "TEMPLATE: they need the `<think>...</think>` part of a reply split off and kept only on the replies "
            "after the last user turn, and Go templates have no string functions"
        )
    if "{round}" in t.user:
        raise NotSupportedError(
            f"template {t.name!r}: the {{round}} counter in the user turn cannot be written as an Ollama TEMPLATE "
            "(Go templates have no arithmetic)"
        )
    if t.call_ids:
        raise NotSupportedError(
            f"template {t.name!r}: its tool calls carry ids (Mistral's 9-character call ids, quoted again by each "
            "tool result) that chatforge derives from the call; Ollama's template data has no such id to print, so "
            "a TEMPLATE would teach the model a different call format than it was trained on. Export without "
            "--ollama, or train with a template whose calls have no ids"
        )
    if "{kwargs}" in t.tool_call:
        raise NotSupportedError(
            f"template {t.name!r}: code-style tool calls (ChatGLM3's tool_call(name=value) with Python literals) "
            "cannot be written as an Ollama TEMPLATE: Go templates can only print the arguments as JSON. Export "
            "without --ollama, or use template chatglm3_json (name + JSON arguments)"
        )
    if "{id}" in t.tool or "{id}" in t.tool_call:
        raise NotSupportedError(f"template {t.name!r}: call ids ({{id}}) cannot be written as an Ollama TEMPLATE")


def to_go_template(t: ChatTemplate) -> str:
    """The template as an Ollama TEMPLATE (Go text/template over .Messages and .Tools).

    Raises NotSupportedError for templates Go templates cannot express (Qwen3 thinking, {round}, model Jinja,
    Mistral's call ids, ChatGLM3's code-style calls)."""
    _refuse(t)
    item_open, item_close = ('{"type": "function", "function": ', "}") if t.tools_item == "openai" else ("", "")
    join = ", " if t.tools_layout == "json_list" else t.tools_join
    specs = (
        "{{- range $i, $t := $.Tools }}{{- if $i }}" + _q(join) + "{{- end }}"
        + _q(item_open) + "{{- $t.Function }}" + _q(item_close) + "{{- end }}"
    )  # fmt: skip
    if t.tools_layout == "json_list":
        specs = _q("[") + specs + _q("]")
    tools_block = _q(t.tools_intro) + specs + _q(t.tools_outro)
    # The system text: the system prompt, then (tools placed in the system) a blank line if any and the tool block.
    system_body = "{{- $sys }}"
    if t.tools_placement == "system":
        system_body += "{{- if $.Tools }}{{- if $sys }}" + _q("\n\n") + "{{- end }}" + tools_block + "{{- end }}"
    # No system message: the template's default system prompt, as chatforge's renderer does.
    default = (
        ""
        if t.default_system is None
        else "{{- else }}{{- $sys = " + json.dumps(t.default_system) + " }}{{- $hasSys = true }}"
    )
    pending = "(or $hasSys $.Tools)" if t.tools_placement == "system" else "$hasSys"
    if t.system_header:  # Llama 3.1: the dated header opens the system turn of every conversation (date fixed)
        note = "{{- if $.Tools }}" + _q(t.tools_system_note) + "{{- end }}" if t.tools_system_note else ""
        system_body = note + _q(t.system_header.replace("{date}", t.date or "")) + system_body
        pending = "true"
    lines = [
        '{{- $msgs := .Messages }}{{- $sys := "" }}{{- $hasSys := false }}{{- $lastRole := "" }}'
        "{{- $inTool := false }}{{- $toolsDue := true }}",
        '{{- if and $msgs (eq (index $msgs 0).Role "system") }}'
        "{{- $sys = (index $msgs 0).Content }}{{- $hasSys = true }}{{- $msgs = slice $msgs 1 }}"
        + default
        + "{{- end }}",
        "{{- $pending := " + pending + " }}",
    ]
    if t.bos:
        lines.append("{{- " + json.dumps(t.bos, ensure_ascii=False) + " }}")
    content = {"content": "{{- $m.Content }}"}
    user_open, _, user_close = t.user.partition("{content}")
    user = ""
    if t.tools_placement == "before_first_user":
        user += "{{- if and $toolsDue $.Tools }}" + tools_block + "{{- end }}{{- $toolsDue = false }}"
    if t.system_in_first_user is None:
        lines.append("{{- if $pending }}" + _piece(t.system, {"content": system_body}) + "{{- end }}")
        user += _piece(t.user, content)
    else:
        user += (
            "{{- if $pending }}" + _piece(user_open, {}) + _piece(t.system_in_first_user, {"content": system_body})
            + "{{- $m.Content }}" + _piece(user_close, {}) + "{{- $pending = false }}{{- else }}"
            + _piece(t.user, content) + "{{- end }}"
        )  # fmt: skip
    call_json = (
        _q('{"name": ') + '{{- printf "%q" $c.Function.Name }}' + _q(f', "{t.call_args_key}": ')
        + "{{- $c.Function.Arguments }}" + _q("}")
    )  # fmt: skip
    call = _piece(
        t.tool_call,
        {"call": call_json, "name": "{{- $c.Function.Name }}", "arguments": "{{- $c.Function.Arguments }}"},
    )
    block_open, _, block_close = t.tool_calls_block.partition("{calls}")
    assistant = (
        _q(t.assistant_header) + "{{- if $m.Content }}" + _q(t.reply_prefix) + "{{- $m.Content }}{{- end }}"
        + "{{- if $m.ToolCalls }}{{- if $m.Content }}" + _q(t.content_call_sep) + "{{- end }}" + _q(block_open)
        + "{{- range $j, $c := $m.ToolCalls }}{{- if $j }}" + _q(t.tool_call_join) + "{{- end }}" + call + "{{- end }}"
        + _q(block_close) + "{{- end }}" + _q(t.assistant_end + t.assistant_sep)
    )  # fmt: skip
    tool_close = _piece(t.tool_close, {})
    if t.merge_tool_results:
        # A run of tool results shares one open/close: close it when the run ends (next message or the end).
        tool = (
            "{{- if $inTool }}" + _piece(t.tool_join, {}) + "{{- else }}" + _piece(t.tool_open, {}) + "{{- end }}"
            + _piece(t.tool, content) + "{{- $inTool = true }}"
        )  # fmt: skip
    else:
        tool = _piece(t.tool_open, {}) + _piece(t.tool, content) + tool_close
    lines += [
        "{{- range $m := $msgs }}",
        '{{- if and $inTool (ne $m.Role "tool") }}' + tool_close + "{{- $inTool = false }}{{- end }}",
        '{{- if eq $m.Role "user" }}' + user,
        '{{- else if eq $m.Role "assistant" }}' + assistant,
        '{{- else if eq $m.Role "tool" }}' + tool,
        '{{- else if eq $m.Role "system" }}' + _piece(t.system, content),
        "{{- end }}{{- $lastRole = $m.Role }}",
        "{{- end }}",
        "{{- if $inTool }}" + tool_close + "{{- end }}",
    ]
    if t.train_next_marker and t.final_end:
        lines.append('{{- if eq $lastRole "assistant" }}' + _q(t.final_end) + "{{- end }}")
    lines.append('{{- if ne $lastRole "assistant" }}' + _q(t.assistant_header) + "{{- end }}")
    # Conditions whose body came out empty for this template (e.g. no tool_close) have no effect: drop them.
    text = "\n".join(line for line in (re.sub(r"\{\{- if [^{}]*\}\}\{\{- end \}\}", "", x) for x in lines) if line)
    if '"""' in text:
        raise ChatforgeError(f"template {t.name!r} contains three double quotes; it cannot go in a Modelfile")
    return text


def modelfile_text(gguf_name: str, template: ChatTemplate, num_ctx: int | None) -> str:
    """The Modelfile for a GGUF file in the same folder."""
    lines = [f"FROM ./{gguf_name}", "", f'TEMPLATE """{to_go_template(template)}"""', ""]
    if template.default_system:
        if '"""' in template.default_system:
            raise ChatforgeError("the default system prompt contains three double quotes; it cannot go in a Modelfile")
        lines.append(f'SYSTEM """{template.default_system}"""')
    for stop in template.stop_strings:
        lines.append(f"PARAMETER stop {json.dumps(stop, ensure_ascii=False)}")
    if num_ctx:
        lines.append(f"PARAMETER num_ctx {int(num_ctx)}")
    return "\n".join(lines) + "\n"


def template_for(tokenizer, name: str | None = None) -> ChatTemplate:
    """The chat template to write: `name` if given, else the built-in one the tokenizer's saved Jinja came from."""
    if name:
        return get_template(name)
    jinja = getattr(tokenizer, "chat_template", None)
    found = find_template(jinja) if isinstance(jinja, str) else None
    if found is None:
        raise ChatforgeError(
            "the tokenizer's chat template is not one of chatforge's templates ("
            + ", ".join(TEMPLATES)
            + "), so no Ollama TEMPLATE can be generated from it; pass --template NAME"
        )
    return found


def write_modelfile(path: Path, gguf_name: str, tokenizer, template: str | None = None) -> Path:
    """Write an Ollama Modelfile next to `gguf_name` (num_ctx from the folder's config.json)."""
    path = Path(path)
    num_ctx = None
    config = path.parent / "config.json"
    if config.is_file():
        num_ctx = json.loads(config.read_text(encoding="utf-8")).get("max_position_embeddings")
    if num_ctx is None:
        num_ctx = getattr(tokenizer, "model_max_length", None)
        num_ctx = num_ctx if isinstance(num_ctx, int) and num_ctx < 10_000_000 else None
    path.write_text(modelfile_text(gguf_name, template_for(tokenizer, template), num_ctx), encoding="utf-8")
    return path
