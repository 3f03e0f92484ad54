"""What every converter shares: writing JSONL of `Conversation.to_dict()`, the JSON report, and argument helpers."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from chatforge.data.schema import Conversation
from chatforge.errors import ChatforgeError, DataError
from chatforge.io import atomic_open, atomic_write_json, check_not_inside


def write_jsonl(path: Path, convs: Iterable[Conversation]) -> int:
    """Write conversations as OpenAI-messages JSONL (the format chatforge reads back); returns the count.

    Atomic (`chatforge.io.atomic_open`): a killed run leaves the previous file or none, never a prefix.
    """
    n = 0
    with atomic_open(path) as f:
        for conv in convs:
            f.write(json.dumps(conv.to_dict(), ensure_ascii=False) + "\n")
            n += 1
    return n


def write_report(out_dir: Path, report: dict[str, Any]) -> Path:
    """Write report.json atomically; converters write it last, so its presence means the outputs are complete."""
    return atomic_write_json(out_dir / "report.json", report)


def check_output(output: str | Path, *inputs: str | Path) -> Path:
    """The output folder, refused when it is a file, is an input, or holds or sits inside an input folder."""
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise ChatforgeError(f"--output {out} is a file, not a folder")
    check_not_inside(out, [p for p in inputs if p is not None], what="--output")
    return out


def read_json(path: str | Path) -> Any:
    """Load a JSON file, reporting a missing file or a syntax error with its location."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ChatforgeError(f"input file not found: {path}") from err
    except UnicodeDecodeError as err:
        raise DataError(f"not UTF-8 text ({err.reason} at byte {err.start})", file=str(path)) from None
    except OSError as err:
        raise ChatforgeError(f"{path}: cannot read: {err.strerror or err}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"not valid JSON: {err.msg}", file=str(path), line=err.lineno) from None
    except (RecursionError, ValueError) as err:
        what = "nested too deeply" if isinstance(err, RecursionError) else str(err).split(":")[0]
        raise DataError(f"cannot parse JSON: {what}", file=str(path)) from None


def parse_ratio(text: str) -> tuple[float, float]:
    """'1:1' or '2:1' -> (answerable, unanswerable) weights."""
    try:
        a, b = (float(x) for x in text.split(":"))
    except ValueError as err:
        raise ChatforgeError(f"--ratio must look like 1:1 (answerable:unanswerable), got {text!r}") from err
    if a < 0 or b < 0 or a + b == 0:
        raise ChatforgeError(f"--ratio needs non-negative parts that are not both zero, got {text!r}")
    return a, b
