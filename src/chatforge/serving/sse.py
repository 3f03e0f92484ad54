"""Server-sent-event pieces of `chatforge serve`: splitting streamed assistant text into content and tool-call
deltas in OpenAI's streaming format, and the chunk JSON itself.

A tool call streams the way OpenAI and vLLM send it: a first delta with `index`, `id`, `type` and `function.name`
(and empty `arguments`), then deltas carrying `function.arguments` fragments as they are decoded, so that
concatenating the fragments gives the arguments JSON. Several calls in one reply get indices 0, 1, ...
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from chatforge.data.schema import ToolCall
from chatforge.serving.engine import _held_back

TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"
# The start of a call as the template writes it: {"name": "NAME", "arguments": <value...>. Decided only once the
# first character of the value is there, so whitespace before it is not part of the fragments.
_HEADER = re.compile(r'\A\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*(?=\S)')


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class ToolCallStreamer:
    """Turns streamed assistant text into events: ("content", text), ("call_start", name), ("call_args", fragment),
    ("call_end", ToolCall | None) and ("call_whole", ToolCall).

    Text that might be the start of `<tool_call>` is held back until decided. Inside a block, once `"name"` and
    `"arguments":` are seen the call starts and the arguments stream, always holding back from the last `}` (it may be
    the block's closing brace) and trailing whitespace. A block in another layout is parsed when it closes and sent as
    one call; a block that is not a valid call stays content text, as `parse_reply` keeps it. Whitespace around calls
    is dropped (as `parse_reply` strips it), so a pure tool-call reply streams no content.
    """

    def __init__(self, template):
        from chatforge.templates import parse_reply

        self.parse = lambda text: parse_reply(text, template)
        self.buf = ""
        self.state = "text"  # text | block (inside <tool_call>, undecided) | args (streaming a call's arguments)
        self.sent_args = ""
        self.pending_ws = ""  # whitespace not yet known to be inside content
        self.started = False  # any non-whitespace content emitted yet

    def _content(self, text: str, out: list) -> None:
        text = self.pending_ws + text
        stripped = text.rstrip()
        self.pending_ws = text[len(stripped) :]
        if not self.started:
            stripped = stripped.lstrip()
        if stripped:
            self.started = True
            out.append(("content", stripped))

    def _send_args(self, upto_text: str, out: list) -> None:
        if upto_text.startswith(self.sent_args) and len(upto_text) > len(self.sent_args):
            out.append(("call_args", upto_text[len(self.sent_args) :]))
            self.sent_args = upto_text

    def feed(self, text: str) -> list[tuple[str, Any]]:
        self.buf += text
        out: list[tuple[str, Any]] = []
        while True:
            if self.state == "text":
                i = self.buf.find(TOOL_OPEN)
                if i >= 0:
                    self._content(self.buf[:i], out)
                    self.buf, self.state = self.buf[i + len(TOOL_OPEN) :], "block"
                    continue
                keep = _held_back(self.buf, [TOOL_OPEN])
                self._content(self.buf[: len(self.buf) - keep], out)
                self.buf = self.buf[len(self.buf) - keep :]
                return out
            j = self.buf.find(TOOL_CLOSE)
            if self.state == "block":
                header = _HEADER.match(self.buf)
                if header and (j < 0 or header.end() < j):
                    self.pending_ws = ""
                    out.append(("call_start", json.loads(f'"{header.group(1)}"')))
                    self.buf, self.state, self.sent_args = self.buf[header.end() :], "args", ""
                    continue
                if j < 0:
                    return out
                block, self.buf, self.state = self.buf[:j], self.buf[j + len(TOOL_CLOSE) :], "text"
                calls = self.parse(f"{TOOL_OPEN}{block}{TOOL_CLOSE}").tool_calls
                if calls:
                    self.pending_ws = ""
                    out.extend(("call_whole", c) for c in calls)
                else:  # not a valid call: it is the model's text, keep it (as parse_reply does)
                    self._content(f"{TOOL_OPEN}{block}{TOOL_CLOSE}", out)
                continue
            # state == "args": stream up to (not including) the last "}" and trailing whitespace
            if j < 0:
                brace = self.buf.rfind("}")
                self._send_args((self.buf if brace < 0 else self.buf[:brace]).rstrip(), out)
                return out
            body, self.buf, self.state = self.buf[:j].rstrip(), self.buf[j + len(TOOL_CLOSE) :], "text"
            self._send_args(body[:-1].rstrip() if body.endswith("}") else body, out)
            out.append(("call_end", self._final_call(body)))

    def _final_call(self, args_body: str) -> ToolCall | None:
        """The complete call (None if the block turned out not to be valid JSON)."""
        text = args_body[:-1] if args_body.endswith("}") else args_body
        try:
            args = json.loads(text)
            if isinstance(args, str):
                args = json.loads(args)
        except ValueError:
            return None
        return ToolCall("", args) if isinstance(args, dict) else None

    def flush(self) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        rest, self.buf = self.buf, ""
        if self.state == "args":  # cut off inside a call: close it with what arrived
            self._send_args(rest.rstrip(), out)
            out.append(("call_end", None))
        elif self.state == "block":
            self._content(TOOL_OPEN + rest, out)  # an unterminated block stays text
        else:
            self._content(rest, out)
        self.state = "text"
        return out


def chunk(rid: str, created: int, model: str, choices: list[dict], obj: str = "chat.completion.chunk", **extra) -> str:
    """One `data:` line of a stream."""
    body = {"id": rid, "object": obj, "created": created, "model": model, "choices": choices, **extra}
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def error_event(message: str, code: str, type_: str = "server_error") -> str:
    return f"data: {json.dumps({'error': {'message': message, 'type': type_, 'param': None, 'code': code}})}\n\n"


DONE = "data: [DONE]\n\n"
