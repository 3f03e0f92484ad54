"""The in-memory records every reader produces and every consumer (templates, training, evaluation) takes.

One conversation model for all chat formats: alpaca, sharegpt and OpenAI `messages` all become a `Conversation`.
Roles are `system`, `user`, `assistant` and `tool`; an assistant message may carry tool calls instead of (or besides)
text; a `tool` message is the observation (result) of a call.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any]

    def to_openai(self, index: int = 0) -> dict:
        return {
            "id": f"call_{index}",
            "type": "function",
            "function": {"name": self.name, "arguments": json.dumps(self.arguments, ensure_ascii=False)},
        }


@dataclass
class Message:
    role: str
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    # Per-message switch used by masks: None = decided by the mask mode; False = never train this message.
    train: bool | None = None

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [c.to_openai(i) for i, c in enumerate(self.tool_calls)]
        if self.train is not None:
            out["train"] = self.train
        return out


@dataclass
class Conversation:
    """An ordered chat. `tools` holds OpenAI-style function specs ({"name", "description", "parameters"})."""

    messages: list[Message]
    tools: list[dict] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # source file, line, dataset name, labels for balancing...

    @property
    def system(self) -> str | None:
        return self.messages[0].content if self.messages and self.messages[0].role == "system" else None

    def to_dict(self) -> dict:
        """OpenAI `messages` JSON (the format chatforge writes), with `tools` when present."""
        out: dict[str, Any] = {"messages": [m.to_dict() for m in self.messages]}
        if self.tools:
            out["tools"] = [{"type": "function", "function": t} for t in self.tools]
        if self.meta:
            out["meta"] = self.meta
        return out


@dataclass
class PreferencePair:
    """A prompt conversation (ending with a user turn) and two candidate assistant replies."""

    prompt: Conversation
    chosen: Message
    rejected: Message
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class TextDoc:
    """Raw text for pretraining."""

    text: str
    meta: dict[str, Any] = field(default_factory=dict)
