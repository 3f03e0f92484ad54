"""Read user data files into chatforge records: `read_records(path) -> ReadResult(records, skipped)`.

Containers: `.json` (an array of records; a `.json` file holding JSON Lines is read as JSON Lines, as LLaMA-Factory
and `datasets` do), `.jsonl`, `.txt`, and `.gz` of any of them. Formats are converted by `chatforge.data.formats`
(alpaca, sharegpt, openai, preference, text); `format="auto"` picks one from the first record's keys.

Raw text (`.txt`): one document per blank-line-separated paragraph (lines holding only whitespace count as blank),
because a paragraph is the natural unit of prose and keeps documents short enough to pack; a file without blank lines
is one document. Through a LLaMA-Factory `dataset_info.json` entry, a `.txt` file is read one document per line
instead, exactly as LLaMA-Factory (the `datasets` text loader) reads it, so record counts match theirs.

Every bad record raises a `DataError` naming the file, the line (JSON Lines, text) or record index (JSON arrays) and
the field. With `on_error="skip"` bad records are skipped and counted per reason in `ReadResult.skipped`; callers
print `ReadResult.summary()`. Nothing is dropped silently.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatforge.data.formats import CONVERTERS, FORMATS, Layout, detect_layout
from chatforge.data.schema import Conversation, PreferencePair, TextDoc
from chatforge.errors import ChatforgeError, DataError

Record = Conversation | PreferencePair | TextDoc
EXTENSIONS = (".json", ".jsonl", ".txt")


@dataclass
class ReadResult:
    """The records read, and how many bad records were skipped per reason (only with on_error="skip")."""

    records: list[Record]
    skipped: Counter = field(default_factory=Counter)
    first_errors: dict[str, str] = field(default_factory=dict)  # reason -> the first full error message

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def summary(self) -> str:
        """One line for the user: how many were read and, per reason, how many were skipped (with an example)."""
        text = f"read {len(self.records)} records"
        if self.skipped:
            parts = [f"{reason}: {n}" for reason, n in self.skipped.most_common()]
            text += f"; skipped {sum(self.skipped.values())} bad records ({', '.join(parts)})"
            text += "".join(f"\n  first {reason}: {msg}" for reason, msg in self.first_errors.items())
        return text


def read_records(
    path: str | Path,
    *,
    format: str = "auto",
    columns: dict[str, str] | None = None,
    on_error: str = "raise",
    dataset_info: str | Path | None = None,
) -> ReadResult:
    """Read a data file, a folder (its .json/.jsonl/.txt[.gz] files in name order, each detected on its own), or,
    with `dataset_info`, a dataset registered by name in LLaMA-Factory's dataset_info.json.

    format: "auto" or one of alpaca, sharegpt, openai, preference, text. columns: LLaMA-Factory column keys (prompt,
    query, response, history, messages, system, tools, chosen, rejected, kto_tag) or role tags mapped to the record
    keys that hold them. on_error: "raise" (first bad record raises DataError) or "skip" (count it and go on).
    """
    if on_error not in ("raise", "skip"):
        raise ChatforgeError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    if format != "auto" and format not in FORMATS:
        raise ChatforgeError(f"unknown data format {format!r}; use 'auto' or one of {', '.join(FORMATS)}")
    result = ReadResult(records=[])
    if dataset_info is not None:
        from chatforge.data.llamafactory import load_dataset_info

        specs = load_dataset_info(dataset_info)
        name = str(path)
        if name in specs:
            spec = specs[name]
            layout = spec.layout(columns)
            for file in spec.files():
                _read_file(file, layout, on_error, result, txt_by="line", meta={"dataset": name})
            return result
        if not Path(path).exists():  # a plain path still works beside a registry; anything else is a typo
            raise ChatforgeError(
                f"dataset {name!r} is not registered in {dataset_info} and is no file; "
                f"registered: {', '.join(sorted(specs))}"
            )
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if _ext(p) in EXTENSIONS)
        if not files:
            raise ChatforgeError(f"{path}: no {'/'.join(EXTENSIONS)} (or .gz) files in this folder")
    elif path.is_file():
        files = [path]
    else:
        raise ChatforgeError(f"{path}: no such file")
    layout = None if format == "auto" else Layout.make(format, columns)
    for file in files:
        _read_file(file, layout, on_error, result, txt_by="paragraph", auto_columns=columns)
    return result


def _ext(path: Path) -> str:
    """The container extension, looking through `.gz`."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _open_text(path: Path) -> str:
    try:
        if path.suffix.lower() == ".gz":
            with gzip.open(path, "rt", encoding="utf-8-sig") as f:
                return f.read()
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e.reason} at byte {e.start})", file=str(path), reason="encoding") from None
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read: {e}", file=str(path), reason="unreadable") from None


def iter_raw(path: Path, *, txt_by: str = "paragraph") -> Iterator[tuple[dict[str, int], Any]]:
    """Yield (location, record) per record; location is {"line": n} (1-based) or {"record": i} (0-based).

    A malformed JSON line is yielded as a DataError in place of the record so the caller can raise or skip it.
    """
    ext = _ext(path)
    text = _open_text(path)
    if ext == ".txt":
        yield from _text_docs(text, by=txt_by)
        return
    if ext not in (".json", ".jsonl"):
        raise DataError(f"unsupported file type {ext!r}; use .json, .jsonl, .txt (optionally .gz)", file=str(path))
    stripped = text.lstrip()
    if ext == ".json" and stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"malformed JSON: {e.msg} (column {e.colno})", file=str(path), line=e.lineno,
                            reason="malformed_json") from None  # fmt: skip
        for i, rec in enumerate(data):
            yield {"record": i}, rec
        return
    if ext == ".json" and stripped.startswith("{") and "\n" in stripped.strip():
        # A pretty-printed single object (e.g. SQuAD's {"data": [...]}) is not a list of records.
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            obj = None  # not one object: JSON Lines, read below
        if isinstance(obj, dict):
            raise DataError(
                f"the file holds one JSON object (keys {sorted(obj)[:8]}), not an array of records or JSON Lines; "
                "convert it first (see `chatforge data convert`)",
                file=str(path),
                reason="wrong_type",
            )
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield {"line": n}, json.loads(line)
        except json.JSONDecodeError as e:
            yield {"line": n}, DataError(f"malformed JSON line: {e.msg} (column {e.colno})", reason="malformed_json")


def _text_docs(text: str, *, by: str) -> Iterator[tuple[dict[str, int], Any]]:
    """Raw text as {"text": ...} records: per blank-line-separated paragraph, or per line."""
    lines = text.splitlines()
    if by == "line":
        for n, line in enumerate(lines, start=1):
            if line.strip():
                yield {"line": n}, {"text": line}
        return
    start, block = 0, []
    for n, line in enumerate(lines, start=1):
        if line.strip():
            if not block:
                start = n
            block.append(line)
        elif block:
            yield {"line": start}, {"text": "\n".join(block)}
            block = []
    if block:
        yield {"line": start}, {"text": "\n".join(block)}


def _read_file(
    path: Path,
    layout: Layout | None,
    on_error: str,
    result: ReadResult,
    *,
    txt_by: str,
    meta: dict | None = None,
    auto_columns: dict[str, str] | None = None,
) -> None:
    if _ext(path) == ".txt":
        if layout is not None and layout.format != "text":
            raise ChatforgeError(f"{path}: a .txt file is raw text; it cannot be read as {layout.format!r}")
        layout = layout or Layout.make("text")
    for loc, rec in iter_raw(path, txt_by=txt_by):
        try:
            if isinstance(rec, DataError):
                raise rec
            if layout is None:
                layout = detect_layout(rec)
                if auto_columns:
                    layout = Layout.make(layout.format, {**layout.columns, **auto_columns}, ranking=layout.ranking)
            if not isinstance(rec, dict):
                raise DataError(f"a record must be a JSON object, got {type(rec).__name__}", reason="wrong_type")
            out = CONVERTERS[layout.format](rec, layout)
        except DataError as err:
            located = DataError(
                err.bare_message,
                file=str(path),
                line=loc.get("line"),
                record=loc.get("record"),
                field=err.field,
                reason=err.reason,
            )
            if on_error == "raise":
                raise located from None
            result.skipped[err.reason] += 1
            result.first_errors.setdefault(err.reason, str(located))
            continue
        out.meta.update({"source": str(path), **loc, **(meta or {})})
        result.records.append(out)
