"""PII masking: mainland ID numbers (GB 11643 checksum), mobile numbers, e-mail addresses, bank cards (Luhn).

Numbers are masked only when they are valid: an 18-digit string whose check digit is wrong is not an ID number, and a
card-length digit run that fails the Luhn check is not a card (order numbers, timestamps and IDs of other kinds stay).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_ID = re.compile(
    r"(?<![0-9A-Za-z])[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx](?![0-9A-Za-z])"
)
# Digit runs glued to ASCII letters or digits are codes of another kind (order numbers, hashes): not PII.
_CARD = re.compile(r"(?<![0-9A-Za-z-])(?:\d{4}[ -]?){3}\d{4}(?:\d{0,3})(?![0-9A-Za-z-])")
_MOBILE = re.compile(r"(?<![0-9A-Za-z+])(?:(?:\+|00)?86[ -]?)?1[3-9]\d(?:[ -]?\d{4}){2}(?![0-9A-Za-z])")

KINDS = ("email", "id_card", "bank_card", "mobile")


def id_checksum_ok(number: str) -> bool:
    """GB 11643-1999 check digit of an 18-character mainland ID number."""
    if len(number) != 18 or not number[:17].isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(number[:17], _ID_WEIGHTS))
    return _ID_CHECK[total % 11] == number[17].upper()


def luhn_ok(number: str) -> bool:
    """The Luhn (mod 10) check used by bank card numbers; separators are ignored."""
    digits = [int(c) for c in number if c.isdigit()]
    if len(digits) < 12:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


@dataclass
class PIIConfig:
    enabled: bool = True
    kinds: list[str] = field(default_factory=lambda: list(KINDS))
    placeholder: str = "[{kind}]"  # e.g. "[mobile]"; {kind} is one of email, id_card, bank_card, mobile


def mask_pii(text: str, cfg: PIIConfig, counts: Counter | None = None) -> str:
    """Replace valid PII in `text` by placeholders; `counts[kind]` counts the replacements."""
    counts = counts if counts is not None else Counter()
    kinds = set(cfg.kinds)

    def sub(pattern: re.Pattern, kind: str, valid, text: str) -> str:
        def repl(m: re.Match) -> str:
            if valid is not None and not valid(m.group(0)):
                return m.group(0)
            counts[kind] += 1
            return cfg.placeholder.format(kind=kind)

        return pattern.sub(repl, text)

    if "email" in kinds and "@" in text:
        text = sub(_EMAIL, "email", None, text)
    if not any(c.isdigit() for c in text):
        return text
    # IDs before cards: a valid 18-digit ID can also pass Luhn by chance, and the ID check is the stricter one.
    if "id_card" in kinds:
        text = sub(_ID, "id_card", id_checksum_ok, text)
    if "bank_card" in kinds:
        text = sub(_CARD, "bank_card", luhn_ok, text)
    if "mobile" in kinds:
        text = sub(_MOBILE, "mobile", None, text)
    return text
