"""The OpenAI request bodies `chatforge serve` accepts, how they are checked, and how they become engine inputs.

Everything a client sends is validated here before it reaches the shared decode loop: the body's size and JSON
nesting depth before parsing, then every field with OpenAI's documented ranges (finite numbers only; `temperature`
0-2, `top_p` in (0, 1], penalties in [-2, 2], `seed` within int64, ...), then the order of turns. A bad request is
answered 400 with `param` naming the field; a parameter OpenAI has but chatforge does not implement is a 400 that
names it too, never silently ignored.
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chatforge.data.schema import Conversation, Message, ToolCall
from chatforge.serving.engine import SamplingParams

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_JSON_DEPTH = 64


class APIError(Exception):
    """An error answered as OpenAI-style JSON `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(self, status: int, message: str, code: str, *, type_: str = "invalid_request_error", param=None):
        super().__init__(message)
        self.status, self.message, self.code, self.type, self.param = status, message, code, type_, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ------------------------------------------------------------------------------------------------ the raw body


_STRUCTURE = re.compile(rb'[\[\]{}"\\]')


def json_depth(raw: bytes) -> int:
    """The deepest nesting of arrays/objects in `raw`, found without parsing (brackets inside strings ignored)."""
    depth = best = 0
    in_string = False
    skip = -1  # the position right after a backslash inside a string: that character is escaped
    for m in _STRUCTURE.finditer(raw):
        pos = m.start()
        if pos == skip:
            continue
        c = raw[pos]
        if in_string:
            if c == 0x5C:  # backslash
                skip = pos + 1
            elif c == 0x22:
                in_string = False
        elif c == 0x22:
            in_string = True
        elif c in (0x5B, 0x7B):
            depth += 1
            best = max(best, depth)
        elif c in (0x5D, 0x7D):
            depth -= 1
    return best


def _no_constants(name: str):
    raise ValueError(f"{name} is not valid JSON")


def parse_json_body(raw: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse a request body; APIError 400 for anything that is not plain JSON (NaN/Infinity, too deep, bad UTF-8)."""
    depth = json_depth(raw)
    if depth > max_depth:
        raise APIError(400, f"the request body nests {depth} levels deep; the limit is {max_depth}", "invalid_json")
    try:
        data = json.loads(raw, parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise APIError(400, f"the request body is not valid JSON: {err}", "invalid_json") from None
    try:  # a lone surrogate (\ud800) parses, but is no text: refuse it here rather than deep in a tokenizer
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise APIError(400, "the request body contains a lone surrogate (invalid Unicode)", "invalid_json") from None
    return data


# ------------------------------------------------------------------------------------------------ request models


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class FunctionCallIn(_Strict):
    name: str = Field(min_length=1, max_length=64)
    arguments: str | dict = "{}"


class ToolCallIn(_Strict):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCallIn


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class MessageIn(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None  # echoed back by clients that replay an assistant message; ignored


class FunctionSpec(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    parameters: dict = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None


class ToolSpec(_Strict):
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(_Strict):
    include_usage: bool = False


class JSONSchemaSpec(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    schema_: dict = Field(default_factory=lambda: {"type": "object"}, alias="schema")
    strict: bool | None = None

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, populate_by_name=True)


class FormatText(_Strict):
    type: Literal["text"]


class FormatJSONObject(_Strict):
    type: Literal["json_object"]


class FormatJSONSchema(_Strict):
    type: Literal["json_schema"]
    json_schema: JSONSchemaSpec


ResponseFormat = Annotated[FormatText | FormatJSONObject | FormatJSONSchema, Field(discriminator="type")]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]


class _Sampling(_Strict):
    """Fields shared by chat and text completions."""

    model: str
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0, le=1_000_000)  # extension (vLLM-style)
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)  # extension (vLLM-style)
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=10.0)  # extension (vLLM-style)
    frequency_penalty: Penalty = 0.0
    presence_penalty: Penalty = 0.0
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = Field(default=None, max_length=1024)
    seed: int | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX)
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=INT64_MAX)
    user: str | None = None


class ChatRequest(_Sampling):
    messages: list[MessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=INT64_MAX)
    tools: list[ToolSpec] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)


class CompletionRequest(_Sampling):
    prompt: str | list[str] = Field(min_length=1)
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=1, le=16)


class EmbeddingRequest(_Strict):
    model: str
    input: str | list[str] = Field(min_length=1, max_length=256)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


# Parameters OpenAI documents that chatforge does not implement: a 400 naming them, not a generic schema error.
NOT_IMPLEMENTED = {
    "audio",
    "modalities",
    "prediction",
    "web_search_options",
    "reasoning_effort",
    "service_tier",
    "store",
    "metadata",
    "functions",
    "function_call",
    "verbosity",
}


_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none", "literal"}


def _loc(loc: tuple) -> str:
    """A pydantic error location as an OpenAI `param` path (`messages[0].content`), without union-member tags."""
    out = ""
    last = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        part = str(part)
        bare = part.split("[", 1)[0].lower()
        if part == "body" or "[" in part or bare in _TYPE_TAGS or part[:1].isupper() or part == last:
            continue  # 'str', 'list[TextPart]', 'function-after[...]', model class names, repeated tagged-union keys
        out += f".{part}" if out else part
        last = part
    return out


def validate(model: type[BaseModel], data: Any) -> Any:
    """Validate a parsed body against `model`; APIError 400 naming the first bad field."""
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object", "invalid_request")
    for key in data:
        if key in NOT_IMPLEMENTED:
            raise APIError(400, f"{key!r} is not supported by chatforge serve", "unsupported_parameter", param=key)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        errors = err.errors(include_url=False)
        first = errors[0]
        param = _loc(first.get("loc", ())) or None
        if first.get("type") == "extra_forbidden":
            raise APIError(400, f"unknown parameter {param!r}", "unknown_parameter", param=param) from None
        parts = [f"{_loc(e.get('loc', ())) or 'body'}: {e.get('msg')}" for e in errors[:3]]
        raise APIError(400, "; ".join(parts), "invalid_value", param=param) from None


# ------------------------------------------------------------------------------------------------ conversations


def _text(content: str | list[TextPart] | None) -> str:
    if content is None:
        return ""
    return content if isinstance(content, str) else "".join(p.text for p in content)


def _args_param(i: int, j: int) -> str:
    return f"messages[{i}].tool_calls[{j}].function.arguments"


def check_turn_order(messages: list[MessageIn]) -> None:
    """System/developer messages only at the start; then user and assistant turns, where an assistant follows a user
    or tool message, a tool message answers an earlier assistant tool call, and the last message is user or tool."""
    open_calls = 0  # tool calls of the latest assistant message not yet answered by a tool message
    prev = None
    for i, m in enumerate(messages):
        role = "system" if m.role == "developer" else m.role
        where = f"messages[{i}]"
        if role == "system":
            if prev not in (None, "system"):
                raise APIError(400, "system messages must come before the conversation", "invalid_message", param=where)
        elif role == "assistant":
            if prev not in ("user", "tool"):
                raise APIError(
                    400, "an assistant message must follow a user or tool message", "invalid_message", param=where
                )
            if not m.tool_calls and not _text(m.content) and m.content is None:
                raise APIError(400, "an assistant message needs content or tool_calls", "invalid_message", param=where)
            open_calls = len(m.tool_calls or [])
        elif role == "tool":
            if open_calls <= 0:
                raise APIError(
                    400,
                    "a tool message must answer a tool call of the assistant message before it",
                    "invalid_message",
                    param=where,
                )
            open_calls -= 1
        elif role == "user":
            open_calls = 0
        if m.tool_calls and role != "assistant":
            raise APIError(400, "only assistant messages may carry tool_calls", "invalid_message", param=where)
        prev = role
    if prev not in ("user", "tool"):
        last = f"messages[{len(messages) - 1}]"
        raise APIError(400, "the last message must be a user or tool message", "invalid_message", param=last)


def to_conversation(req: ChatRequest) -> Conversation:
    """The request's messages and tools as a chatforge Conversation (errors name the offending field)."""
    check_turn_order(req.messages)
    messages: list[Message] = []
    for i, m in enumerate(req.messages):
        role = "system" if m.role == "developer" else m.role
        calls = []
        for j, tc in enumerate(m.tool_calls or []):
            args = tc.function.arguments
            if isinstance(args, str):
                try:
                    args = json.loads(args or "{}", parse_constant=_no_constants)
                except (ValueError, RecursionError) as err:
                    raise APIError(
                        400, f"arguments are not valid JSON: {err}", "invalid_tool_call", param=_args_param(i, j)
                    ) from None
            if not isinstance(args, dict):
                raise APIError(400, "arguments must be a JSON object", "invalid_tool_call", param=_args_param(i, j))
            calls.append(ToolCall(tc.function.name, args))
        if role == "system" and messages and messages[-1].role == "system":
            messages[-1] = Message("system", messages[-1].content + "\n\n" + _text(m.content))  # one system block
            continue
        messages.append(Message(role, _text(m.content), calls))
    tools = [t.function.model_dump(exclude_none=True, exclude={"strict"}) for t in req.tools or []]
    names = [t["name"] for t in tools]
    if len(set(names)) != len(names):
        raise APIError(400, "tool names must be unique", "invalid_value", param="tools")
    choice = req.tool_choice
    if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
        raise APIError(
            400,
            f"tool_choice names {choice.function.name!r}, which is not in tools",
            "invalid_value",
            param="tool_choice",
        )
    if choice == "required" and not tools:
        raise APIError(400, "tool_choice 'required' needs tools", "invalid_value", param="tool_choice")
    return Conversation(messages, [] if choice == "none" else tools)


def output_grammar(req: ChatRequest, conv: Conversation) -> tuple[str | None, str | None]:
    """(llguidance grammar or None, the request field it comes from) for forced tool calls and JSON output."""
    from chatforge.serving.constraints import json_grammar, tool_call_grammar

    choice = req.tool_choice
    parallel = req.parallel_tool_calls is not False
    if choice == "required":
        return tool_call_grammar(conv.tools, parallel), "tool_choice"
    if isinstance(choice, NamedToolChoice):
        tool = next(t for t in conv.tools if t["name"] == choice.function.name)
        return tool_call_grammar([tool], parallel), "tool_choice"
    fmt = req.response_format
    if isinstance(fmt, FormatJSONObject):
        return json_grammar(None), "response_format"
    if isinstance(fmt, FormatJSONSchema):
        return json_grammar(fmt.json_schema.schema_), "response_format.json_schema.schema"
    return None, None


def stop_list(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > 4 or any(not s for s in stops):
        raise APIError(400, "stop takes up to 4 non-empty strings", "invalid_value", param="stop")
    return stops


def logit_bias_ids(bias: dict[str, float] | None) -> dict[int, float]:
    out: dict[int, float] = {}
    for key, value in (bias or {}).items():
        if not key.isdigit() or len(key) > 9:
            raise APIError(400, f"logit_bias keys must be token ids, got {key!r}", "invalid_value", param="logit_bias")
        out[int(key)] = float(value)
    return out


def sampling_params(req: _Sampling, max_new: int, *, logprobs: bool = False, top_logprobs: int = 0) -> SamplingParams:
    """The engine's SamplingParams for a validated request (numbers are already in range and finite)."""
    for name in ("temperature", "top_p", "min_p", "repetition_penalty"):
        if not math.isfinite(getattr(req, name)):  # belt and braces: the model already refuses inf/nan
            raise APIError(400, f"{name} must be finite", "invalid_value", param=name)
    return SamplingParams(
        max_new_tokens=max_new,
        temperature=req.temperature,
        top_k=req.top_k,
        top_p=req.top_p,
        min_p=req.min_p,
        repetition_penalty=req.repetition_penalty,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        logit_bias=logit_bias_ids(req.logit_bias),
        seed=req.seed,
        stop=stop_list(req.stop),
        logprobs=logprobs,
        top_logprobs=top_logprobs,
    )
