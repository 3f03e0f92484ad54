"""Render a conversation into text segments that know whether they are trained, and into Jinja for tokenizers.

`render_segments` is the single place where loss masking is decided: every other part of chatforge (training, the
tokenization cache, `chatforge data show`, evaluation's loss) gets its mask from here through `encode_conversation`.
`to_jinja` emits the same format as a Jinja chat template; tests prove both render identical token ids for every
built-in template. The two functions walk the conversation the same way, switch by switch, so keep them in step.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Literal

from chatforge.data.schema import Conversation, Message, ToolCall
from chatforge.errors import ChatforgeError
from chatforge.templates.formats import HERMES_TOOL_CALL, THINK_CLOSE, THINK_OPEN, ChatTemplate

MaskMode = Literal["all_assistant", "last_assistant", "all"]
MASK_MODES = ("all_assistant", "last_assistant", "all")

_PLACEHOLDER = re.compile(r"\{(content|round|call|name|arguments|kwargs|calls|id|date)\}")
_CONTENT_KEYS = (
    "content",
    "call",
    "name",
    "arguments",
    "kwargs",
    "id",
)  # text from data or the model: never special tokens


@dataclass(frozen=True)
class Segment:
    text: str
    trained: bool
    is_content: bool  # text a user or dataset wrote: never allowed to become a special token


def _parts(piece: str) -> list[tuple[str, str | None]]:
    """Split a piece into (literal text, None) and ("", placeholder name) parts."""
    out: list[tuple[str, str | None]] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(piece):
        if m.start() > pos:
            out.append((piece[pos : m.start()], None))
        out.append(("", m.group(1)))
        pos = m.end()
    if pos < len(piece):
        out.append((piece[pos:], None))
    return out


def _fill(piece: str, values: dict[str, str], trained: bool) -> list[Segment]:
    """A piece with its placeholders filled, as template-text and content segments."""
    out = []
    for text, key in _parts(piece):
        if key is None:
            out.append(Segment(text, trained, False))
        elif key in values and values[key]:
            out.append(Segment(values[key], trained, key in _CONTENT_KEYS))
    return [s for s in out if s.text]


def tools_text(tools: list[dict], template: ChatTemplate) -> str:
    """The tool-definition block: intro, the function specs as JSON, outro."""
    t = template
    specs = [{"type": "function", "function": x} if t.tools_item == "openai" else x for x in tools]
    if t.tools_layout == "json_list":
        body = json.dumps(specs, ensure_ascii=False, indent=t.tools_indent)
    else:
        body = t.tools_join.join(json.dumps(s, ensure_ascii=False, indent=t.tools_indent) for s in specs)
    return t.tools_intro + body + t.tools_outro


_ID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def tool_call_id(index: int, call: ToolCall) -> str:
    """A Mistral-style call id (9 alphanumeric characters) for the `index`-th call of a conversation, derived from the
    call itself so that renders are reproducible (the training data, the cache key and the saved Jinja agree)."""
    import hashlib

    key = f"{index}\0{call.name}\0{json.dumps(call.arguments, sort_keys=True, ensure_ascii=False)}"
    n = int.from_bytes(hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()[:8], "big")
    out = []
    for _ in range(9):
        n, r = divmod(n, len(_ID_ALPHABET))
        out.append(_ID_ALPHABET[r])
    return "".join(out)


def call_json(call: ToolCall, template: ChatTemplate, call_id: str | None = None) -> str:
    obj = {"name": call.name, template.call_args_key: call.arguments}
    if template.call_ids and call_id is not None:
        obj["id"] = call_id
    return json.dumps(obj, ensure_ascii=False)


def py_literal(value) -> str:
    """A JSON value written as a Python literal (True/False/None; strings as JSON strings, which Python reads)."""
    if value is None:
        return "None"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return (
            "{"
            + ", ".join(f"{json.dumps(str(k), ensure_ascii=False)}: {py_literal(v)}" for k, v in value.items())
            + "}"
        )
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(py_literal(v) for v in value) + "]"
    raise ChatforgeError(f"tool-call argument of type {type(value).__name__} cannot be written as a Python literal")


def py_kwargs(arguments: dict) -> str:
    """Arguments as Python keyword arguments (`city="Paris", days=2`), ChatGLM3's `tool_call(...)` syntax."""
    bad = [k for k in arguments if not str(k).isidentifier()]
    if bad:
        raise ChatforgeError(
            f"tool-call argument name {bad[0]!r} is not a Python identifier: ChatGLM3's code-style calls "
            "(tool_call(name=value)) cannot write it; use template.name=chatglm3_json"
        )
    return ", ".join(f"{k}={py_literal(v)}" for k, v in arguments.items())


def _call_segments(call: ToolCall, template: ChatTemplate, trained: bool, call_id: str | None = None) -> list[Segment]:
    values = {
        "call": call_json(call, template, call_id),
        "name": call.name,
        "arguments": json.dumps(call.arguments, ensure_ascii=False),
    }
    if "{kwargs}" in template.tool_call:
        values["kwargs"] = py_kwargs(call.arguments)
    return _fill(template.tool_call, values, trained)


def format_tool_call(call: ToolCall, template: ChatTemplate | None = None) -> str:
    """One tool call as the template writes it (chatforge's `<tool_call>` JSON format by default)."""
    from chatforge.templates.formats import CHATML

    return "".join(s.text for s in _call_segments(call, template or CHATML, True))


def split_reasoning(content: str) -> tuple[str, str]:
    """(reasoning, answer) of a reply holding a `<think>...</think>` block, split as Qwen3's template does."""
    if THINK_CLOSE not in content:
        return "", content
    head, tail = content.split(THINK_CLOSE)[0], content.split(THINK_CLOSE)[-1]
    return head.rstrip("\n").split(THINK_OPEN)[-1].lstrip("\n"), tail.lstrip("\n")


def _system_text(conv: Conversation, template: ChatTemplate) -> str | None:
    system = conv.system if conv.system is not None else template.default_system
    if conv.tools and template.tools_placement == "system":
        block = tools_text(conv.tools, template)
        system = f"{system}\n\n{block}" if system else block
    if template.system_header:  # Llama 3.1: the dated header opens every conversation's system turn
        header = template.system_header.replace("{date}", template.date or "")
        system = (template.tools_system_note if conv.tools else "") + header + (system or "")
    return system


def _train_leading_marker(segments: list[Segment], start: int, trained: bool, template: ChatTemplate) -> None:
    """Mark the role marker that opens segments[start] as trained (it ends the previous reply)."""
    if start >= len(segments) or segments[start].is_content:
        return
    seg = segments[start]
    markers = [m for m in template.special_tokens if m and seg.text.startswith(m)]
    if not markers:
        return
    marker = max(markers, key=len)
    rest = seg.text[len(marker) :]
    segments[start : start + 1] = [Segment(marker, trained, False)] + (
        [Segment(rest, seg.trained, False)] if rest else []
    )


def render_segments(
    conv: Conversation, template: ChatTemplate, mask: MaskMode = "all_assistant", add_generation_prompt: bool = False
) -> list[Segment]:
    """The conversation as ordered segments; trained segments are exactly what the loss sees."""
    if template.model_jinja is not None:  # template.use_model_jinja
        from chatforge.templates.model_jinja import model_jinja_segments

        return model_jinja_segments(conv, template, mask, add_generation_prompt)
    if mask not in MASK_MODES:
        raise ChatforgeError(f"unknown mask mode {mask!r}; choose one of: {', '.join(MASK_MODES)}")
    t = template
    messages = conv.messages[1:] if conv.system is not None else conv.messages
    n = len(messages)
    everything = mask == "all"
    assistant_positions = [i for i, m in enumerate(messages) if m.role == "assistant"]
    last_assistant = assistant_positions[-1] if assistant_positions else -1
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)

    def context(role: str) -> bool:
        return everything or role in t.trained_roles

    segments: list[Segment] = []
    if t.bos:
        segments.append(Segment(t.bos, everything, False))
    system = _system_text(conv, t)
    pending_system = None
    if system is not None:
        if t.system_in_first_user is not None:
            pending_system = system
        else:
            segments += _fill(t.system, {"content": system}, context("system"))
    pending_tools = tools_text(conv.tools, t) if conv.tools and t.tools_placement == "before_first_user" else None

    round_no = t.round_start - 1
    call_count = 0  # calls so far (their ids) and the ids of the latest calls, which the next tool results answer
    answer_ids: list[str] = []
    carry: bool | None = None  # the previous reply's trained flag, for formats ended by the next role marker
    i = 0
    while i < n:
        message = messages[i]
        start = len(segments)
        if message.role == "user":
            round_no += 1
            trained = context("user")
            values = {"content": message.content, "round": str(round_no)}
            if pending_tools is not None:
                segments.append(Segment(pending_tools, context("system"), False))
                pending_tools = None
            if pending_system is not None:
                # Llama-2 style: the system block sits inside the first user turn, after its opening marker.
                opening, _, closing = t.user.partition("{content}")
                segments += _fill(opening, values, trained)
                segments += _fill(t.system_in_first_user, {"content": pending_system}, context("system"))
                if message.content:
                    segments.append(Segment(message.content, trained, True))
                segments += _fill(closing, values, trained)
                pending_system = None
            else:
                segments += _fill(t.user, values, trained)
        elif message.role == "assistant":
            kind = "tool_call" if message.tool_calls else "assistant"
            if message.train is not None:
                trained = message.train
            elif everything:
                trained = True
            elif kind not in t.trained_roles:
                trained = False
            elif mask == "last_assistant":
                trained = i == last_assistant
            else:
                trained = True
            ids = [tool_call_id(call_count + k, c) for k, c in enumerate(message.tool_calls)]
            call_count += len(ids)
            if ids:
                answer_ids = list(ids)
            segments += _assistant_segments(message, t, trained, everything, i > last_user, i == n - 1, ids)
        elif message.role == "tool":
            group = [message]
            while t.merge_tool_results and i + 1 < n and messages[i + 1].role == "tool":
                i += 1
                group.append(messages[i])
            trained = context("tool")
            segments += _fill(t.tool_open, {}, trained)
            for k, m in enumerate(group):
                if k:
                    segments += _fill(t.tool_join, {}, trained)
                answered = answer_ids.pop(0) if answer_ids else ""
                segments += _fill(t.tool, {"content": m.content, "id": answered}, trained)
            segments += _fill(t.tool_close, {}, trained)
        elif message.role == "system":
            segments += _fill(t.system, {"content": message.content}, context("system"))
        else:
            raise ChatforgeError(f"unknown role {message.role!r}")
        if carry is not None:
            _train_leading_marker(segments, start, carry, t)
            carry = None
        if message.role == "assistant" and t.train_next_marker:
            carry = trained
        i += 1
    if carry is not None and t.final_end:
        segments.append(Segment(t.final_end, carry, False))
    if add_generation_prompt:
        segments.append(Segment(t.assistant_header, False, False))
        if t.reasoning == "nothink":
            segments.append(Segment(f"{THINK_OPEN}\n\n{THINK_CLOSE}\n\n", False, False))
    return [s for s in segments if s.text]


def _assistant_segments(
    message: Message,
    t: ChatTemplate,
    trained: bool,
    everything: bool,
    after_last_user: bool,
    is_last: bool,
    ids: list[str] | None = None,
) -> list[Segment]:
    out = [Segment(t.assistant_header, everything, False)]
    content = message.content
    if t.reasoning != "none":
        reasoning, content = split_reasoning(content)
        if after_last_user and (is_last or reasoning):
            # Qwen3 keeps the thinking block only on the replies after the last user turn.
            content = content.lstrip("\n")
            # With thinking off, the empty block of a final reply came with the generation prompt: not the model's.
            think_trained = trained and not (t.reasoning == "nothink" and not reasoning and is_last)
            out.append(Segment(f"{THINK_OPEN}\n", think_trained, False))
            if reasoning.strip("\n"):
                out.append(Segment(reasoning.strip("\n"), think_trained, True))
            out.append(Segment(f"\n{THINK_CLOSE}\n\n", think_trained, False))
    if content:
        out.append(Segment(t.reply_prefix, trained, False))
        out.append(Segment(content, trained, True))
    if message.tool_calls:
        if content:
            out.append(Segment(t.content_call_sep, trained, False))
        before, _, after = t.tool_calls_block.partition("{calls}")
        out.append(Segment(before, trained, False))
        for k, call in enumerate(message.tool_calls):
            if k:
                out.append(Segment(t.tool_call_join, trained, False))
            out += _call_segments(call, t, trained, (ids or [None] * (k + 1))[k])
        out.append(Segment(after, trained, False))
    out.append(Segment(t.assistant_end, trained, False))
    if t.assistant_sep:
        out.append(Segment(t.assistant_sep, everything, False))
    return out


def render_text(conv: Conversation, template: ChatTemplate, add_generation_prompt: bool = False) -> str:
    return "".join(s.text for s in render_segments(conv, template, add_generation_prompt=add_generation_prompt))


# --------------------------------------------------------------------------------------------------- parsing replies

_TOOL_CALL_RE = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
_NAME_RE = re.compile(r"[A-Za-z_][\w.\-]*")
_DECODER = json.JSONDecoder()


def _hermes_calls(text: str) -> tuple[str, list[ToolCall]]:
    calls: list[ToolCall] = []
    kept: list[str] = []
    last = 0
    for match in _TOOL_CALL_RE.finditer(text):
        try:
            obj = json.loads(match.group(1))
            args = obj.get("arguments", {})
            if isinstance(args, str):
                args = json.loads(args)
            if not isinstance(obj.get("name"), str) or not isinstance(args, dict):
                raise ValueError("tool call needs a string name and object arguments")
        except (ValueError, AttributeError):
            continue
        kept.append(text[last : match.start()])
        last = match.end()
        calls.append(ToolCall(obj["name"], args))
    kept.append(text[last:])
    return "".join(kept), calls


def _match_parts(text: str, pos: int, parts, template: ChatTemplate) -> tuple[int, dict] | None:
    """Match template parts at text[pos:]; JSON placeholders are decoded. Returns (end, values) or None."""
    values: dict = {}
    for literal, key in parts:
        if key is None:
            if not text.startswith(literal, pos):
                return None
            pos += len(literal)
        elif key == "name":
            m = _NAME_RE.match(text, pos)
            if not m:
                return None
            values["name"], pos = m.group(0), m.end()
        elif key == "kwargs":  # Python keyword arguments up to the next literal part (ChatGLM3's tool_call(...))
            got = _parse_kwargs(text, pos, parts)
            if got is None:
                return None
            pos, values["arguments"] = got
        else:  # call / arguments: one JSON value
            try:
                value, pos = _DECODER.raw_decode(text, pos)
            except ValueError:
                return None
            values[key] = value
    return pos, values


def _parse_kwargs(text: str, pos: int, parts) -> tuple[int, dict] | None:
    """Read `k=literal, ...` (or `**{...}`) at text[pos:], ending where the literal after `{kwargs}` starts. Only
    literals are accepted (`ast.literal_eval`): generated text is never evaluated."""
    import ast

    keys = [k for _, k in parts]
    follow = parts[keys.index("kwargs") + 1][0] if keys.index("kwargs") + 1 < len(parts) else ""
    ends = [m.start() for m in re.finditer(re.escape(follow), text[pos:])] if follow else [len(text) - pos]
    for end in ends:
        body = text[pos : pos + end]
        try:
            node = ast.parse(f"f({body})", mode="eval").body
        except (SyntaxError, ValueError):
            continue
        if not isinstance(node, ast.Call) or node.args:
            return None
        args: dict = {}
        try:
            for kw in node.keywords:
                value = ast.literal_eval(kw.value)
                if kw.arg is None:
                    if not isinstance(value, dict):
                        return None
                    args.update(value)
                else:
                    args[kw.arg] = value
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return None
        return pos + end, args
    return None


def _one_call(text: str, pos: int, template: ChatTemplate) -> tuple[int, ToolCall] | None:
    got = _match_parts(text, pos, _parts(template.tool_call), template)
    if got is None:
        return None
    end, values = got
    if "call" in values:
        obj = values["call"]
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return None
        name, args = obj["name"], obj.get(template.call_args_key, obj.get("arguments", {}))
    else:
        name, args = values.get("name"), values.get("arguments")
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(name, str) or not isinstance(args, dict):
        return None
    return end, ToolCall(name, args)


def _block_calls(text: str, template: ChatTemplate) -> tuple[str, list[ToolCall]]:
    """Find tool-call blocks written in the template's own syntax; text around them stays content."""
    before, _, after = template.tool_calls_block.partition("{calls}")
    lead = before or _parts(template.tool_call)[0][0]
    if lead:
        starts = [m.start() for m in re.finditer(re.escape(lead), text)]
    else:  # the call opens with JSON or a name: only at the start of the reply or after the content separator
        starts = [0] + (
            [m.end() for m in re.finditer(re.escape(template.content_call_sep), text)]
            if template.content_call_sep
            else []
        )
    for start in starts:
        pos = start
        if before:
            if not text.startswith(before, pos):
                continue
            pos += len(before)
        calls = []
        while True:
            got = _one_call(text, pos, template)
            if got is None:
                break
            pos, call = got
            calls.append(call)
            if not text.startswith(template.tool_call_join, pos) or not template.tool_call_join:
                break
            nxt = _one_call(text, pos + len(template.tool_call_join), template)
            if nxt is None:
                break
            pos = pos + len(template.tool_call_join)
        if not calls or (after and not text.startswith(after, pos)):
            continue
        pos += len(after)
        head = text[:start]
        if template.content_call_sep and head.endswith(template.content_call_sep):
            head = head[: -len(template.content_call_sep)]
        rest_content, rest_calls = _block_calls(text[pos:], template)
        return head + rest_content, calls + rest_calls
    return text, []


def parse_reply(text: str, template: ChatTemplate | None = None) -> Message:
    """Split generated assistant text into plain content and tool calls, in the template's tool-call syntax
    (chatforge's `<tool_call>{json}</tool_call>` blocks by default).

    A block whose JSON does not parse, or lacks a name, stays in the content as text: it is the model's output and is
    not silently dropped. A Qwen3 `<think>` block stays in the content.
    """
    if template is not None:
        for stop in template.stop_strings:
            if stop and text.endswith(stop):
                text = text[: -len(stop)]
                break
    if template is None or (template.tool_call == HERMES_TOOL_CALL and template.tool_calls_block == "{calls}"):
        content, calls = _hermes_calls(text)
    else:
        content, calls = _block_calls(text, template)
    return Message("assistant", content.strip(), calls)


# ----------------------------------------------------------------------------------------------------------- Jinja


def _lit(text: str) -> str:
    """A Jinja string literal."""
    return json.dumps(text, ensure_ascii=False)


def _jexpr(piece: str, exprs: dict[str, str]) -> str:
    """A Jinja expression concatenating a piece's literals and the expressions for its placeholders."""
    terms = []
    for text, key in _parts(piece):
        if key is None:
            terms.append(_lit(text))
        elif key in exprs:
            terms.append(exprs[key])
    return " + ".join(terms) if terms else "''"


def _jout(piece: str, exprs: dict[str, str] | None = None) -> str:
    return f"{{{{ {_jexpr(piece, exprs or {})} }}}}" if piece else ""


def _jinja_tools(t: ChatTemplate) -> str:
    indent = "" if t.tools_indent is None else f"(indent={t.tools_indent})"
    item = "{'type': 'function', 'function': spec}" if t.tools_item == "openai" else "spec"
    spec = "{%- set spec = tool if tool.get('function') is none else tool['function'] -%}"
    if t.tools_layout == "json_list":
        body = (
            "{%- set ns.specs = [] -%}{%- for tool in tools -%}"
            + spec
            + f"{{%- set ns.specs = ns.specs + [{item}] -%}}"
            "{%- endfor -%}" + f"{{%- set ns.body = ns.specs | tojson{indent} -%}}"
        )
    else:
        body = (
            "{%- set ns.body = '' -%}{%- for tool in tools -%}"
            f"{{%- if not loop.first -%}}{{%- set ns.body = ns.body + {_lit(t.tools_join)} -%}}{{%- endif -%}}"
            + spec
            + f"{{%- set ns.body = ns.body + ({item} | tojson{indent}) -%}}{{%- endfor -%}}"
        )
    block = f"{_lit(t.tools_intro)} + ns.body + {_lit(t.tools_outro)}"
    if t.tools_placement == "system":
        place = (
            f"{{%- set block = {block} -%}}"
            "{%- set ns.system = (ns.system + '\\n\\n' + block) if ns.system else block -%}"
        )
    else:
        place = f"{{%- set ns.tools = {block} -%}}"
    return "{%- if tools -%}" + body + place + "{%- endif -%}"


def _jinja_assistant(t: ChatTemplate) -> str:
    parts = ["{%- set content = m['content'] or '' -%}{%- set think = '' -%}"]
    if t.reasoning != "none":
        parts.append(
            "{%- set reasoning = '' -%}"
            "{%- if '</think>' in content -%}"
            "{%- set reasoning = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') -%}"
            "{%- set content = content.split('</think>')[-1].lstrip('\\n') -%}{%- endif -%}"
            "{%- if loop.index0 > ns.last_user and (loop.last or reasoning) -%}"
            "{%- set think = '<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n' -%}"
            "{%- set content = content.lstrip('\\n') -%}{%- endif -%}"
        )
    call_exprs = {"call": "call", "name": "f['name']", "arguments": "args", "kwargs": "cf_kwargs(f['arguments'])"}
    call_id = ""
    if t.call_ids:
        call_id = "', \"id\": ' + (tc['id'] | tojson) + "
    needs = ""
    if t.call_ids:
        needs += (
            "{%- if tc.get('id') is none -%}{{ raise_exception('tool calls in this format need an id "
            "(9 alphanumeric characters)') }}{%- endif -%}"
        )
    if "{kwargs}" in t.tool_call:
        needs += (
            "{%- if f['arguments'] is string -%}{{ raise_exception('code-style tool calls need the arguments as a "
            "mapping, not a JSON string') }}{%- endif -%}"
        )
    before, _, after = t.tool_calls_block.partition("{calls}")
    parts += [
        f"{{{{ {_lit(t.assistant_header)} + think }}}}",
        f"{{%- if content -%}}{{{{ {_lit(t.reply_prefix)} + content }}}}{{%- endif -%}}",
        "{%- if m.get('tool_calls') -%}",
        f"{{%- if content -%}}{_jout(t.content_call_sep)}{{%- endif -%}}{_jout(before)}",
        "{%- for tc in m['tool_calls'] -%}",
        f"{{%- if not loop.first -%}}{_jout(t.tool_call_join)}{{%- endif -%}}",
        "{%- set f = tc['function'] if tc.get('function') is not none else tc -%}",
        "{%- if f['arguments'] is string -%}{%- set args = f['arguments'] -%}"
        "{%- else -%}{%- set args = f['arguments'] | tojson -%}{%- endif -%}",
        needs,
        f"{{%- set call = '{{\"name\": ' + (f['name'] | tojson) + ', \"{t.call_args_key}\": ' + args + {call_id}'}}' -%}}",
        _jout(t.tool_call, call_exprs),
        "{%- endfor -%}",
        _jout(after),
        "{%- endif -%}",
        _jout(t.assistant_end + t.assistant_sep),
    ]
    if t.final_end:
        parts.append(f"{{%- if loop.last -%}}{_jout(t.final_end)}{{%- endif -%}}")
    return "".join(p for p in parts if p)


_JINJA_PY_MACROS = (
    # ChatGLM3 code-style calls: JSON values written as Python literals, as `render.py_literal` does.
    "{%- macro cf_py(v) -%}"
    "{%- if v is none -%}{{ 'None' }}"
    "{%- elif v is boolean -%}{{ 'True' if v else 'False' }}"
    "{%- elif v is string or v is number -%}{{ v | tojson }}"
    "{%- elif v is mapping -%}{{ '{' }}{%- for k in v -%}{%- if not loop.first -%}{{ ', ' }}{%- endif -%}"
    "{{ (k | string) | tojson }}{{ ': ' }}{{ cf_py(v[k]) }}{%- endfor -%}{{ '}' }}"
    "{%- else -%}{{ '[' }}{%- for x in v -%}{%- if not loop.first -%}{{ ', ' }}{%- endif -%}{{ cf_py(x) }}"
    "{%- endfor -%}{{ ']' }}{%- endif -%}{%- endmacro -%}"
    "{%- macro cf_kwargs(a) -%}{%- for k in a -%}{%- if not loop.first -%}{{ ', ' }}{%- endif -%}"
    "{{ k }}={{ cf_py(a[k]) }}{%- endfor -%}{%- endmacro -%}"
)


def _jinja_tool(t: ChatTemplate) -> str:
    body = _jout(t.tool, {"content": "m['content']", "id": "(m.get('tool_call_id') or '')"})
    if not t.merge_tool_results:
        return _jout(t.tool_open) + body + _jout(t.tool_close)
    return (
        "{%- if loop.first or ns.msgs[loop.index0 - 1]['role'] != 'tool' -%}"
        + _jout(t.tool_open)
        + (f"{{%- else -%}}{_jout(t.tool_join)}" if t.tool_join else "")
        + "{%- endif -%}"
        + body
        + "{%- if loop.last or ns.msgs[loop.index0 + 1]['role'] != 'tool' -%}"
        + _jout(t.tool_close)
        + "{%- endif -%}"
    )


def _jinja_system_header(t: ChatTemplate) -> str:
    """Llama 3.1's dated system header; `date_string` (the name Llama's own templates use) overrides the date."""
    if not t.system_header:
        return ""
    return (
        f"{{%- if date_string is not defined -%}}{{%- set date_string = {_lit(t.date or '')} -%}}{{%- endif -%}}"
        f"{{%- set ns.system = ({_lit(t.tools_system_note)} if tools else '') + "
        f"{_jexpr(t.system_header, {'date': 'date_string'})} + (ns.system if ns.system is not none else '') -%}}"
    )


def to_jinja(template: ChatTemplate) -> str:
    """The template as a Jinja chat template (HF `apply_chat_template` conventions: `messages`, `tools`,
    `add_generation_prompt`, Qwen3's `enable_thinking`; tool calls as OpenAI `tool_calls` with dict or JSON-string
    arguments). A template wrapping the model's own Jinja (`template.use_model_jinja`) returns that Jinja."""
    t = template
    if t.model_jinja is not None:
        return t.model_jinja
    default_system = "none" if t.default_system is None else _lit(t.default_system)
    content = {"content": "m['content']", "round": "(ns.round | string)"}
    user_open, _, user_close = t.user.partition("{content}")
    sys_open, _, sys_close = (t.system_in_first_user or "{content}").partition("{content}")
    parts = [
        "{%- set ns = namespace(system=none, msgs=messages, pending=none, tools=none, body='', specs=[], "
        f"round={t.round_start - 1}, last_user=-1) -%}}",
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{%- set ns.system = messages[0]['content'] -%}{%- set ns.msgs = messages[1:] -%}"
        f"{{%- else -%}}{{%- set ns.system = {default_system} -%}}{{%- endif -%}}",
        _jinja_tools(t),
        _jinja_system_header(t),
        _jout(t.bos),
    ]
    if "{kwargs}" in t.tool_call:
        parts.insert(0, _JINJA_PY_MACROS)
    if t.system_in_first_user is not None:
        parts.append("{%- if ns.system is not none -%}{%- set ns.pending = ns.system -%}{%- endif -%}")
    elif t.system:
        parts.append(f"{{%- if ns.system is not none -%}}{_jout(t.system, {'content': 'ns.system'})}{{%- endif -%}}")
    if t.reasoning != "none":
        parts.append(
            "{%- for m in ns.msgs -%}{%- if m['role'] == 'user' -%}{%- set ns.last_user = loop.index0 -%}"
            "{%- endif -%}{%- endfor -%}"
        )
    pending_user = (
        f"{{{{ {_jexpr(user_open, content)} + {_lit(sys_open)} + ns.pending + {_lit(sys_close)} + m['content'] + "
        f"{_jexpr(user_close, content)} }}}}"
    )
    parts += [
        "{%- for m in ns.msgs -%}",
        "{%- if m['role'] == 'user' -%}{%- set ns.round = ns.round + 1 -%}",
        "{%- if ns.tools is not none -%}{{ ns.tools }}{%- set ns.tools = none -%}{%- endif -%}",
        f"{{%- if ns.pending is not none -%}}{pending_user}{{%- set ns.pending = none -%}}"
        f"{{%- else -%}}{_jout(t.user, content)}{{%- endif -%}}",
        "{%- elif m['role'] == 'assistant' -%}",
        _jinja_assistant(t),
        "{%- elif m['role'] == 'tool' -%}",
        _jinja_tool(t),
        "{%- elif m['role'] == 'system' -%}" + _jout(t.system, {"content": "m['content']"}),
        "{%- else -%}{{ raise_exception('unknown role: ' + m['role']) }}",
        "{%- endif -%}",
        "{%- endfor -%}",
        f"{{%- if add_generation_prompt -%}}{_jout(t.assistant_header)}",
    ]
    if t.reasoning == "think":
        parts.append(
            "{%- if enable_thinking is defined and enable_thinking is false -%}{{ '<think>\\n\\n</think>\\n\\n' }}"
            "{%- endif -%}"
        )
    elif t.reasoning == "nothink":
        parts.append(
            "{%- if not (enable_thinking is defined and enable_thinking is true) -%}"
            "{{ '<think>\\n\\n</think>\\n\\n' }}{%- endif -%}"
        )
    parts.append("{%- endif -%}")
    return "".join(p for p in parts if p)


def to_hf_messages(conv: Conversation) -> tuple[list[dict], list[dict] | None]:
    """The conversation in the shape `tokenizer.apply_chat_template(messages, tools=...)` takes."""
    messages = []
    count, answer_ids = 0, []
    for m in conv.messages:
        d: dict = {"role": m.role, "content": m.content}
        if m.tool_calls:
            # Call ids (and the tool_call_id of each result) as chatforge's renderer derives them (`tool_call_id`).
            ids = [tool_call_id(count + k, c) for k, c in enumerate(m.tool_calls)]
            count += len(ids)
            answer_ids = list(ids)
            d["tool_calls"] = [
                {"id": i, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for i, c in zip(ids, m.tool_calls)
            ]
        elif m.role == "tool" and answer_ids:
            d["tool_call_id"] = answer_ids.pop(0)
        messages.append(d)
    tools = [{"type": "function", "function": t} for t in conv.tools] if conv.tools else None
    return messages, tools
