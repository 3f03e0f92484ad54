"""Render a conversation into text segments that know whether they are trained, and into Jinja for tokenizers.

`render_segments` is the single place where loss masking is decided: every other part of chatforge (training, the
tokenization cache, `chatforge data show`, evaluation's loss) gets its mask from here through `encode_conversation`.
`to_jinja` emits the same format as a Jinja chat template; tests prove both render identical token ids.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Literal

from chatforge.data.schema import Conversation, Message, ToolCall
from chatforge.errors import ChatforgeError
from chatforge.templates.formats import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, TOOLS_INTRO, TOOLS_OUTRO, ChatTemplate

MaskMode = Literal["all_assistant", "last_assistant", "all"]
MASK_MODES = ("all_assistant", "last_assistant", "all")


@dataclass(frozen=True)
class Segment:
    text: str
    trained: bool
    is_content: bool  # text a user or dataset wrote: never allowed to become a special token


def _fill(piece: str, content: str, trained: bool) -> list[Segment]:
    """Split a `...{content}...` piece into template text and content segments."""
    before, _, after = piece.partition("{content}")
    out = []
    if before:
        out.append(Segment(before, trained, False))
    if content:
        out.append(Segment(content, trained, True))
    if after:
        out.append(Segment(after, trained, False))
    return out


def tools_text(tools: list[dict]) -> str:
    """The tool-definition block appended to the system prompt (one OpenAI-style JSON spec per line)."""
    specs = [json.dumps({"type": "function", "function": t}, ensure_ascii=False) for t in tools]
    return TOOLS_INTRO + "\n".join(specs) + TOOLS_OUTRO


def format_tool_call(call: ToolCall) -> str:
    return (
        TOOL_CALL_OPEN
        + json.dumps({"name": call.name, "arguments": call.arguments}, ensure_ascii=False)
        + TOOL_CALL_CLOSE
    )


def _system_text(conv: Conversation, template: ChatTemplate) -> str | None:
    system = conv.system if conv.system is not None else template.default_system
    if conv.tools:
        block = tools_text(conv.tools)
        system = f"{system}\n\n{block}" if system else block
    return system


def render_segments(
    conv: Conversation, template: ChatTemplate, mask: MaskMode = "all_assistant", add_generation_prompt: bool = False
) -> list[Segment]:
    """The conversation as ordered segments; trained segments are exactly what the loss sees."""
    if mask not in MASK_MODES:
        raise ChatforgeError(f"unknown mask mode {mask!r}; choose one of: {', '.join(MASK_MODES)}")
    messages = conv.messages[1:] if conv.system is not None else conv.messages
    everything = mask == "all"
    assistant_positions = [i for i, m in enumerate(messages) if m.role == "assistant"]
    last_assistant = assistant_positions[-1] if assistant_positions else -1

    segments: list[Segment] = []
    if template.bos:
        segments.append(Segment(template.bos, everything, False))
    system = _system_text(conv, template)
    pending_system = None
    if system is not None:
        if template.system_in_first_user is not None:
            pending_system = system
        else:
            segments += _fill(template.system, system, everything)

    for i, message in enumerate(messages):
        if message.role == "user":
            if pending_system is not None:
                # Llama-2 style: the system block sits inside the first user turn, after its opening marker.
                opening, _, closing = template.user.partition("{content}")
                segments.append(Segment(opening, everything, False))
                segments += _fill(template.system_in_first_user, pending_system, everything)
                if message.content:
                    segments.append(Segment(message.content, everything, True))
                segments.append(Segment(closing, everything, False))
                pending_system = None
            else:
                segments += _fill(template.user, message.content, everything)
        elif message.role == "assistant":
            if message.train is not None:
                trained = message.train
            elif mask == "last_assistant":
                trained = i == last_assistant
            else:
                trained = True
            segments.append(Segment(template.assistant_header, everything, False))
            if message.content:
                segments.append(Segment(message.content, trained, True))
            if message.tool_calls:
                calls = "\n".join(format_tool_call(c) for c in message.tool_calls)
                # Tool-call JSON is produced by the model: trained, and content-like (never special tokens).
                segments.append(Segment(("\n" if message.content else "") + calls, trained, True))
            segments.append(Segment(template.assistant_end, trained, False))
            if template.assistant_sep:
                segments.append(Segment(template.assistant_sep, everything, False))
        elif message.role == "tool":
            segments += _fill(template.tool, message.content, everything)
        elif message.role == "system":
            segments += _fill(template.system, message.content, everything)
        else:
            raise ChatforgeError(f"unknown role {message.role!r}")
    if add_generation_prompt:
        segments.append(Segment(template.assistant_header, False, False))
    return [s for s in segments if s.text]


def render_text(conv: Conversation, template: ChatTemplate, add_generation_prompt: bool = False) -> str:
    return "".join(s.text for s in render_segments(conv, template, add_generation_prompt=add_generation_prompt))


_TOOL_CALL_RE = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


def parse_reply(text: str, template: ChatTemplate | None = None) -> Message:
    """Split generated assistant text into plain content and tool calls (`<tool_call>{json}</tool_call>` blocks).

    A block whose JSON does not parse, or lacks a name, stays in the content as text: it is the model's output and is
    not silently dropped.
    """
    if template is not None:
        for stop in template.stop_strings:
            if stop and text.endswith(stop):
                text = text[: -len(stop)]
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
    return Message("assistant", "".join(kept).strip(), calls)


# ----------------------------------------------------------------------------------------------------------- Jinja


def _lit(text: str) -> str:
    """A Jinja string literal."""
    return json.dumps(text, ensure_ascii=False)


def _jinja_fill(piece: str, expr: str) -> str:
    before, _, after = piece.partition("{content}")
    return f"{{{{ {_lit(before)} + {expr} + {_lit(after)} }}}}"


def to_jinja(template: ChatTemplate) -> str:
    """The template as a Jinja chat template (HF `apply_chat_template` conventions: `messages`, `tools`,
    `add_generation_prompt`; tool calls as OpenAI `tool_calls` with dict or JSON-string arguments)."""
    t = template
    default_system = "none" if t.default_system is None else _lit(t.default_system)
    user_open, _, user_close = t.user.partition("{content}")
    parts = [
        "{%- set ns = namespace(system=none, msgs=messages, pending=none, body='') -%}",
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{%- set ns.system = messages[0]['content'] -%}{%- set ns.msgs = messages[1:] -%}"
        f"{{%- else -%}}{{%- set ns.system = {default_system} -%}}{{%- endif -%}}",
        "{%- if tools -%}{%- set ns.body = '' -%}{%- for tool in tools -%}"
        "{%- if not loop.first -%}{%- set ns.body = ns.body + '\\n' -%}{%- endif -%}"
        "{%- set spec = tool if tool.get('function') is none else tool['function'] -%}"
        "{%- set ns.body = ns.body + ({'type': 'function', 'function': spec} | tojson) -%}{%- endfor -%}"
        f"{{%- set block = {_lit(TOOLS_INTRO)} + ns.body + {_lit(TOOLS_OUTRO)} -%}}"
        "{%- set ns.system = (ns.system + '\\n\\n' + block) if ns.system else block -%}{%- endif -%}",
        f"{{{{ {_lit(t.bos)} }}}}" if t.bos else "",
    ]
    if t.system_in_first_user is not None:
        parts.append("{%- if ns.system is not none -%}{%- set ns.pending = ns.system -%}{%- endif -%}")
    else:
        parts.append(f"{{%- if ns.system is not none -%}}{_jinja_fill(t.system, 'ns.system')}{{%- endif -%}}")
    sys_open, _, sys_close = (t.system_in_first_user or "{content}").partition("{content}")
    parts += [
        "{%- for m in ns.msgs -%}",
        "{%- if m['role'] == 'user' -%}",
        "{%- if ns.pending is not none -%}"
        f"{{{{ {_lit(user_open + sys_open)} + ns.pending + {_lit(sys_close)} + m['content'] + {_lit(user_close)} }}}}"
        "{%- set ns.pending = none -%}"
        f"{{%- else -%}}{_jinja_fill(t.user, 'm[' + _lit('content') + ']')}{{%- endif -%}}",
        "{%- elif m['role'] == 'assistant' -%}",
        "{%- set ns.body = m['content'] or '' -%}",
        "{%- for tc in (m['tool_calls'] or []) -%}"
        "{%- set f = tc['function'] if tc.get('function') is not none else tc -%}"
        "{%- if f['arguments'] is string -%}"
        "{%- set call = '{\"name\": ' + (f['name'] | tojson) + ', \"arguments\": ' + f['arguments'] + '}' -%}"
        "{%- else -%}{%- set call = {'name': f['name'], 'arguments': f['arguments']} | tojson -%}{%- endif -%}"
        "{%- if ns.body -%}{%- set ns.body = ns.body + '\\n' -%}{%- endif -%}"
        f"{{%- set ns.body = ns.body + {_lit(TOOL_CALL_OPEN)} + call + {_lit(TOOL_CALL_CLOSE)} -%}}"
        "{%- endfor -%}",
        f"{{{{ {_lit(t.assistant_header)} + ns.body + {_lit(t.assistant_end + t.assistant_sep)} }}}}",
        f"{{%- elif m['role'] == 'tool' -%}}{_jinja_fill(t.tool, 'm[' + _lit('content') + ']')}",
        f"{{%- elif m['role'] == 'system' -%}}{_jinja_fill(t.system, 'm[' + _lit('content') + ']')}",
        "{%- else -%}{{ raise_exception('unknown role: ' + m['role']) }}",
        "{%- endif -%}",
        "{%- endfor -%}",
        f"{{%- if add_generation_prompt -%}}{{{{ {_lit(t.assistant_header)} }}}}{{%- endif -%}}",
    ]
    return "".join(p for p in parts if p)


def to_hf_messages(conv: Conversation) -> tuple[list[dict], list[dict] | None]:
    """The conversation in the shape `tokenizer.apply_chat_template(messages, tools=...)` takes."""
    messages = []
    for m in conv.messages:
        d: dict = {"role": m.role, "content": m.content}
        if m.tool_calls:
            d["tool_calls"] = [
                {"type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in m.tool_calls
            ]
        messages.append(d)
    tools = [{"type": "function", "function": t} for t in conv.tools] if conv.tools else None
    return messages, tools
