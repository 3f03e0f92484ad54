"""Prompts for `train.stage: grpo`: read from JSON / JSONL files, rendered with the chat template plus the assistant
header (add_generation_prompt), and every other field of a record kept as a column for the reward functions.

A record gives its prompt as one of (first match wins):
- `messages` (OpenAI) or `conversations` (ShareGPT): the conversation; a final assistant turn is dropped (its text
  becomes the `reference` column unless the record has one)
- `instruction` (+ `input`, `system`): alpaca
- `prompt`: a string (one user message) or a message list
- `question`: a string (GSM8K-style `{question, answer}`)
The remaining keys (e.g. `answer`), and those of a `meta` object, are the record's columns. A malformed record stops the run with its file, line
and field (or is skipped and counted with `data.on_error=skip`).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from chatforge.data.formats import OPENAI_TAGS, _tags_for, parse_messages
from chatforge.data.readers import iter_raw
from chatforge.data.schema import Conversation, Message
from chatforge.errors import ChatforgeError, DataError
from chatforge.training.dataset import TrainData, split_records

PROMPT_KEYS = ("messages", "conversations", "instruction", "prompt", "question")


@dataclass
class Prompt:
    conv: Conversation  # the conversation up to the user's last turn
    text: str  # the last user message: what reward functions see as the prompt
    columns: dict = field(default_factory=dict)
    ids: list[int] = field(default_factory=list)  # the rendered prompt with the assistant header


@dataclass
class PromptData(TrainData):
    """TrainData whose examples are `Prompt`s."""

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for p in self.train:
            h.update(np.asarray(p.ids, dtype=np.int64).tobytes())
            h.update(repr(sorted(p.columns.items())).encode())
        return h.hexdigest()[:16]


def _user_text(value, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{key} must be a non-empty string, got {type(value).__name__}", field=key, reason="wrong_type")
    return value


def prompt_from_record(rec) -> Prompt:
    """One record -> Prompt (DataError with the field on bad input)."""
    if not isinstance(rec, dict):
        raise DataError(f"a record must be a JSON object, got {type(rec).__name__}", reason="wrong_type")
    key = next((k for k in PROMPT_KEYS if k in rec), None)
    if key is None:
        raise DataError(
            f"no prompt in the record (keys {sorted(rec)}); give one of {', '.join(PROMPT_KEYS)}", reason="no_prompt"
        )
    columns = {k: v for k, v in rec.items() if k not in (key, "system", "tools", "input", "meta")}
    if isinstance(rec.get("meta"), dict):  # chatforge's own JSONL keeps labels (answer, kind...) under meta
        columns.update({k: v for k, v in rec["meta"].items() if k not in columns})
    messages: list[Message] = []
    system = rec.get("system")
    if isinstance(system, str) and system:
        messages.append(Message("system", system))
    if key in ("messages", "conversations") or (key == "prompt" and isinstance(rec[key], list)):
        raw = rec[key]
        msgs = parse_messages(raw, key, _tags_for(raw, OPENAI_TAGS))
        if msgs and msgs[0].role == "system":
            messages = []
        messages += msgs
        if messages and messages[-1].role == "assistant":
            columns.setdefault("reference", messages[-1].content)
            messages = messages[:-1]
    elif key == "instruction":
        parts = [_user_text(rec["instruction"], "instruction")]
        if isinstance(rec.get("input"), str) and rec["input"]:
            parts.append(rec["input"])
        messages.append(Message("user", "\n".join(parts)))
    else:
        messages.append(Message("user", _user_text(rec[key], key)))
    if not messages or messages[-1].role != "user":
        raise DataError(
            "the prompt must end with a user message (after dropping a final assistant turn)",
            field=key,
            reason="turn_order",
        )
    return Prompt(Conversation(messages), messages[-1].content or "", columns)


def read_prompt_files(paths: list[str], on_error: str, max_samples: int | None, stats: Counter) -> list[Prompt]:
    out: list[Prompt] = []
    for path_text in paths:
        path = Path(path_text)
        if not path.is_file():
            raise ChatforgeError(f"data: {path_text}: no such file (stage grpo reads JSON / JSONL prompt files)")
        n = 0
        for loc, rec in iter_raw(path):
            if max_samples is not None and n >= max_samples:
                break
            try:
                if isinstance(rec, DataError):
                    raise rec
                p = prompt_from_record(rec)
            except DataError as err:
                located = err.located(str(path), loc)
                if on_error == "raise":
                    raise located from None
                stats[f"skipped {err.reason} ({path})"] += 1
                continue
            p.conv.meta.update({"source": str(path), **loc})
            out.append(p)
            n += 1
    return out


def read_prompts(cfg) -> tuple[list[Prompt], list[Prompt], Counter]:
    """(train prompts, validation prompts, notes) from `data.train|val|val_size|max_samples|on_error`."""
    dcfg = cfg.data
    if not dcfg.train:
        raise ChatforgeError("data.train: no prompt files given")
    stats: Counter = Counter()
    train = read_prompt_files(list(dcfg.train), dcfg.on_error, dcfg.max_samples, stats)
    if dcfg.val:
        val = read_prompt_files(list(dcfg.val), dcfg.on_error, dcfg.max_samples, stats)
    else:
        train, val = split_records(train, dcfg.val_size, dcfg.seed)
    if not train:
        raise ChatforgeError(f"data.train: the files hold no prompts ({dict(stats) or 'they are empty'})")
    return train, val, stats


def encode_prompts(prompts: list[Prompt], tokenizer, template, *, max_length: int, stats: Counter) -> list[Prompt]:
    """Render each prompt with the template and the assistant header; prompts over `max_length` tokens are dropped
    (counted), since cutting a question changes what a reward judges."""
    from chatforge.templates import encode_prompt

    out = []
    for p in prompts:
        p.ids = list(encode_prompt(p.conv, tokenizer, template))
        if len(p.ids) > max_length:
            stats["prompts dropped: longer than data.max_length"] += 1
            continue
        out.append(p)
    return out
