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

import contextlib
import gzip
import json
import re
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from chatforge.data.formats import CONVERTERS, FORMATS, Layout, detect_layout
from chatforge.data.schema import Conversation, PreferencePair, TextDoc
from chatforge.errors import ChatforgeError, DataError

Record = Conversation | PreferencePair | TextDoc
EXTENSIONS = (".json", ".jsonl", ".txt")
MAX_LINE_BYTES = 64 << 20  # one JSON Lines record (or text line); a longer one is refused, never read whole
MAX_FILE_BYTES = 1 << 30  # a .json array is parsed whole, so it is bounded too (use .jsonl for bigger data)
MAX_DEPTH = 100  # nesting of objects/arrays in one record; real chat records use fewer than 10 levels
MAX_CHARS = 1_000_000  # characters per message (longer: truncated, counted) or per text document (longer: split)


@dataclass
class ReadResult:
    """The records read, and how many bad records were skipped per reason (only with on_error="skip")."""

    records: list[Record]
    skipped: Counter = field(default_factory=Counter)
    first_errors: dict[str, str] = field(default_factory=dict)  # reason -> the first full error message
    truncated: int = 0  # messages cut to `max_chars` (the tokenizer would cut them later anyway, at far more cost)
    split: int = 0  # text documents longer than `max_chars`, read as several consecutive documents (nothing lost)
    max_chars: int = MAX_CHARS

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
        if self.truncated:
            text += f"; truncated {self.truncated} messages longer than {self.max_chars} characters"
        if self.split:
            text += f"; split {self.split} text documents longer than {self.max_chars} characters into parts"
        return text


def read_records(
    path: str | Path,
    *,
    format: str = "auto",
    columns: dict[str, str] | None = None,
    on_error: str = "raise",
    dataset_info: str | Path | None = None,
    max_chars: int = MAX_CHARS,
    dataset_dir: str | Path | None = None,
) -> ReadResult:
    """Read a data file, a folder (its .json/.jsonl/.txt[.gz] files in name order, each detected on its own), or,
    with `dataset_info`, a dataset registered by name in LLaMA-Factory's dataset_info.json.

    format: "auto" or one of alpaca, sharegpt, openai, preference, text. columns: LLaMA-Factory column keys (prompt,
    query, response, history, messages, system, tools, chosen, rejected, kto_tag) or role tags mapped to the record
    keys that hold them. on_error: "raise" (first bad record raises DataError) or "skip" (count it and go on).
    max_chars: a message longer than this is truncated to it (counted in `truncated`), and a text document is split
    into consecutive documents of at most this size (counted in `split`; pretraining cuts documents into blocks anyway),
    so one huge record costs bounded memory and time downstream (pass about 16 x the training max_length).
    dataset_dir: the folder `dataset_info` file names must stay inside (default: the registry's own folder).
    """
    if on_error not in ("raise", "skip"):
        raise ChatforgeError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    if format != "auto" and format not in FORMATS:
        raise ChatforgeError(f"unknown data format {format!r}; use 'auto' or one of {', '.join(FORMATS)}")
    if max_chars < 1:
        raise ChatforgeError(f"max_chars must be positive, not {max_chars}")
    result = ReadResult(records=[], max_chars=max_chars)
    if dataset_info is not None:
        from chatforge.data.llamafactory import load_dataset_info

        specs = load_dataset_info(dataset_info, root=dataset_dir)
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


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _open_binary(path: Path) -> IO[bytes]:
    try:
        if path.suffix.lower() == ".gz":
            return gzip.open(path, "rb")  # type: ignore[return-value]
        return path.open("rb")
    except OSError as e:
        raise DataError(f"cannot read: {e.strerror or e}", file=str(path), reason="unreadable") from None


def _decode(data: bytes, path: Path, line: int | None = None) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"not UTF-8 text ({e.reason} at byte {e.start})", file=str(path), line=line, reason="encoding"
        ) from None


@contextlib.contextmanager
def _read_errors(path: Path) -> Iterator[None]:
    """Turn a corrupt or truncated compressed stream (or a read failure) into a DataError naming the file."""
    try:
        yield
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; a cut-off stream an EOFError
        what = "corrupt or truncated compressed file" if path.suffix.lower() == ".gz" else "cannot read"
        raise DataError(f"{what}: {e}", file=str(path), reason="unreadable") from None


def _lines(path: Path) -> Iterator[tuple[int, str | DataError]]:
    """(1-based line number, text without the newline) per line, streamed; a line over MAX_LINE_BYTES is yielded as
    a DataError (its bytes are skipped, never held in memory)."""
    with _read_errors(path), _open_binary(path) as f:
        n = 0
        while True:
            raw = f.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            n += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                while raw and not raw.endswith(b"\n"):  # skip the rest of the over-long line
                    raw = f.readline(1 << 20)
                yield (
                    n,
                    DataError(
                        f"the record is longer than {MAX_LINE_BYTES:,} bytes; split or shorten it", reason="too_large"
                    ),
                )
                continue
            if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # UTF-8 byte-order mark
            yield n, _decode(raw, path, n).rstrip("\r\n")


def _open_text(path: Path) -> str:
    """The whole file as text (for .json arrays and objects), bounded by MAX_FILE_BYTES."""
    with _read_errors(path), _open_binary(path) as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise DataError(
            f"a .json file is parsed whole and this one is over {MAX_FILE_BYTES >> 30} GiB; write it as JSON Lines",
            file=str(path),
            reason="too_large",
        )
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    return _decode(data, path)


def _loads(text: str) -> Any:
    """json.loads that reports nesting too deep for Python's parser as a DataError (not a RecursionError)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise DataError(f"JSON nested deeper than {MAX_DEPTH} levels", reason="too_deep") from None
    except json.JSONDecodeError:
        raise
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise DataError(f"cannot parse JSON: {str(e).split(':')[0]}", reason="malformed_json") from None


def check_tree(obj: Any, raw: str | None = None, max_depth: int = MAX_DEPTH) -> None:
    """Refuse a parsed record nested deeper than `max_depth`, or holding a lone UTF-16 surrogate (a `\\ud800` escape
    with no partner: valid JSON, but no valid text, so every later encode would fail). The DataError names the field.

    `raw` (the JSON text) lets the common case skip the walk: without enough brackets or a surrogate escape in it,
    neither problem can occur.
    """
    if raw is not None and not _SURROGATE_ESCAPE.search(raw) and max_nesting(raw) <= max_depth:
        return
    stack: list[tuple[Any, tuple, int]] = [(obj, (), 0)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, str):
            if not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError as e:
                    raise DataError(
                        f"invalid Unicode: lone surrogate {value[e.start]!r} at character {e.start} (a broken "
                        "\\uXXXX escape); fix the text or re-export it as UTF-8",
                        field=_field_path(where),
                        reason="encoding",
                    ) from None
        elif isinstance(value, (dict, list)):
            if depth >= max_depth:
                raise DataError(
                    f"nested deeper than {max_depth} levels", field=_field_path(where) or None, reason="too_deep"
                )
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, child in items:
                if isinstance(key, str) and not key.isascii():
                    stack.append((key, where, depth + 1))
                stack.append((child, (*where, key), depth + 1))


_STRUCTURE = b'[]{}"'
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in _STRUCTURE)


def max_nesting(text: str) -> int:
    """The deepest bracket nesting of a JSON text (brackets inside strings ignored), with C-speed bytes operations and
    numpy only: escaped backslashes and quotes are dropped, everything but brackets and quotes is deleted, and the
    quotes then tell which brackets lie inside strings."""
    count = text.count("[") + text.count("{")
    if count <= MAX_DEPTH:
        return count  # an upper bound that is already small enough
    import numpy as np

    data = text.encode("utf-8", "surrogatepass").replace(b"\\\\", b"").replace(b'\\"', b"")
    arr = np.frombuffer(data.translate(None, _NOT_STRUCTURE), dtype=np.uint8)
    quotes = arr == 34
    inside = (np.cumsum(quotes) % 2).astype(bool)  # an opening quote and what follows it up to the closing one
    opens = ((arr == 91) | (arr == 123)) & ~inside
    closes = ((arr == 93) | (arr == 125)) & ~inside
    depth = np.cumsum(opens.astype(np.int32) - closes.astype(np.int32))
    return int(depth.max()) if len(depth) else 0


def _field_path(parts: tuple) -> str:
    if len(parts) > 8:  # a path through a very deep structure: its start says where, the rest is noise
        return _field_path(parts[:6]) + f"...({len(parts) - 6} more levels)"
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def iter_raw(path: Path, *, txt_by: str = "paragraph") -> Iterator[tuple[dict[str, int], Any]]:
    """Yield (location, record) per record; location is {"line": n} (1-based) or {"record": i} (0-based).

    A malformed JSON line is yielded as a DataError in place of the record so the caller can raise or skip it.
    JSON Lines and text are streamed line by line; a `.json` array is parsed whole.
    """
    ext = _ext(path)
    if ext == ".txt":
        yield from _text_docs(_lines(path), by=txt_by)
        return
    if ext not in (".json", ".jsonl"):
        raise DataError(f"unsupported file type {ext!r}; use .json, .jsonl, .txt (optionally .gz)", file=str(path))
    if ext == ".json":
        text = _open_text(path)
        stripped = text.lstrip()
        if stripped.startswith("["):
            try:
                data = _loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"malformed JSON: {e.msg} (column {e.colno})", file=str(path), line=e.lineno,
                                reason="malformed_json") from None  # fmt: skip
            except DataError as e:
                raise DataError(e.bare_message, file=str(path), reason=e.reason) from None
            # One scan of the whole text decides whether any record needs the walk (+1: the array's own level).
            suspect = bool(_SURROGATE_ESCAPE.search(text)) or max_nesting(text) > MAX_DEPTH + 1
            del text, stripped
            for i, rec in enumerate(data):
                if suspect:
                    try:
                        check_tree(rec)
                    except DataError as e:
                        yield {"record": i}, e
                        continue
                yield {"record": i}, rec
            return
        if stripped.startswith("{") and "\n" in stripped.strip():
            # A pretty-printed single object (e.g. SQuAD's {"data": [...]}) is not a list of records.
            try:
                obj = _loads(text)
            except (json.JSONDecodeError, DataError):
                obj = None  # not one object: JSON Lines, read below
            if isinstance(obj, dict):
                raise DataError(
                    f"the file holds one JSON object (keys {sorted(obj)[:8]}), not an array of records or JSON "
                    "Lines; convert it first (see `chatforge data convert`)",
                    file=str(path),
                    reason="wrong_type",
                )
        del text, stripped
    for n, line in _lines(path):
        if isinstance(line, DataError):
            yield {"line": n}, line
            continue
        if not line.strip():
            continue
        try:
            rec = _loads(line)
            check_tree(rec, line)
        except json.JSONDecodeError as e:
            yield {"line": n}, DataError(f"malformed JSON line: {e.msg} (column {e.colno})", reason="malformed_json")
            continue
        except DataError as e:
            yield {"line": n}, e
            continue
        yield {"line": n}, rec


def _text_docs(lines: Iterator[tuple[int, str | DataError]], *, by: str) -> Iterator[tuple[dict[str, int], Any]]:
    """Raw text as {"text": ...} records: per blank-line-separated paragraph, or per line."""
    if by == "line":
        for n, line in lines:
            if isinstance(line, DataError) or line.strip():
                yield {"line": n}, line if isinstance(line, DataError) else {"text": line}
        return
    start, block, size = 0, [], 0
    for n, line in lines:
        if isinstance(line, DataError):
            yield {"line": n}, line
            continue
        if line.strip():
            if not block:
                start, size = n, 0
            block.append(line)
            size += len(line) + 1
            if size > MAX_CHARS:  # hold at most ~MAX_CHARS of one paragraph; the reader splits documents there anyway
                yield {"line": start}, {"text": "\n".join(block)}
                block = []
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
            located = err.located(str(path), loc)
            if on_error == "raise":
                raise located from None
            result.skipped[err.reason] += 1
            result.first_errors.setdefault(err.reason, str(located))
            continue
        out.meta.update({"source": str(path), **loc, **(meta or {})})
        if isinstance(out, TextDoc) and len(out.text) > result.max_chars:
            parts = _split_text(out.text, result.max_chars)
            result.split += 1
            for k, part in enumerate(parts):
                result.records.append(TextDoc(part, meta={**out.meta, "part": k}))
            continue
        result.truncated += _truncate(out, result.max_chars)
        result.records.append(out)


def _split_text(text: str, limit: int) -> list[str]:
    """Consecutive pieces of at most `limit` characters, cut after a newline or space where one is near the limit;
    "".join(pieces) == text."""
    pieces, start = [], 0
    while len(text) - start > limit:
        end = start + limit
        cut = max(text.rfind("\n", start + limit // 2, end), text.rfind(" ", start + limit // 2, end))
        end = cut + 1 if cut >= 0 else end
        pieces.append(text[start:end])
        start = end
    pieces.append(text[start:])
    return pieces


def _truncate(rec: Record, limit: int) -> int:
    """Cut every message of a conversation or preference pair to `limit` characters; returns how many were cut."""
    if isinstance(rec, TextDoc):
        return 0
    messages = rec.messages if isinstance(rec, Conversation) else [*rec.prompt.messages, rec.chosen, rec.rejected]
    cut = 0
    for m in messages:
        if len(m.content) > limit:
            m.content = m.content[:limit]
            cut += 1
    return cut
