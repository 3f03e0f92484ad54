"""Text normalisation: control characters, HTML tags and entities, URLs, full/half width, whitespace.

Chinese text keeps its own punctuation by default (，。？！ are the correct forms there); only full-width letters,
digits and the ideographic space become half width unless `punctuation_to_half` is set. Code indentation survives:
runs of spaces are collapsed only between non-space characters.
"""

from __future__ import annotations

import html
import re
from collections import Counter
from dataclasses import dataclass
from typing import Literal

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060\ufeff]")
# Known HTML element names only, so "<tool_call>", "a < b > c" or template markers are left alone.
_TAGS = (
    "a|abbr|b|blockquote|body|br|center|code|div|em|font|h[1-6]|head|hr|html|i|img|li|ol|p|pre|script|small|span|"
    "strong|style|sub|sup|table|tbody|td|th|thead|title|tr|u|ul|iframe|meta|link|input|form|button|label|section|"
    "article|header|footer|nav|main|figure|figcaption|video|audio|source|s|del|ins|mark|cite|q|dl|dt|dd"
)
_HTML_TAG = re.compile(rf"</?(?:{_TAGS})(?:\s[^<>]*)?/?>", re.I)
_HTML_BLOCK = re.compile(r"<(script|style)\b[^<>]*>.*?</\1\s*>", re.I | re.S)
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.S)
_ENTITY = re.compile(r"&(#\d+|#x[0-9a-fA-F]+|[a-zA-Z]{2,8});")
_URL = re.compile(r"(?:https?://|ftp://|www\.)[^\s<>\"'，。；！？、）】》」]+", re.I)
_INNER_SPACES = re.compile(r"(?<=\S)[ \t]{2,}(?=\S)")
_TRAILING = re.compile(r"[ \t]+$", re.M)
_BLANK_LINES = re.compile(r"\n{3,}")
_UNICODE_SPACES = re.compile(r"[\u00a0\u2000-\u200a\u202f\u205f]")

_FULL_ALNUM = {
    **{0xFF10 + i: 0x30 + i for i in range(10)},
    **{0xFF21 + i: 0x41 + i for i in range(26)},
    **{0xFF41 + i: 0x61 + i for i in range(26)},
    0x3000: 0x20,
}
_FULL_ALL = {**{c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)}, 0x3000: 0x20}


@dataclass
class NormalizeConfig:
    enabled: bool = True
    control_chars: bool = True
    html: bool = True
    urls: Literal["remove", "mask", "keep"] = "remove"
    url_placeholder: str = "<URL>"
    width: Literal["half", "keep"] = "half"
    punctuation_to_half: bool = False
    whitespace: bool = True


def _strip_html(text: str) -> str:
    text = _HTML_TAG.sub("", _HTML_COMMENT.sub("", _HTML_BLOCK.sub("", text)))
    return _ENTITY.sub(lambda m: html.unescape(m.group(0)), text) if "&" in text else text


def _outside_code(text: str, fn) -> str:
    """Apply `fn` only outside ``` fenced code blocks: HTML or URLs inside code are the content, not noise."""
    if "```" not in text:
        return fn(text)
    parts = text.split("```")
    return "```".join(fn(p) if k % 2 == 0 else p for k, p in enumerate(parts))


def normalize_text(text: str, cfg: NormalizeConfig, counts: Counter | None = None) -> str:
    """Apply the enabled normalisations; `counts` (if given) counts which rule changed something."""
    counts = counts if counts is not None else Counter()
    orig = text
    if cfg.control_chars:
        new = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
        counts["control_chars"] += new != text
        text = new
    if cfg.html and ("<" in text or "&" in text):
        new = _outside_code(text, _strip_html)
        counts["html"] += new != text
        text = new
    if cfg.urls != "keep" and ("://" in text or "www." in text.lower()):
        placeholder = "" if cfg.urls == "remove" else cfg.url_placeholder
        new = _outside_code(text, lambda t: _URL.sub(placeholder, t))
        counts["urls"] += new != text
        text = new
    if cfg.width == "half":
        new = text.translate(_FULL_ALL if cfg.punctuation_to_half else _FULL_ALNUM)
        counts["width"] += new != text
        text = new
    if cfg.whitespace:
        new = _UNICODE_SPACES.sub(" ", text)
        new = _INNER_SPACES.sub(" ", new)
        new = _TRAILING.sub("", new)
        new = _BLANK_LINES.sub("\n\n", new).strip()
        counts["whitespace"] += new != text
        text = new
    counts["texts_changed"] += text != orig
    return text
