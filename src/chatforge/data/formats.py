"""Record converters: one JSON record of a known chat/preference/text format -> a chatforge record.

Formats (the names `read_records(format=...)` takes):
- `alpaca`: `instruction`, `input`, `output`, optional `system` and `history` (a list of [user, assistant] pairs).
  The user turn is `instruction + "\\n" + input` (either may be empty), exactly as LLaMA-Factory builds it.
- `sharegpt`: `conversations` of `{"from", "value"}` with roles human/gpt/function_call/observation/system, optional
  `system` and `tools` (a JSON string or a list). A `function_call` value is JSON `{"name", "arguments"}` (or a list
  of them) and becomes an assistant message with tool calls; an `observation` becomes a `tool` message.
- `openai`: `messages` of `{"role", "content"}` with roles system/user/assistant/tool, assistant `tool_calls` whose
  `function.arguments` is a JSON string, optional `tools` (OpenAI `{"type": "function", "function": {...}}` or bare
  function specs). This is also what chatforge itself writes (`Conversation.to_dict()`), `train` and `meta` included.
- `preference`: `chosen`/`rejected` (strings, single messages, or message lists), with the prompt given as
  `conversations`/`messages`, as a `prompt` string or message list, as alpaca `instruction`/`input`, or implicitly as
  the common prefix of the chosen and rejected message lists (TRL's "implicit prompt" style).
- `text`: a `text` field (raw text for pretraining).

Column names can be remapped with LLaMA-Factory's column keys (prompt, query, response, history, messages, system,
tools, chosen, rejected, kto_tag) and sharegpt role tags (role_tag, content_tag, user_tag, ...). Every problem raises a
`DataError` carrying the offending field and a reason (the key `on_error="skip"` counts under); the reader adds the
file and line/record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from chatforge.data.schema import Conversation, Message, PreferencePair, TextDoc, ToolCall
from chatforge.errors import DataError

FORMATS = ("alpaca", "sharegpt", "openai", "preference", "text")

# LLaMA-Factory's column keys; the value is the record key that holds that column.
COLUMN_KEYS = ("prompt", "query", "response", "history", "messages", "system", "tools", "chosen", "rejected", "kto_tag")
MULTIMODAL_KEYS = ("images", "videos", "audios")
TAG_KEYS = ("role_tag", "content_tag", "user_tag", "assistant_tag", "observation_tag", "function_tag", "system_tag")

DEFAULT_COLUMNS: dict[str, dict[str, str]] = {
    "alpaca": {
        "prompt": "instruction",
        "query": "input",
        "response": "output",
        "history": "history",
        "system": "system",
        "tools": "tools",
    },
    "sharegpt": {"messages": "conversations", "system": "system", "tools": "tools"},
    "openai": {"messages": "messages", "system": "system", "tools": "tools"},
    "preference": {"chosen": "chosen", "rejected": "rejected", "system": "system", "tools": "tools"},
    "text": {"prompt": "text"},
}

SHAREGPT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}
OPENAI_TAGS = {
    "role_tag": "role",
    "content_tag": "content",
    "user_tag": "user",
    "assistant_tag": "assistant",
    "observation_tag": "tool",
    "function_tag": "function_call",
    "system_tag": "system",
}


@dataclass
class Layout:
    """How to read one file: its format, which record keys hold which columns, role tags, and the LF flags."""

    format: str
    columns: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    ranking: bool = False  # LLaMA-Factory `ranking: true`: records are preference pairs

    @classmethod
    def make(
        cls,
        format: str,
        columns: dict[str, str] | None = None,
        tags: dict[str, str] | None = None,
        ranking: bool = False,
    ) -> Layout:
        if format not in FORMATS:
            raise DataError(f"unknown format {format!r}; use one of {', '.join(FORMATS)} or 'auto'", reason="format")
        unknown = sorted(set(columns or {}) - set(COLUMN_KEYS) - set(TAG_KEYS) - {"text"})
        if unknown:
            raise DataError(
                f"unknown column key(s) {unknown}; column keys are {', '.join(COLUMN_KEYS)} and tags {', '.join(TAG_KEYS)}",
                field="columns",
                reason="format",
            )
        cols = dict(DEFAULT_COLUMNS[format])
        user_tags = {}
        for key, value in (columns or {}).items():
            if key in TAG_KEYS:
                user_tags[key] = value
            elif key == "text":  # `text` is accepted as a friendlier name for the text column
                cols["prompt"] = value
            else:
                cols[key] = value
        base_tags = OPENAI_TAGS if format == "openai" else SHAREGPT_TAGS
        return cls(format=format, columns=cols, tags={**base_tags, **(tags or {}), **user_tags}, ranking=ranking)


def _err(message: str, field_: str | None, reason: str) -> DataError:
    return DataError(message, field=field_, reason=reason)


def _get(rec: dict, key: str | None, *, required: bool = False) -> Any:
    if key is None:
        return None
    if key not in rec:
        if required:
            raise _err(f"missing field {key!r} (record has {sorted(rec)})", key, "missing_field")
        return None
    return rec[key]


def _text(value: Any, field_: str, *, allow_empty: bool = False) -> str:
    """A message text: a string, or OpenAI content parts that are all text; never silently coerced."""
    if isinstance(value, list):
        value = _content_parts(value, field_)
    if not isinstance(value, str):
        raise _err(f"expected a string, got {type(value).__name__}", field_, "wrong_type")
    if not allow_empty and not value.strip():
        raise _err("empty content", field_, "empty_content")
    return value


def _content_parts(parts: list, field_: str) -> str:
    """OpenAI content parts: `{"type": "text", "text": ...}` (and an assistant's `refusal` parts) joined in order;
    image/audio/file parts are refused (chatforge trains text-only models)."""
    texts = []
    for i, part in enumerate(parts):
        where = f"{field_}[{i}]"
        if not isinstance(part, dict):
            raise _err(f"a content part must be an object, got {type(part).__name__}", where, "wrong_type")
        kind = part.get("type")
        key = {"text": "text", "refusal": "refusal"}.get(kind) if isinstance(kind, str) else None
        if key is None:
            if kind in ("image_url", "input_image", "input_audio", "file", "image", "audio", "video"):
                raise _err(f"content part of type {kind!r}: chatforge trains text-only models", where, "multimodal")
            raise _err(f"unknown content part type {kind!r} (expected 'text')", f"{where}.type", "wrong_type")
        if not isinstance(part.get(key), str):
            raise _err(f"a {kind} part needs a string {key!r}", f"{where}.{key}", "wrong_type")
        texts.append(part[key])
    return "".join(texts)


def _nested_json(text: str, field_: str, what: str, reason: str) -> Any:
    """JSON held inside a string field (tools, arguments): parse errors, over-deep nesting, over-long numbers and lone
    surrogates all become a DataError naming the field, exactly as for the record itself."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise _err(f"{what} is not valid JSON ({e.msg} at char {e.pos})", field_, reason) from None
    except (RecursionError, ValueError) as e:  # nesting beyond the parser, or a number of thousands of digits
        detail = "nested too deeply" if isinstance(e, RecursionError) else str(e).split(":")[0]
        raise _err(f"{what} cannot be parsed: {detail}", field_, reason) from None
    from chatforge.data.readers import check_tree  # readers imports this module

    try:
        check_tree(value, text)
    except DataError as e:
        raise _err(e.bare_message, f"{field_} -> {e.field}" if e.field else field_, e.reason) from None
    return value


def parse_tools(value: Any, field_: str = "tools") -> list[dict]:
    """Tool specs as a list of bare function specs (`name`, `description`, `parameters`).

    Accepts a JSON string (LLaMA-Factory), a list of OpenAI `{"type": "function", "function": {...}}`, or bare specs.
    """
    if value is None or value == "" or value == []:
        return []
    if isinstance(value, str):
        value = _nested_json(value, field_, "tools", "bad_tools")
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise _err(f"tools must be a list of function specs, got {type(value).__name__}", field_, "wrong_type")
    out = []
    for i, spec in enumerate(value):
        if isinstance(spec, dict) and spec.get("type") == "function" and isinstance(spec.get("function"), dict):
            spec = spec["function"]
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
            raise _err("each tool must be an object with a non-empty 'name'", f"{field_}[{i}]", "bad_tools")
        out.append(spec)
    return out


def _arguments(value: Any, field_: str) -> dict:
    if isinstance(value, str):
        value = _nested_json(value, field_, "tool-call arguments", "bad_tool_call") if value.strip() else {}
    if not isinstance(value, dict):
        raise _err(f"tool-call arguments must be a JSON object, got {type(value).__name__}", field_, "bad_tool_call")
    return value


def _tool_call(obj: Any, field_: str) -> ToolCall:
    """`{"name", "arguments"}` (sharegpt function_call) or OpenAI `{"type": "function", "function": {...}}`."""
    if isinstance(obj, dict) and "type" in obj and obj["type"] != "function":
        raise _err(
            f"tool call of type {obj['type']!r}: only function tool calls are supported",
            f"{field_}.type",
            "bad_tool_call",
        )
    if isinstance(obj, dict) and isinstance(obj.get("function"), dict):
        obj, field_ = obj["function"], f"{field_}.function"
    if not isinstance(obj, dict):
        raise _err(f"a tool call must be a JSON object, got {type(obj).__name__}", field_, "bad_tool_call")
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _err("a tool call needs a non-empty 'name'", f"{field_}.name", "bad_tool_call")
    if "arguments" not in obj:
        raise _err("a tool call needs 'arguments' (use {} for none)", f"{field_}.arguments", "bad_tool_call")
    return ToolCall(name=name, arguments=_arguments(obj["arguments"], f"{field_}.arguments"))


def _function_call_value(value: Any, field_: str) -> list[ToolCall]:
    """A sharegpt function_call turn: a JSON string of one call or a list of calls (parallel calls)."""
    if isinstance(value, str):
        value = _nested_json(value, field_, "function_call", "bad_tool_call")
    calls = value if isinstance(value, list) else [value]
    if not calls:
        raise _err("function_call holds no call", field_, "bad_tool_call")
    return [_tool_call(c, f"{field_}[{i}]" if isinstance(value, list) else field_) for i, c in enumerate(calls)]


def parse_message(raw: Any, field_: str, tags: dict[str, str]) -> Message:
    """One message dict -> Message, using the role/content tags of the format."""
    if not isinstance(raw, dict):
        raise _err(f"a message must be an object, got {type(raw).__name__}", field_, "wrong_type")
    role_tag, content_tag = tags["role_tag"], tags["content_tag"]
    if role_tag not in raw:
        raise _err(f"message has no {role_tag!r} (keys: {sorted(raw)})", f"{field_}.{role_tag}", "missing_field")
    tag = raw[role_tag]
    roles = {
        tags["user_tag"]: "user",
        tags["assistant_tag"]: "assistant",
        tags["system_tag"]: "system",
        tags["observation_tag"]: "tool",
        tags["function_tag"]: "function_call",
    }
    if tags is OPENAI_TAGS or tags.get("observation_tag") == "tool":
        roles["function"] = "tool"  # the deprecated OpenAI name of a tool result
    if tags.get("role_tag") == "role" and tags.get("system_tag") == "system":
        roles.setdefault("developer", "system")  # newer OpenAI models call the system message "developer"
    role = roles.get(tag) if isinstance(tag, str) else None
    if role is None:
        known = ", ".join(repr(t) for t in roles)
        raise _err(f"unknown role {tag!r} (expected one of {known})", f"{field_}.{role_tag}", "unknown_role")
    content_field = f"{field_}.{content_tag}"
    if role == "function_call":
        if content_tag not in raw:
            raise _err("function_call message has no content", content_field, "missing_field")
        return Message("assistant", "", tool_calls=_function_call_value(raw[content_tag], content_field))
    openai = tags.get("content_tag") == "content"
    tool_calls: list[ToolCall] = []
    if raw.get("tool_calls"):
        if role != "assistant":
            raise _err(
                f"only assistant messages may carry tool_calls, not {tag!r}", f"{field_}.tool_calls", "turn_order"
            )
        if not isinstance(raw["tool_calls"], list):
            raise _err("tool_calls must be a list", f"{field_}.tool_calls", "wrong_type")
        tool_calls = [_tool_call(c, f"{field_}.tool_calls[{i}]") for i, c in enumerate(raw["tool_calls"])]
    elif openai and role == "assistant" and raw.get("function_call") is not None:
        # The deprecated single-call form of the OpenAI API: {"name", "arguments"} on the assistant message.
        tool_calls = [_tool_call(raw["function_call"], f"{field_}.function_call")]
    if content_tag in raw:
        content = raw[content_tag]
    elif tool_calls or (openai and role == "assistant" and isinstance(raw.get("refusal"), str)):
        content = None  # the OpenAI spec lets an assistant message with tool_calls (or a refusal) omit content
    else:
        raise _err(f"message has no {content_tag!r}", content_field, "missing_field")
    if content is None and openai and role == "assistant" and isinstance(raw.get("refusal"), str) and not tool_calls:
        content, content_field = raw["refusal"], f"{field_}.refusal"
    if content is None and tool_calls:
        content = ""
    text = _text(content, content_field, allow_empty=bool(tool_calls))
    train = raw.get("train")
    if train is not None and not isinstance(train, bool):
        raise _err(f"train must be true/false, got {train!r}", f"{field_}.train", "wrong_type")
    if "weight" in raw:
        # OpenAI fine-tuning: `weight` 0 or 1 on an assistant message says whether it is trained.
        weight = raw["weight"]
        if isinstance(weight, bool) or weight not in (0, 1):
            raise _err(f"weight must be 0 or 1, got {weight!r}", f"{field_}.weight", "wrong_type")
        if role != "assistant":
            raise _err(f"weight applies to assistant messages only, not {tag!r}", f"{field_}.weight", "wrong_type")
        if train is not None and train != bool(weight):
            raise _err(f"weight {weight} contradicts train {train}", f"{field_}.weight", "wrong_type")
        train = bool(weight)
    return Message(role, text, tool_calls=tool_calls, train=train)


def parse_messages(raw: Any, field_: str, tags: dict[str, str]) -> list[Message]:
    """A message list. OpenAI `tool_call_id`s are checked against the ids of the preceding assistant's tool calls,
    and a block of tool results given in another order than the calls is put into call order (the templates pair
    a result with its call by position)."""
    if not isinstance(raw, list):
        raise _err(f"expected a list of messages, got {type(raw).__name__}", field_, "wrong_type")
    messages = [parse_message(m, f"{field_}[{i}]", tags) for i, m in enumerate(raw)]
    call_ids: list[str] = []
    block: list[tuple[int, int]] = []  # (message index, call position) of the current run of tool results

    def close_block() -> None:
        positions = [pos for _, pos in block]
        if positions != sorted(positions):
            idx = [i for i, _ in block]
            ordered = [messages[i] for i, _ in sorted(block, key=lambda b: b[1])]
            for i, m in zip(idx, ordered):
                messages[i] = m
        block.clear()

    for i, (item, msg) in enumerate(zip(raw, messages)):
        if msg.role == "assistant":
            close_block()
            ids = [c.get("id") if isinstance(c, dict) else None for c in (item.get("tool_calls") or [])]
            call_ids = [x for x in ids if isinstance(x, str)] if all(isinstance(x, str) for x in ids) else []
        elif msg.role == "tool" and isinstance(item, dict) and item.get("tool_call_id") is not None:
            ref = item["tool_call_id"]
            where = f"{field_}[{i}].tool_call_id"
            if call_ids and ref not in call_ids:
                raise _err(
                    f"tool_call_id {ref!r} matches no tool call of the preceding assistant message (ids: "
                    f"{', '.join(call_ids)})",
                    where,
                    "turn_order",
                )
            if call_ids:
                pos = call_ids.index(ref)
                if any(p == pos for _, p in block):
                    raise _err(f"a second result for tool call {ref!r}", where, "turn_order")
                block.append((i, pos))
        else:
            close_block()
            call_ids = []
    close_block()
    return messages


def check_order(messages: list[Message], field_: str, *, end: str) -> None:
    """Turn order rules; `end` is "assistant" (SFT: the last turn is trained) or "prompt" (ends with user/tool).

    system only first; then a user turn first; no two user or two assistant turns in a row; tool results only right
    after an assistant tool call (at most one result per call); after a tool result comes an assistant turn.
    """
    if not messages:
        raise _err("the conversation has no messages", field_, "empty_content")
    pending_calls = 0  # tool calls of the last assistant message that have no result yet
    prev = None
    for i, m in enumerate(messages):
        where = f"{field_}[{i}]"
        if m.role == "system":
            if i != 0:
                raise _err("a system message may only be the first message", where, "turn_order")
        elif m.role == "user":
            if prev == "user":
                raise _err("two user turns in a row", where, "turn_order")
            if prev == "tool":
                raise _err(
                    "a user turn right after a tool result (expected the assistant's reply)", where, "turn_order"
                )
        elif m.role == "assistant":
            if prev in (None, "system"):
                raise _err("the assistant speaks before any user turn", where, "turn_order")
            if prev == "assistant":
                raise _err("two assistant turns in a row", where, "turn_order")
        elif m.role == "tool":
            if pending_calls == 0:
                raise _err("a tool result without a preceding assistant tool call", where, "turn_order")
            pending_calls -= 1
        if m.role == "assistant":
            pending_calls = len(m.tool_calls)
        elif m.role != "tool":
            pending_calls = 0
        prev = m.role
    last = messages[-1].role
    if end == "assistant" and last != "assistant":
        raise _err(f"the conversation ends with a {last} turn; SFT needs a final assistant turn", field_, "turn_order")
    if end == "prompt" and last not in ("user", "tool"):
        raise _err(f"a preference prompt must end with a user (or tool) turn, not {last}", field_, "turn_order")


def _system_message(rec: dict, layout: Layout) -> list[Message]:
    key = layout.columns.get("system")
    value = _get(rec, key)
    if value is None or value == "":
        return []  # an absent/empty system column means "no system prompt" (LLaMA-Factory writes "")
    return [Message("system", _text(value, key))]


def _kto(rec: dict, layout: Layout) -> dict:
    key = layout.columns.get("kto_tag")
    if key is None:
        return {}
    value = _get(rec, key, required=True)
    if not isinstance(value, bool):
        raise _err(f"KTO label must be true/false, got {value!r}", key, "wrong_type")
    return {"kto_label": value}


def _reply(value: Any, field_: str, tags: dict[str, str]) -> Message:
    """A preference candidate: a string, one message, or a one-message list; it must be the assistant's."""
    if isinstance(value, str):
        return Message("assistant", _text(value, field_))
    if isinstance(value, list) and len(value) == 1:
        value, field_ = value[0], f"{field_}[0]"
    if isinstance(value, list):
        raise _err(f"expected one assistant reply, got {len(value)} messages", field_, "wrong_type")
    msg = parse_message(value, field_, _tags_for([value], tags))
    if msg.role != "assistant":
        raise _err(f"a chosen/rejected reply must be the assistant's, not {msg.role}", field_, "turn_order")
    return msg


def _tags_for(messages: Any, tags: Layout | dict[str, str]) -> dict[str, str]:
    """The layout's tags, unless the first message plainly uses the other convention (role/content vs from/value)."""
    tags = tags.tags if isinstance(tags, Layout) else tags
    if (
        isinstance(messages, list)
        and messages
        and isinstance(messages[0], dict)
        and tags["role_tag"] not in messages[0]
    ):
        if "role" in messages[0]:
            return OPENAI_TAGS
        if "from" in messages[0]:
            return SHAREGPT_TAGS
    return tags


# --- converters: each takes the record dict and the layout and returns one record ---


def convert_alpaca(rec: dict, layout: Layout) -> Conversation | PreferencePair:
    cols = layout.columns
    messages = _system_message(rec, layout)
    history = _get(rec, cols.get("history"))
    if history:
        if not isinstance(history, list):
            raise _err("history must be a list of [user, assistant] pairs", cols["history"], "wrong_type")
        for i, pair in enumerate(history):
            where = f"{cols['history']}[{i}]"
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                raise _err("each history item must be a [user, assistant] pair", where, "wrong_type")
            messages.append(Message("user", _text(pair[0], f"{where}[0]")))
            messages.append(Message("assistant", _text(pair[1], f"{where}[1]")))
    prompt = _text(_get(rec, cols["prompt"], required=True), cols["prompt"], allow_empty=True)
    query = _get(rec, cols.get("query"))
    query = _text(query, cols["query"], allow_empty=True) if query is not None else ""
    # LLaMA-Factory joins the non-empty instruction and input with a newline.
    user = "\n".join(part for part in (prompt, query) if part)
    if not user.strip():
        raise _err("empty content (instruction and input are both empty)", cols["prompt"], "empty_content")
    messages.append(Message("user", user))
    tools = parse_tools(_get(rec, cols.get("tools")), cols.get("tools") or "tools")
    if layout.ranking or layout.format == "preference":
        chosen_key, rejected_key = cols.get("chosen", "chosen"), cols.get("rejected", "rejected")
        tags = layout.tags
        chosen = _reply(_get(rec, chosen_key, required=True), chosen_key, tags)
        rejected = _reply(_get(rec, rejected_key, required=True), rejected_key, tags)
        check_order(messages, "prompt", end="prompt")
        return PreferencePair(Conversation(messages, tools=tools), chosen, rejected)
    response_key = cols["response"]
    messages.append(Message("assistant", _text(_get(rec, response_key, required=True), response_key)))
    check_order(messages, "messages", end="assistant")
    return Conversation(messages, tools=tools, meta=_kto(rec, layout))


def _chat(rec: dict, layout: Layout) -> Conversation | PreferencePair:
    """sharegpt and openai: a message list (+ system column, tools); with `ranking`, plus chosen/rejected."""
    cols = layout.columns
    key = cols["messages"]
    raw = _get(rec, key, required=True)
    tags = _tags_for(raw, layout)
    messages = parse_messages(raw, key, tags)
    if not (messages and messages[0].role == "system"):
        messages = _system_message(rec, layout) + messages
    tools = parse_tools(_get(rec, cols.get("tools")), cols.get("tools") or "tools")
    meta = dict(rec["meta"]) if isinstance(rec.get("meta"), dict) else {}
    if layout.ranking:
        chosen_key, rejected_key = cols.get("chosen", "chosen"), cols.get("rejected", "rejected")
        chosen = _reply(_get(rec, chosen_key, required=True), chosen_key, tags)
        rejected = _reply(_get(rec, rejected_key, required=True), rejected_key, tags)
        check_order(messages, key, end="prompt")
        return PreferencePair(Conversation(messages, tools=tools), chosen, rejected, meta=_with_margin(rec, meta))
    check_order(messages, key, end="assistant")
    return Conversation(messages, tools=tools, meta={**meta, **_kto(rec, layout)})


def convert_sharegpt(rec: dict, layout: Layout) -> Conversation | PreferencePair:
    return _chat(rec, layout)


def convert_openai(rec: dict, layout: Layout) -> Conversation | PreferencePair:
    return _chat(rec, layout)


def _with_margin(rec: dict, meta: dict) -> dict:
    """A pair's own reward-model margin (stage rm), kept from a top-level `margin` field; checked by the recipe."""
    return {**meta, "margin": rec["margin"]} if "margin" in rec else meta


def convert_preference(rec: dict, layout: Layout) -> PreferencePair:
    """Preference pairs in any of the shapes listed in the module docstring (a `margin` field is kept in meta)."""
    pair = _convert_preference(rec, layout)
    pair.meta = _with_margin(rec, pair.meta)
    return pair


def _convert_preference(rec: dict, layout: Layout) -> PreferencePair:
    cols = layout.columns
    chosen_key, rejected_key = cols["chosen"], cols["rejected"]
    chosen_raw = _get(rec, chosen_key, required=True)
    rejected_raw = _get(rec, rejected_key, required=True)
    msg_key = cols.get("messages") or next((k for k in ("conversations", "messages") if k in rec), None)
    if msg_key and msg_key in rec:
        return _chat(rec, Layout(layout.format, {**cols, "messages": msg_key}, layout.tags, ranking=True))
    if (cols.get("prompt") and cols["prompt"] in rec) or "instruction" in rec:
        alpaca = Layout.make("alpaca", {k: v for k, v in cols.items() if k in COLUMN_KEYS})
        return convert_alpaca(rec, Layout("alpaca", alpaca.columns, layout.tags, ranking=True))  # type: ignore[return-value]
    tools = parse_tools(_get(rec, cols.get("tools")), cols.get("tools") or "tools")
    if "prompt" in rec:
        raw_prompt = rec["prompt"]
        if isinstance(raw_prompt, str):
            prompt = [Message("user", _text(raw_prompt, "prompt"))]
        else:
            prompt = parse_messages(raw_prompt, "prompt", _tags_for(raw_prompt, layout))
        if not (prompt and prompt[0].role == "system"):
            prompt = _system_message(rec, layout) + prompt
        chosen = _candidate_after(prompt, chosen_raw, chosen_key, layout)
        rejected = _candidate_after(prompt, rejected_raw, rejected_key, layout)
    else:
        # Implicit prompt: chosen and rejected are whole conversations sharing everything but the last reply.
        if not (isinstance(chosen_raw, list) and isinstance(rejected_raw, list)):
            raise _err("no prompt: give conversations/messages, prompt, or instruction", "prompt", "missing_field")
        full_c = parse_messages(chosen_raw, chosen_key, _tags_for(chosen_raw, layout))
        full_r = parse_messages(rejected_raw, rejected_key, _tags_for(rejected_raw, layout))
        if len(full_c) < 2 or full_c[:-1] != full_r[:-1]:
            raise _err(
                "chosen and rejected must share the prompt and differ only in the last reply", chosen_key, "turn_order"
            )
        prompt, chosen, rejected = full_c[:-1], full_c[-1], full_r[-1]
        for msg, key in ((chosen, chosen_key), (rejected, rejected_key)):
            if msg.role != "assistant":
                raise _err("the last message must be the assistant's reply", key, "turn_order")
    check_order(prompt, "prompt", end="prompt")
    return PreferencePair(Conversation(prompt, tools=tools), chosen, rejected)


def _candidate_after(prompt: list[Message], raw: Any, key: str, layout: Layout) -> Message:
    """A chosen/rejected value given with an explicit prompt; a message list may repeat the prompt first."""
    if isinstance(raw, list) and len(raw) > 1:
        msgs = parse_messages(raw, key, _tags_for(raw, layout))
        if msgs[: len(prompt)] == prompt:
            msgs = msgs[len(prompt) :]
        if len(msgs) != 1 or msgs[0].role != "assistant":
            raise _err("expected exactly one assistant reply after the prompt", key, "turn_order")
        return msgs[0]
    return _reply(raw, key, _tags_for(raw, layout) if isinstance(raw, list) else layout.tags)


def convert_text(rec: dict, layout: Layout) -> TextDoc:
    key = layout.columns["prompt"]
    meta = dict(rec["meta"]) if isinstance(rec.get("meta"), dict) else {}
    return TextDoc(_text(_get(rec, key, required=True), key), meta=meta)


CONVERTERS = {
    "alpaca": convert_alpaca,
    "sharegpt": convert_sharegpt,
    "openai": convert_openai,
    "preference": convert_preference,
    "text": convert_text,
}


def detect_layout(rec: Any) -> Layout:
    """Pick the format from the first record's keys (see the module docstring for what each format holds)."""
    if not isinstance(rec, dict):
        raise _err(f"a record must be a JSON object, got {type(rec).__name__}", None, "wrong_type")
    keys = set(rec)
    if "chosen" in keys and "rejected" in keys:
        return Layout.make("preference")
    # A boolean `label` (LLaMA-Factory's kto demo) or `kto_tag` marks a KTO example.
    kto_key = next((k for k in ("label", "kto_tag") if isinstance(rec.get(k), bool)), None)
    kto = {"kto_tag": kto_key} if kto_key else {}
    if "conversations" in keys:
        return Layout.make("sharegpt", kto) if kto else Layout.make("sharegpt")
    if "messages" in keys:
        msgs = rec["messages"]
        if isinstance(msgs, list) and msgs and isinstance(msgs[0], dict) and "from" in msgs[0]:
            return Layout.make("sharegpt", {"messages": "messages", **kto})
        return Layout.make("openai", kto)
    if "instruction" in keys:
        return Layout.make("alpaca")
    if "text" in keys:
        return Layout.make("text")
    raise _err(
        f"cannot tell the format from the keys {sorted(keys)}; expected alpaca (instruction/output), sharegpt "
        "(conversations), openai (messages), preference (chosen/rejected) or text (text); or pass format=",
        None,
        "unknown_format",
    )
