"""Record filters: length (characters or tokens), language (zh/en by script counts), blocklist of words/patterns.

Each filter returns the reason a record is removed, or None to keep it; the pipeline counts reasons for the report.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from chatforge.errors import ChatforgeError

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")


@dataclass
class LengthConfig:
    unit: Literal["chars", "tokens"] = "chars"
    min: int = field(default=1, metadata={"min": 0})
    max: int | None = field(default=None, metadata={"min": 0})
    tokenizer: str | None = None  # a model spec for chatforge.models.loading.load_tokenizer, needed for unit=tokens


@dataclass
class LanguageConfig:
    keep: list[str] = field(default_factory=list)  # e.g. [zh] or [en]; empty = no language filter
    zh_min_ratio: float = field(default=0.2, metadata={"min": 0.0, "max": 1.0})


@dataclass
class BlocklistConfig:
    words: list[str] = field(default_factory=list)
    file: str | None = None  # one word or pattern per line; '#' starts a comment
    regex: bool = False  # treat entries as regular expressions instead of literal words


def detect_language(text: str, zh_min_ratio: float = 0.2) -> str:
    """'zh', 'en' or 'other'. A Chinese character carries about one word; Latin letters about a fifth of one, so the
    ratio compares CJK characters with Latin letters / 5 (Chinese answers full of code or English names stay zh)."""
    cjk = len(_CJK.findall(text))
    latin = len(_LATIN.findall(text))
    if cjk == 0 and latin == 0:
        return "other"
    return "zh" if cjk / (cjk + latin / 5) >= zh_min_ratio else "en"


def length_reason(n: int, cfg: LengthConfig) -> str | None:
    if n < cfg.min:
        return f"too short (< {cfg.min} {cfg.unit})"
    if cfg.max is not None and n > cfg.max:
        return f"too long (> {cfg.max} {cfg.unit})"
    return None


def compile_blocklist(cfg: BlocklistConfig) -> re.Pattern | None:
    entries = list(cfg.words)
    if cfg.file:
        path = Path(cfg.file)
        if not path.is_file():
            raise ChatforgeError(f"blocklist.file not found: {path}")
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip() if not cfg.regex else line.strip()
            if line and not line.startswith("#"):
                entries.append(line)
    if not entries:
        return None
    parts = []
    for i, e in enumerate(entries):
        if cfg.regex:
            try:
                re.compile(e)
            except re.error as err:
                raise ChatforgeError(f"blocklist entry {i + 1} {e!r} is not a valid regular expression: {err}") from err
            parts.append(f"(?:{e})")
        else:
            parts.append(re.escape(e))
    # Longest first so the report names the most specific entry that matched.
    return re.compile("|".join(sorted(parts, key=len, reverse=True)), re.I)


def blocklist_reason(text: str, pattern: re.Pattern | None) -> str | None:
    if pattern is None:
        return None
    m = pattern.search(text)
    return f"blocklist: {m.group(0).lower()}" if m else None
