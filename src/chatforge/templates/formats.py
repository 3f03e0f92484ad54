"""The built-in chat templates, each defined once as data; rendering, masks and the Jinja text all derive from it.

A template is a handful of literal pieces around message content plus a few switches (where the system prompt and the
tool definitions go, how a tool call is written, whether consecutive tool results share one turn, Qwen3's thinking
block). Nothing here knows about tokenizers: the same definition feeds the Python renderer (training, inference) and
the generated Jinja template (saved with the tokenizer so transformers, vLLM and llama.cpp render exactly what we
trained on). Each family's pieces were written from its published prompt format; where a family documents no tool
format (Gemma, DeepSeek, Yi, Baichuan 2, Llama 2) chatforge's generic `<tool_call>` JSON format is used.

Placeholders: `{content}` (message text) everywhere, `{round}` (1-based user-turn counter, from `round_start`) in
`user`, `{call}` (the JSON object `{"name": ..., "<call_args_key>": {...}}`), `{name}`, `{arguments}` (JSON) and
`{kwargs}` (Python keyword arguments, ChatGLM3) in `tool_call`, `{calls}` in `tool_calls_block`, `{id}` (the answered
call's id, with `call_ids`) in `tool`, `{date}` in `system_header`.

User-defined templates: a YAML file with the same field names (see `load_template_file`), given as `template.name`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, replace
from pathlib import Path

from chatforge.errors import ChatforgeError

TOOLS_INTRO = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
)
TOOLS_OUTRO = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call>"
)
TOOL_CALL_OPEN = "<tool_call>\n"
TOOL_CALL_CLOSE = "\n</tool_call>"
HERMES_TOOL_CALL = TOOL_CALL_OPEN + "{call}" + TOOL_CALL_CLOSE

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

REASONING_MODES = ("none", "think", "nothink")
TOOLS_PLACEMENTS = ("system", "before_first_user")
TOOLS_LAYOUTS = ("lines", "json_list")
TOOLS_ITEMS = ("openai", "function")
TRAINABLE_ROLES = ("assistant", "tool_call", "user", "system", "tool")


@dataclass(frozen=True)
class ChatTemplate:
    """Literal pieces of one chat format.

    An assistant turn is `assistant_header + [reply_prefix] content [content_call_sep tool calls] + assistant_end +
    assistant_sep`. The reply, the tool calls and `assistant_end` (the end-of-turn marker the model must learn to emit)
    are trained; the header and separator are not. Formats that end a reply with the next turn's role marker
    (ChatGLM3) set `train_next_marker` (that marker is then trained) and `final_end` (trained after a last reply).
    """

    name: str
    system: str  # a whole system block, e.g. "<|im_start|>system\n{content}<|im_end|>\n"
    user: str
    assistant_header: str  # also the generation prompt
    assistant_end: str  # end-of-turn marker; generation stops here
    tool: str  # one tool result (observation); wrapped in tool_open/tool_close
    special_tokens: tuple[str, ...]  # markers that must be single special tokens in the tokenizer
    bos: str = ""  # emitted once at the very start
    assistant_sep: str = ""  # untrained text after the end-of-turn marker
    default_system: str | None = None  # used when a conversation has no system message
    # Formats without a system block (Llama 2, Gemma, Mistral) fold the system prompt into the first user message.
    system_in_first_user: str | None = None
    # Tool results: each is tool_open + tool + tool_close, or with merge_tool_results a run of consecutive results
    # shares one tool_open ... tool_close (Qwen2.5/Qwen3), joined by tool_join.
    tool_open: str = ""
    tool_close: str = ""
    tool_join: str = ""
    merge_tool_results: bool = False
    reply_prefix: str = ""  # trained text before a text reply (the space after Mistral's [/INST], GLM's "\n")
    # Tool calls in assistant turns.
    tool_call: str = HERMES_TOOL_CALL
    tool_call_join: str = "\n"
    tool_calls_block: str = "{calls}"
    content_call_sep: str = "\n"  # between reply text and the calls, when there is text
    call_args_key: str = "arguments"
    # Tool definitions.
    tools_intro: str = TOOLS_INTRO
    tools_outro: str = TOOLS_OUTRO
    tools_item: str = "openai"  # openai: {"type": "function", "function": spec}; function: the spec itself
    tools_layout: str = "lines"  # lines: one JSON per item joined by tools_join; json_list: one JSON array
    tools_join: str = "\n"
    tools_indent: int | None = None
    tools_placement: str = "system"  # system: appended to the system prompt; before_first_user: own block
    reasoning: str = "none"  # none | think (Qwen3 thinking) | nothink (Qwen3, thinking switched off)
    train_next_marker: bool = False
    final_end: str = ""
    round_start: int = 1
    # Which turns the `all_assistant` / `last_assistant` masks train: text replies and tool-calling replies by default.
    trained_roles: tuple[str, ...] = ("assistant", "tool_call")
    stop_words: tuple[str, ...] = ()  # extra strings that end generation
    # Llama 3.1+: a header at the top of the system turn, which is then always present (also without a system
    # message); `{date}` is `date` ("DD Mon YYYY", `template.date`); `tools_system_note` comes first when tools are
    # given ("Environment: ipython").
    system_header: str = ""
    tools_system_note: str = ""
    date: str | None = None
    # Mistral: every tool call carries a 9-character alphanumeric id ("id" in the call JSON) that the tool result
    # quotes (`{id}` in `tool`). chatforge's records have no ids, so they are derived from the call (see
    # `render.tool_call_id`); messages that bring their own OpenAI ids keep them in the Jinja.
    call_ids: bool = False
    # template.use_model_jinja: the model's own Jinja renders the text (masks from rendered prefixes, see
    # chatforge.templates.model_jinja); the pieces above then only give stop strings and the tool-call syntax.
    model_jinja: str | None = None
    jinja_vars: tuple[tuple[str, str], ...] = ()  # bos_token, eos_token, ... as the tokenizer passes them
    jinja_specials: tuple[str, ...] = ()  # the tokenizer's special-token texts (message text must not spell them)

    def with_default_system(self, text: str | None) -> ChatTemplate:
        return replace(self, default_system=text)

    @property
    def stop_strings(self) -> list[str]:
        out = []
        for s in (self.assistant_end.strip(), *self.stop_words, self.final_end.strip()):
            if s and s not in out:
                out.append(s)
        return out


def _chatml(name: str, **kw) -> ChatTemplate:
    base = dict(
        name=name,
        system="<|im_start|>system\n{content}<|im_end|>\n",
        user="<|im_start|>user\n{content}<|im_end|>\n",
        assistant_header="<|im_start|>assistant\n",
        assistant_end="<|im_end|>",
        assistant_sep="\n",
        tool_open="<|im_start|>user\n",
        tool="<tool_response>\n{content}\n</tool_response>",
        tool_close="<|im_end|>\n",
        special_tokens=("<|im_start|>", "<|im_end|>"),
    )
    base.update(kw)
    return ChatTemplate(**base)


CHATML = _chatml("chatml")
CHATGLM3_CODE_CALL = "{name}\n```python\ntool_call({kwargs})\n```"
QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

LLAMA31_SYSTEM_HEADER = "Cutting Knowledge Date: December 2023\nToday Date: {date}\n\n"
LLAMA31_DEFAULT_DATE = "26 Jul 2024"

LLAMA3_TOOLS_INTRO = (
    "Environment: ipython\n\nYou can call the functions below. To call one, reply with only a JSON object of the form "
    '{"name": function name, "parameters": dictionary of argument name and its value}. Do not use variables.\n\n'
)

# Llama 3's turns and JSON tool calling; Llama 3.1+ (below) adds its dated system header.
LLAMA3 = ChatTemplate(
    name="llama3",
    bos="<|begin_of_text|>",
    system="<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
    user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
    assistant_header="<|start_header_id|>assistant<|end_header_id|>\n\n",
    assistant_end="<|eot_id|>",
    # Llama 3.1+ JSON tool calling: the call is the whole reply, results come back in the `ipython` role.
    tool_open="<|start_header_id|>ipython<|end_header_id|>\n\n",
    tool="{content}",
    tool_close="<|eot_id|>",
    tool_call="{call}",
    call_args_key="parameters",
    tools_intro=LLAMA3_TOOLS_INTRO,
    tools_outro="",
    tools_join="\n\n",
    tools_indent=4,
    stop_words=("<|eom_id|>",),
    special_tokens=("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>"),
)

_TEMPLATE_LIST = [
    CHATML,
    # SmolLM2-Instruct's own format: ChatML with its default system prompt.
    _chatml("smollm2", default_system="You are a helpful AI assistant named SmolLM, trained by Hugging Face"),
    # Qwen2.5: ChatML, its default system prompt, back-to-back tool results in one user turn.
    _chatml(
        "qwen2.5",
        default_system=QWEN_SYSTEM,
        merge_tool_results=True,
        tool="\n" + "<tool_response>\n{content}\n</tool_response>",
        tool_open="<|im_start|>user",
    ),
    # Qwen3: no default system prompt; `<think>` blocks kept on the replies after the last user turn.
    _chatml(
        "qwen3",
        merge_tool_results=True,
        tool="\n<tool_response>\n{content}\n</tool_response>",
        tool_open="<|im_start|>user",
        reasoning="think",
    ),
    _chatml(
        "qwen3_nothink",
        merge_tool_results=True,
        tool="\n<tool_response>\n{content}\n</tool_response>",
        tool_open="<|im_start|>user",
        reasoning="nothink",
    ),
    _chatml("yi"),
    ChatTemplate(
        name="llama2",
        system="",  # folded into the first user turn
        system_in_first_user="<<SYS>>\n{content}\n<</SYS>>\n\n",
        user="<s>[INST] {content} [/INST]",
        assistant_header=" ",
        assistant_end=" </s>",
        tool_open="<s>[INST] ",
        tool="<tool_response>\n{content}\n</tool_response>",
        tool_close=" [/INST]",
        special_tokens=("<s>", "</s>"),
    ),
    LLAMA3,
    # Llama 3.1 / 3.2 / 3.3: Llama 3's turns plus the system header Meta documents for these models: the knowledge
    # cutoff and today's date (its own templates default the date to 26 Jul 2024), "Environment: ipython" with tools.
    replace(
        LLAMA3,
        name="llama3.1",
        system_header=LLAMA31_SYSTEM_HEADER,
        tools_system_note="Environment: ipython\n",
        date=LLAMA31_DEFAULT_DATE,
    ),
    ChatTemplate(
        name="chatglm3",
        bos="[gMASK]sop",
        system="<|system|>\n{content}",
        user="<|user|>\n{content}",
        # The line after <|assistant|> is metadata: empty for a text reply, the function name for a tool call.
        assistant_header="<|assistant|>",
        assistant_end="",
        reply_prefix="\n",
        tool_open="<|observation|>\n",
        tool="{content}",
        # ChatGLM3's own call syntax: the function name on the metadata line, then a Python call in a code block
        # (its reference code evaluates `tool_call(**kwargs)`; chatforge parses it with `ast`, never eval).
        tool_call=CHATGLM3_CODE_CALL,
        tools_intro="Answer the following questions as best as you can. You have access to the following tools:\n",
        tools_outro="",
        tools_item="function",
        tools_layout="json_list",
        tools_indent=4,
        # A reply ends where the next role marker starts; that marker is what the model learns to emit.
        train_next_marker=True,
        final_end="</s>",
        stop_words=("<|user|>", "<|observation|>"),
        special_tokens=("[gMASK]", "sop", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>", "</s>"),
    ),
    ChatTemplate(
        name="mistral",
        bos="<s>",
        system="",
        system_in_first_user="{content}\n\n",
        user="[INST] {content}[/INST]",
        assistant_header="",
        reply_prefix=" ",
        assistant_end="</s>",
        tool='[TOOL_RESULTS] {"content": {content}, "call_id": "{id}"}[/TOOL_RESULTS]',
        tool_call="{call}",
        call_ids=True,
        tool_call_join=", ",
        tool_calls_block="[TOOL_CALLS] [{calls}]",
        content_call_sep="",
        tools_intro="[AVAILABLE_TOOLS] ",
        tools_outro="[/AVAILABLE_TOOLS]",
        tools_layout="json_list",
        tools_placement="before_first_user",
        special_tokens=(
            "<s>",
            "</s>",
            "[INST]",
            "[/INST]",
            "[TOOL_CALLS]",
            "[AVAILABLE_TOOLS]",
            "[/AVAILABLE_TOOLS]",
            "[TOOL_RESULTS]",
            "[/TOOL_RESULTS]",
        ),
    ),
    ChatTemplate(
        name="gemma",
        bos="<bos>",
        system="",
        system_in_first_user="{content}\n\n",
        user="<start_of_turn>user\n{content}<end_of_turn>\n",
        assistant_header="<start_of_turn>model\n",
        assistant_end="<end_of_turn>",
        assistant_sep="\n",
        tool_open="<start_of_turn>user\n",
        tool="<tool_response>\n{content}\n</tool_response>",
        tool_close="<end_of_turn>\n",
        special_tokens=("<bos>", "<start_of_turn>", "<end_of_turn>"),
    ),
    # DeepSeek LLM / V2 chat: the generation prompt is "Assistant:" and the model writes the space.
    ChatTemplate(
        name="deepseek",
        bos="<｜begin▁of▁sentence｜>",
        system="{content}\n\n",
        user="User: {content}\n\n",
        assistant_header="Assistant:",
        reply_prefix=" ",
        assistant_end="<｜end▁of▁sentence｜>",
        tool_open="Observation: ",
        tool="{content}",
        tool_close="\n\n",
        special_tokens=("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
    ),
    ChatTemplate(
        name="deepseek3",
        bos="<｜begin▁of▁sentence｜>",
        system="{content}",
        user="<｜User｜>{content}",
        assistant_header="<｜Assistant｜>",
        assistant_end="<｜end▁of▁sentence｜>",
        tool_open="<｜User｜>",
        tool="<tool_response>\n{content}\n</tool_response>",
        special_tokens=("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"),
    ),
    ChatTemplate(
        name="baichuan2",
        system="{content}",
        user="<reserved_106>{content}",
        assistant_header="<reserved_107>",
        assistant_end="</s>",
        tool_open="<reserved_106>",
        tool="<tool_response>\n{content}\n</tool_response>",
        special_tokens=("<reserved_106>", "<reserved_107>", "</s>"),
    ),
    # The `<s>Human: ...\n</s><s>Assistant: ...</s>` format (Llama2-Chinese and friends).
    ChatTemplate(
        name="human_assistant",
        system="<s>System: {content}\n</s>",
        user="<s>Human: {content}\n</s>",
        assistant_header="<s>Assistant: ",
        assistant_end="</s>",
        tool_open="<s>Observation: ",
        tool="{content}",
        tool_close="\n</s>",
        special_tokens=("<s>", "</s>"),
    ),
]

# The layout LLaMA-Factory's `chatglm3` writes (and chatforge's `chatglm3` before code-style calls): JSON arguments.
_TEMPLATE_LIST.append(
    replace(
        next(t for t in _TEMPLATE_LIST if t.name == "chatglm3"), name="chatglm3_json", tool_call="{name}\n{arguments}"
    )
)

TEMPLATES: dict[str, ChatTemplate] = {t.name: t for t in _TEMPLATE_LIST}

# LLaMA-Factory's template names (and common spellings) -> ours. LLaMA-Factory's `qwen` is the Qwen2/2.5 format.
ALIASES: dict[str, str] = {
    "qwen": "qwen2.5",
    "qwen2": "qwen2.5",
    "qwen2_5": "qwen2.5",
    "qwen25": "qwen2.5",
    "llama3_1": "llama3.1",
    "llama3.2": "llama3.1",
    "llama3_2": "llama3.1",
    "llama3.3": "llama3.1",
    "llama3_3": "llama3.1",
    "gemma2": "gemma",
    "gemma3": "gemma",
    "deepseek2": "deepseek",
    "deepseekv3": "deepseek3",
    "deepseekr1": "deepseek3",
    "baichuan_2": "baichuan2",
    "glm3": "chatglm3",
    "mistral_v3": "mistral",
    "ministral": "mistral",
    "llama2_zh": "human_assistant",
    "smollm": "smollm2",
}


def check_date(text: str) -> str:
    """A `template.date`: "DD Mon YYYY" (as Llama 3.1 writes it, e.g. "05 Mar 2025"), or "today" (UTC, resolved
    now). Returns the date text; raises ChatforgeError naming the expected form."""
    import datetime

    value = str(text).strip()
    if value.lower() == "today":
        return datetime.datetime.now(datetime.timezone.utc).strftime("%d %b %Y")
    months = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
    parts = value.split(" ")
    try:
        if len(parts) != 3 or len(parts[0]) != 2 or parts[1] not in months or len(parts[2]) != 4:
            raise ValueError(value)
        datetime.date(int(parts[2]), months.index(parts[1]) + 1, int(parts[0]))
    except ValueError:
        raise ChatforgeError(
            f"{value!r} is not a date of the form 'DD Mon YYYY' (e.g. '05 Mar 2025') or 'today'"
        ) from None
    return value


def with_date(template: ChatTemplate, date: str | None) -> ChatTemplate:
    """The template with `template.date` applied (checked); templates without a date header are returned unchanged
    when `date` is None and refused otherwise (the setting would do nothing)."""
    if date is None:
        return template
    if "{date}" not in template.system_header:
        raise ChatforgeError(
            f"template.date is set, but chat template {template.name!r} has no date header (llama3.1 has one)"
        )
    return replace(template, date=check_date(date))


def template_names() -> list[str]:
    return list(TEMPLATES) + list(ALIASES)


def get_template(name: str | ChatTemplate) -> ChatTemplate:
    """Look a template up by name, LLaMA-Factory alias, or path of a YAML template file (or pass one through)."""
    if isinstance(name, ChatTemplate):
        return name
    key = str(name).strip()
    if key.endswith((".yaml", ".yml")) or "/" in key:
        return load_template_file(key)
    key = key.lower()
    key = ALIASES.get(key, key)
    try:
        return TEMPLATES[key]
    except KeyError:
        raise ChatforgeError(
            f"unknown chat template {name!r}; choose one of: {', '.join(TEMPLATES)} (aliases: {', '.join(ALIASES)}), "
            "or give the path of a template YAML file"
        ) from None


# ----------------------------------------------------------------------------------------------------- YAML files

_REQUIRED = ("user", "assistant_header", "assistant_end")


def template_from_dict(data: dict, source: str = "<template>") -> ChatTemplate:
    """Build a `ChatTemplate` from a mapping with its field names; every problem is reported together."""
    if not isinstance(data, dict):
        raise ChatforgeError(f"{source}: a template file must be a YAML mapping of field: value")
    fields = {f.name: f for f in dataclasses.fields(ChatTemplate)}
    problems = []
    values: dict = {}
    for key, value in data.items():
        if key not in fields:
            import difflib

            near = difflib.get_close_matches(str(key), list(fields), n=1)
            problems.append(f"{key}: unknown field" + (f" (did you mean {near[0]!r}?)" if near else ""))
            continue
        if key in ("special_tokens", "trained_roles", "stop_words"):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                problems.append(f"{key}: expected a list of strings")
                continue
            value = tuple(value)
        elif key in ("merge_tool_results", "train_next_marker", "call_ids"):
            if not isinstance(value, bool):
                problems.append(f"{key}: expected true or false")
                continue
        elif key in ("tools_indent", "round_start"):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                problems.append(f"{key}: expected an integer")
                continue
        elif key in ("default_system", "system_in_first_user", "date"):
            if value is not None and not isinstance(value, str):
                problems.append(f"{key}: expected a string or null")
                continue
        elif not isinstance(value, str):
            problems.append(f"{key}: expected a string, got {type(value).__name__}")
            continue
        values[key] = value
    for key in _REQUIRED:
        if key not in data:
            problems.append(f"{key}: required")
    choices = {
        "reasoning": REASONING_MODES,
        "tools_placement": TOOLS_PLACEMENTS,
        "tools_layout": TOOLS_LAYOUTS,
        "tools_item": TOOLS_ITEMS,
    }
    for key, allowed in choices.items():
        if key in values and values[key] not in allowed:
            problems.append(f"{key}: {values[key]!r} is not one of {', '.join(allowed)}")
    for role in values.get("trained_roles", ()):
        if role not in TRAINABLE_ROLES:
            problems.append(f"trained_roles: {role!r} is not one of {', '.join(TRAINABLE_ROLES)}")
    if "user" in values and "{content}" not in values["user"]:
        problems.append("user: must contain {content}")
    if "tool_call" in values and not any(p in values["tool_call"] for p in ("{call}", "{arguments}", "{kwargs}")):
        problems.append("tool_call: must contain {call}, {arguments} or {kwargs}")
    if values.get("date") is not None:
        try:
            values["date"] = check_date(values["date"])
        except ChatforgeError as err:
            problems.append(f"date: {err}")
    if "tool_calls_block" in values and "{calls}" not in values["tool_calls_block"]:
        problems.append("tool_calls_block: must contain {calls}")
    if problems:
        raise ChatforgeError(f"{len(problems)} problem(s) in chat template {source}:\n  " + "\n  ".join(problems))
    values.setdefault("name", Path(source).stem)
    values.setdefault("system", "{content}")
    values.setdefault("tool", "{content}")
    if "special_tokens" not in values:
        values["special_tokens"] = ()
    return ChatTemplate(**values)


def load_template_file(path: str | Path) -> ChatTemplate:
    """A user-defined template from YAML: the `ChatTemplate` field names as keys (strings with `{content}` etc.)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ChatforgeError(f"chat template file {str(p)!r} not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ChatforgeError(f"{p}: not valid YAML ({err})") from None
    return template_from_dict(data, str(p))


def template_to_dict(template: ChatTemplate) -> dict:
    """The template as plain data (what a YAML template file holds)."""
    out = dataclasses.asdict(template)
    return json.loads(json.dumps(out))
