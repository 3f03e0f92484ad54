"""Constrained decoding with llguidance: JSON output (`response_format`) and forced tool calls (`tool_choice`).

A grammar is llguidance's Lark dialect; `%json {schema}` embeds a JSON schema. `ConstraintFactory` wraps the
engine's tokenizer once (llguidance needs the whole vocabulary as byte strings); each sequence then gets its own
`Constraint` (an `LLMatcher`), so rows of one batch can follow different grammars or none. At every step the matcher
gives the set of allowed next tokens; everything else is masked to -inf before sampling, and the sampled token is fed
back. The end-of-sequence tokens are allowed only where the grammar is complete, so a constrained reply always ends
in a complete, valid JSON value or tool call.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import numpy as np
import torch

from chatforge.errors import ChatforgeError, NotSupportedError
from chatforge.templates.formats import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

# Compact JSON with the separators our template writes: no run of whitespace can go on forever under a random or
# weak model, and the text is the same as the one training data contains.
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _with_style(schema: dict) -> dict:
    return {**schema, "x-guidance": {**JSON_STYLE, **schema.get("x-guidance", {})}}


def json_grammar(schema: dict | None = None) -> str:
    """Lark grammar for one JSON value matching `schema` (any JSON object when None)."""
    schema = schema if schema is not None else {"type": "object"}
    return f"start: %json {json.dumps(_with_style(schema), ensure_ascii=False)}\n"


def tool_call_grammar(tools: list[dict], parallel: bool = True) -> str:
    """Lark grammar for one (or, with `parallel`, several) `<tool_call>{"name": ..., "arguments": ...}</tool_call>`
    blocks as the template writes them, each naming one of `tools` with arguments valid under its parameters."""
    if not tools:
        raise ChatforgeError("a forced tool call needs at least one tool")
    alternatives = []
    for i, tool in enumerate(tools):
        params = tool.get("parameters") or {"type": "object", "properties": {}}
        schema = {
            "type": "object",
            "properties": {"name": {"const": tool["name"]}, "arguments": params},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        alternatives.append(f"call_{i}: %json {json.dumps(_with_style(schema), ensure_ascii=False)}")
    body = " | ".join(f"call_{i}" for i in range(len(tools)))
    more = ' ("\\n" call)*' if parallel else ""  # several calls are joined by one newline, as the template does
    rules = [
        f"start: call{more}",
        f"call: {json.dumps(TOOL_CALL_OPEN)} payload {json.dumps(TOOL_CALL_CLOSE)}",
        f"payload: {body}",
        *alternatives,
    ]
    return "\n".join(rules) + "\n"


class Constraint:
    """One sequence's grammar state: masks logits, follows the sampled tokens."""

    def __init__(self, matcher: Any, n_vocab: int):
        self.matcher, self.n_vocab = matcher, n_vocab

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` with every token the grammar does not allow next set to -inf."""
        bits = np.unpackbits(np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
        allowed = torch.zeros(logits.numel(), dtype=torch.bool)
        n = min(self.n_vocab, logits.numel(), bits.size)
        allowed[:n] = torch.from_numpy(bits[:n].astype(bool))
        return logits.masked_fill(~allowed.to(logits.device), float("-inf"))

    def advance(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            reason = self.matcher.get_error().strip().splitlines()[0]
            raise ChatforgeError(f"the grammar rejected token {token}: {reason}")


class ConstraintFactory:
    """Builds `Constraint`s for one tokenizer. Raises NotSupportedError when llguidance cannot be used."""

    def __init__(self, tokenizer, stop_ids: list[int], vocab_size: int):
        try:
            import llguidance
            import llguidance.hf
        except ImportError as err:
            raise NotSupportedError(
                "constrained decoding needs the llguidance package (pip install llguidance)"
            ) from err
        self._llg = llguidance
        try:
            self.lltok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=len(tokenizer), eos_token=stop_ids or None)
        except (ValueError, TypeError) as err:
            raise NotSupportedError(f"constrained decoding needs a fast (Rust) tokenizer: {err}") from err
        self.vocab_size = vocab_size
        self._lock = threading.Lock()

    def constraint(self, grammar: str) -> Constraint:
        """A fresh matcher for `grammar`; ChatforgeError (with llguidance's reason) if the grammar is not usable."""
        with self._lock:
            matcher = self._llg.LLMatcher(self.lltok, grammar, log_level=0)
        if matcher.is_error():
            reason = matcher.get_error().strip().splitlines()[0]  # the rest repeats the grammar text
            raise ChatforgeError(f"cannot use this schema/grammar: {reason}")
        return Constraint(matcher, self.lltok.vocab_size)

    def token_bytes(self, token: int) -> bytes:
        """The exact bytes of one token (for logprobs' `bytes`)."""
        return bytes(self.lltok.decode_bytes([token]))
