"""The built-in chat templates, each defined once as data; rendering, masks and the Jinja text all derive from it.

A template is a handful of literal pieces around message content. Nothing here knows about tokenizers: the same
definition feeds the Python renderer (training, inference) and the generated Jinja template (saved with the tokenizer so
transformers, vLLM and llama.cpp render exactly what we trained on).
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class ChatTemplate:
    """Literal pieces of one chat format. `{content}` marks where message text goes.

    The assistant turn is `assistant_header + reply + assistant_end + assistant_sep`; the reply and `assistant_end`
    (the end-of-turn marker the model must learn to emit) are trained, the header and separator are not.
    """

    name: str
    system: str  # a whole system block, e.g. "<|im_start|>system\n{content}<|im_end|>\n"
    user: str
    assistant_header: str  # also the generation prompt
    assistant_end: str  # end-of-turn marker; generation stops here
    tool: str  # an observation (tool result) block
    special_tokens: tuple[str, ...]  # markers that must be single special tokens in the tokenizer
    bos: str = ""  # emitted once at the very start
    assistant_sep: str = ""  # untrained text after the end-of-turn marker
    default_system: str | None = None  # used when a conversation has no system message
    # Formats without a system block (Llama-2) fold the system prompt into the first user message with this piece.
    system_in_first_user: str | None = None

    def with_default_system(self, text: str | None) -> ChatTemplate:
        from dataclasses import replace

        return replace(self, default_system=text)

    @property
    def stop_strings(self) -> list[str]:
        return [self.assistant_end.strip()]


CHATML = ChatTemplate(
    name="chatml",
    system="<|im_start|>system\n{content}<|im_end|>\n",
    user="<|im_start|>user\n{content}<|im_end|>\n",
    assistant_header="<|im_start|>assistant\n",
    assistant_end="<|im_end|>",
    assistant_sep="\n",
    tool="<|im_start|>user\n<tool_response>\n{content}\n</tool_response><|im_end|>\n",
    special_tokens=("<|im_start|>", "<|im_end|>"),
)

TEMPLATES: dict[str, ChatTemplate] = {
    "chatml": CHATML,
    # SmolLM2-Instruct's own format: ChatML with its default system prompt.
    "smollm2": ChatTemplate(
        **{
            **CHATML.__dict__,
            "name": "smollm2",
            "default_system": "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
        }
    ),
    "llama2": ChatTemplate(
        name="llama2",
        system="",  # folded into the first user turn
        system_in_first_user="<<SYS>>\n{content}\n<</SYS>>\n\n",
        user="<s>[INST] {content} [/INST]",
        assistant_header=" ",
        assistant_end=" </s>",
        tool="<s>[INST] <tool_response>\n{content}\n</tool_response> [/INST]",
        special_tokens=("<s>", "</s>"),
    ),
    "llama3": ChatTemplate(
        name="llama3",
        bos="<|begin_of_text|>",
        system="<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
        user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
        assistant_header="<|start_header_id|>assistant<|end_header_id|>\n\n",
        assistant_end="<|eot_id|>",
        tool="<|start_header_id|>ipython<|end_header_id|>\n\n{content}<|eot_id|>",
        special_tokens=("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    ),
    # The `<s>Human: ...\n</s><s>Assistant: ...</s>` format (Llama2-Chinese and friends).
    "human_assistant": ChatTemplate(
        name="human_assistant",
        system="<s>System: {content}\n</s>",
        user="<s>Human: {content}\n</s>",
        assistant_header="<s>Assistant: ",
        assistant_end="</s>",
        tool="<s>Observation: {content}\n</s>",
        special_tokens=("<s>", "</s>"),
    ),
}


def get_template(name: str | ChatTemplate) -> ChatTemplate:
    """Look a template up by name (or pass one through)."""
    if isinstance(name, ChatTemplate):
        return name
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ChatforgeError(f"unknown chat template {name!r}; choose one of: {', '.join(TEMPLATES)}") from None
