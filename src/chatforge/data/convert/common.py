"""What every converter shares: writing JSONL of `Conversation.to_dict()`, the JSON report, and argument helpers."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from chatforge.data.schema import Conversation
from chatforge.errors import ChatforgeError, DataError


def write_jsonl(path: Path, convs: Iterable[Conversation]) -> int:
    """Write conversations as OpenAI-messages JSONL (the format chatforge reads back); returns the count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for conv in convs:
            f.write(json.dumps(conv.to_dict(), ensure_ascii=False) + "\n")
            n += 1
    return n


def write_report(out_dir: Path, report: dict[str, Any]) -> Path:
    path = out_dir / "report.json"
    path.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return path


def read_json(path: str | Path) -> Any:
    """Load a JSON file, reporting a missing file or a syntax error with its location."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ChatforgeError(f"input file not found: {path}") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"not valid JSON: {err.msg}", file=str(path), line=err.lineno) from err


def parse_ratio(text: str) -> tuple[float, float]:
    """'1:1' or '2:1' -> (answerable, unanswerable) weights."""
    try:
        a, b = (float(x) for x in text.split(":"))
    except ValueError as err:
        raise ChatforgeError(f"--ratio must look like 1:1 (answerable:unanswerable), got {text!r}") from err
    if a < 0 or b < 0 or a + b == 0:
        raise ChatforgeError(f"--ratio needs non-negative parts that are not both zero, got {text!r}")
    return a, b
