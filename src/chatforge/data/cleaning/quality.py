"""Quality filters on the reply a record trains: length bounds, repetition, symbol/garbage share, reply language and
"as an AI" refusal boilerplate.

Each rule returns `(reason, score)` or None; the reason is a fixed rule name (so the report counts per rule) and the
score (the measured ratio or length) goes into `removed.jsonl` beside it. Rules look at the reply (last assistant turn,
chosen reply, or the text of a pretraining document) because that is what the model learns to say; a long prompt
with a short correct answer is fine. The refusal phrases ship as package data (`lists/refusal_<lang>.txt`) and a
user file can be added with `quality.refusal_file`.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

from chatforge.errors import ChatforgeError

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
# A unit of the repetition check: a CJK character (Chinese has no spaces) or a run of other word characters.
_UNIT = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\W\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_LIST_LANGS = ("en", "zh")


@dataclass
class QualityConfig:
    enabled: bool = False
    min_reply_chars: int = field(default=1, metadata={"min": 0})
    max_reply_chars: int | None = field(default=None, metadata={"min": 1})
    # Repetition: share of the reply's n-grams (words, or CJK characters) that repeat an earlier n-gram of it.
    repeat_ngram: int = field(default=3, metadata={"min": 1, "max": 10})
    max_repeat_ratio: float = field(default=0.5, metadata={"min": 0.0, "max": 1.0})
    repeat_min_units: int = field(default=20, metadata={"min": 1})  # shorter replies are not judged
    # Garbage: share of non-space characters that are neither letters, digits nor common punctuation (code passes
    # at the default; mojibake, base64 blobs and emoji walls do not), and U+FFFD replacement characters.
    max_symbol_ratio: float = field(default=0.4, metadata={"min": 0.0, "max": 1.0})
    symbol_min_chars: int = field(default=20, metadata={"min": 1})
    max_replacement_chars: int = field(default=0, metadata={"min": 0})
    # Reply language: 'zh' needs at least zh_min_cjk_share CJK among CJK + Latin letters; 'en' at most en_max_cjk_share.
    reply_language: str | None = None
    zh_min_cjk_share: float = field(default=0.3, metadata={"min": 0.0, "max": 1.0})
    en_max_cjk_share: float = field(default=0.1, metadata={"min": 0.0, "max": 1.0})
    # Refusal / "as an AI" boilerplate: the shipped lists for these languages, plus an optional user file.
    refusal_lists: list[str] = field(default_factory=lambda: ["en", "zh"])
    refusal_file: str | None = None

    def check_config(self) -> list[tuple[str, str]]:
        problems = []
        if self.reply_language not in (None, "zh", "en"):
            problems.append(("reply_language", f"use zh, en or null, not {self.reply_language!r}"))
        bad = set(self.refusal_lists) - set(_LIST_LANGS)
        if bad:
            problems.append(("refusal_lists", f"no shipped list for {sorted(bad)}; shipped: {', '.join(_LIST_LANGS)}"))
        if self.max_reply_chars is not None and self.max_reply_chars < self.min_reply_chars:
            problems.append(("max_reply_chars", "must be >= min_reply_chars"))
        return problems


def _parse_list(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip().lower()
        if line:
            out.append(line)
    return out


@lru_cache(maxsize=8)
def shipped_list(name: str) -> tuple[str, ...]:
    """The phrases of a packaged list, lists/<name>.txt."""
    path = resources.files("chatforge.data.cleaning").joinpath("lists", f"{name}.txt")
    return tuple(_parse_list(path.read_text(encoding="utf-8")))


def refusal_pattern(cfg: QualityConfig) -> re.Pattern | None:
    phrases: list[str] = []
    for lang in cfg.refusal_lists:
        phrases.extend(shipped_list(f"refusal_{lang}"))
    if cfg.refusal_file:
        path = Path(cfg.refusal_file)
        if not path.is_file():
            raise ChatforgeError(f"quality.refusal_file not found: {path}")
        phrases.extend(_parse_list(path.read_text(encoding="utf-8")))
    if not phrases:
        return None
    # Longest first, so the removed record names the most specific phrase.
    return re.compile("|".join(re.escape(p) for p in sorted(set(phrases), key=len, reverse=True)))


def repeat_ratio(text: str, n: int = 3) -> tuple[float, int]:
    """(share of n-grams that occurred earlier in the text, number of units). Units: words, or CJK characters."""
    units = _UNIT.findall(text.lower())
    grams = [tuple(units[i : i + n]) for i in range(len(units) - n + 1)]
    if not grams:
        return 0.0, len(units)
    return 1 - len(set(grams)) / len(grams), len(units)


def symbol_ratio(text: str) -> tuple[float, int]:
    """(share of non-space characters that are symbols rather than letters, digits or punctuation, non-space count).
    Unicode categories decide: L* and N* are content, P* is punctuation; S* (symbols, emoji), C* (control,
    private-use) and the rest count as garbage."""
    total = bad = 0
    for ch in text:
        if ch.isspace():
            continue
        total += 1
        cat = unicodedata.category(ch)[0]
        if cat not in "LNP":
            bad += 1
    return (bad / total if total else 0.0), total


def cjk_share(text: str) -> float:
    """CJK characters / (CJK characters + Latin letters); 0 when the text has neither."""
    cjk = len(_CJK.findall(text))
    latin = sum(1 for ch in text if ch.isascii() and ch.isalpha())
    return cjk / (cjk + latin) if cjk + latin else 0.0


def quality_reason(reply: str, cfg: QualityConfig, refusal: re.Pattern | None) -> tuple[str, float | str] | None:
    """The first rule the reply fails, as (rule, score), or None when it passes them all."""
    n = len(reply)
    if n < cfg.min_reply_chars:
        return "reply too short", n
    if cfg.max_reply_chars is not None and n > cfg.max_reply_chars:
        return "reply too long", n
    bad = reply.count("\ufffd")
    if bad > cfg.max_replacement_chars:
        return "replacement characters (U+FFFD)", bad
    ratio, units = repeat_ratio(reply, cfg.repeat_ngram)
    if units >= cfg.repeat_min_units and ratio > cfg.max_repeat_ratio:
        return f"repetition ({cfg.repeat_ngram}-gram repeat ratio > {cfg.max_repeat_ratio})", round(ratio, 3)
    ratio, chars = symbol_ratio(reply)
    if chars >= cfg.symbol_min_chars and ratio > cfg.max_symbol_ratio:
        return f"symbols (ratio > {cfg.max_symbol_ratio})", round(ratio, 3)
    if cfg.reply_language == "zh":
        share = cjk_share(reply)
        if share < cfg.zh_min_cjk_share and _letters(reply):
            return f"reply not Chinese (CJK share < {cfg.zh_min_cjk_share})", round(share, 3)
    elif cfg.reply_language == "en":
        share = cjk_share(reply)
        if share > cfg.en_max_cjk_share:
            return f"reply not English (CJK share > {cfg.en_max_cjk_share})", round(share, 3)
    if refusal is not None:
        m = refusal.search(reply.lower())
        if m:
            return "refusal boilerplate", m.group(0)
    return None


def _letters(text: str) -> bool:
    return any(ch.isalpha() for ch in text)
