"""Chat templates: render conversations to token ids with a per-token trained mask; one source of truth each.

from chatforge.templates import get_template, encode_conversation, encode_prompt
enc = encode_conversation(conv, tokenizer, "chatml")        # enc.input_ids, enc.trained, enc.labels()
"""

from chatforge.templates.encode import (
    IGNORE_INDEX,
    Encoded,
    encode_conversation,
    encode_prompt,
    encode_text,
    prepare_tokenizer,
    stop_token_ids,
)
from chatforge.templates.formats import TEMPLATES, ChatTemplate, get_template
from chatforge.templates.render import MASK_MODES, parse_reply, render_segments, render_text, to_hf_messages, to_jinja

__all__ = [
    "IGNORE_INDEX",
    "MASK_MODES",
    "TEMPLATES",
    "ChatTemplate",
    "Encoded",
    "encode_conversation",
    "encode_prompt",
    "encode_text",
    "get_template",
    "parse_reply",
    "prepare_tokenizer",
    "render_segments",
    "render_text",
    "stop_token_ids",
    "to_hf_messages",
    "to_jinja",
]
