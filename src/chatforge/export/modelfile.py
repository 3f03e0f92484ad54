"""An Ollama `Modelfile` whose TEMPLATE (Go template syntax) is generated from chatforge's template definition.

The TEMPLATE walks Ollama's `.Messages` (Role, Content, ToolCalls) and `.Tools` and writes the same pieces as
`chatforge.templates.render`: the first system message (or the template's default system prompt) plus the tool
block, user / assistant / tool turns, tool calls as `<tool_call>` JSON, and the assistant header as the generation
prompt when the last message is not the assistant's. Every literal is a quoted Go string action, so no whitespace
trimming can change it. The only difference from training: Ollama prints tool specs and tool-call arguments as
compact JSON (no spaces after `,`/`:`, argument keys sorted), where chatforge's renderer writes `json.dumps` spacing.

Also written: `FROM` the GGUF file, `SYSTEM` (the template's default system prompt, if any), `PARAMETER stop` for
the end-of-turn marker, `PARAMETER num_ctx` from the model's context length.
"""

from __future__ import annotations

import json
from pathlib import Path

from chatforge.errors import ChatforgeError
from chatforge.templates.formats import (
    TEMPLATES,
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    TOOLS_INTRO,
    TOOLS_OUTRO,
    ChatTemplate,
    get_template,
)
from chatforge.templates.render import to_jinja

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


def _halves(piece: str) -> tuple[str, str]:
    before, _, after = piece.partition("{content}")
    return before, after


def to_go_template(t: ChatTemplate) -> str:
    """The template as an Ollama TEMPLATE (Go text/template over .Messages and .Tools)."""
    user_open, user_close = _halves(t.user)
    tool_open, tool_close = _halves(t.tool)
    sys_open, sys_close = _halves(t.system) if t.system else ("", "")
    # The system text: the system prompt, then (with tools) a blank line and the tool block.
    system_body = (
        "{{- $sys }}{{- if $.Tools }}{{- if $sys }}" + _q("\n\n") + "{{- end }}" + _q(TOOLS_INTRO)
        + "{{- range $i, $t := $.Tools }}{{- if $i }}" + _q("\n") + "{{- end }}"
        + _q('{"type": "function", "function": ') + "{{- $t.Function }}" + _q("}") + "{{- end }}"
        + _q(TOOLS_OUTRO) + "{{- end }}"
    )  # fmt: skip
    # No system message: the template's default system prompt, as chatforge's renderer does.
    default = (
        ""
        if t.default_system is None
        else "{{- else }}{{- $sys = " + json.dumps(t.default_system) + " }}{{- $hasSys = true }}"
    )
    lines = [
        '{{- $msgs := .Messages }}{{- $sys := "" }}{{- $hasSys := false }}{{- $lastRole := "" }}',
        '{{- if and $msgs (eq (index $msgs 0).Role "system") }}'
        "{{- $sys = (index $msgs 0).Content }}{{- $hasSys = true }}{{- $msgs = slice $msgs 1 }}"
        + default
        + "{{- end }}",
        "{{- $pending := or $hasSys $.Tools }}",
    ]
    if t.bos:
        lines.append("{{- " + json.dumps(t.bos) + " }}")
    if t.system_in_first_user is None:
        lines.append("{{- if $pending }}" + _q(sys_open) + system_body + _q(sys_close) + "{{- end }}")
        lines.append("{{- $pending = false }}")
        first_user = ""
    else:
        fold_open, fold_close = _halves(t.system_in_first_user)
        first_user = (
            "{{- if $pending }}" + _q(user_open + fold_open) + system_body + _q(fold_close)
            + "{{- $m.Content }}" + _q(user_close) + "{{- $pending = false }}{{- else }}"
        )  # fmt: skip
    call = (
        "{{- range $j, $c := $m.ToolCalls }}{{- if or $j $m.Content }}" + _q("\n") + "{{- end }}"
        + _q(TOOL_CALL_OPEN + '{"name": ') + '{{- printf "%q" $c.Function.Name }}' + _q(', "arguments": ')
        + "{{- $c.Function.Arguments }}" + _q("}" + TOOL_CALL_CLOSE) + "{{- end }}"
    )  # fmt: skip
    lines += [
        "{{- range $m := $msgs }}{{- $lastRole = $m.Role }}",
        '{{- if eq $m.Role "user" }}' + first_user + _q(user_open) + "{{- $m.Content }}" + _q(user_close)
        + ("{{- end }}" if first_user else ""),
        '{{- else if eq $m.Role "assistant" }}' + _q(t.assistant_header) + "{{- $m.Content }}" + call
        + _q(t.assistant_end + t.assistant_sep),
        '{{- else if eq $m.Role "tool" }}' + _q(tool_open) + "{{- $m.Content }}" + _q(tool_close),
        '{{- else if eq $m.Role "system" }}' + _q(sys_open) + "{{- $m.Content }}" + _q(sys_close),
        "{{- end }}",
        "{{- end }}",
        '{{- if ne $lastRole "assistant" }}' + _q(t.assistant_header) + "{{- end }}",
    ]  # fmt: skip
    text = "\n".join(lines)
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
