"""Benchmark files -> scored documents: read JSONL/CSV (gzipped or not), pull the task's fields out of each record,
resolve the gold answer, and build the exact prompt text (description + few-shot examples + question).

The prompt layout follows the usual log-likelihood harness convention, so numbers are comparable with
lm-evaluation-harness: `description + (example + target_delimiter + answer + fewshot_delimiter) * k + question`, and
each option is scored as the continuation `target_delimiter + option`.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatforge.errors import ChatforgeError, DataError
from chatforge.evaluation.benchmarks.spec import BenchmarkSpec, render

csv.field_size_limit(1 << 24)  # passages and code can exceed csv's default 128 KiB field limit


@dataclass
class Doc:
    """One benchmark item: where it came from, its subject, its fields, the options and the gold answer."""

    source: str
    subject: str
    values: dict[str, Any]
    choices: list[str] = field(default_factory=list)
    gold: Any = None  # multiple choice: option index; generate: the reference answer text


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return path.open(encoding="utf-8-sig", newline="")


def read_records(path: Path, fmt: str = "auto", columns: list[str] | None = None) -> Iterator[tuple[int, dict]]:
    """(line or row number, record dict) for each record of a JSONL or CSV file (optionally .gz)."""
    if not path.is_file():
        raise ChatforgeError(f"{path}: no such benchmark data file")
    stem = path.name[:-3] if path.name.endswith(".gz") else path.name
    if fmt == "auto":
        fmt = "csv" if stem.endswith(".csv") else "jsonl" if stem.endswith((".jsonl", ".json")) else ""
        if not fmt:
            raise ChatforgeError(f"{path}: cannot tell the format from the name; set format: jsonl or csv")
    with _open_text(path) as fh:
        if fmt == "jsonl":
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"not valid JSON: {err.msg}", file=str(path), line=line_no) from None
                if not isinstance(rec, dict):
                    raise DataError("a record must be a JSON object", file=str(path), line=line_no)
                yield line_no, rec
            return
        reader = csv.reader(fh)
        header = columns
        for row_no, row in enumerate(reader, 1):
            if header is None:
                header = row
                continue
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(
                    f"{len(row)} columns where {len(header)} were expected ({', '.join(header)})",
                    file=str(path),
                    line=row_no,
                )
            yield row_no, dict(zip(header, row))


def get_path(rec: Any, path: str) -> Any:
    """`a.b` walks mappings, `a[]` maps the rest of the path over a list, a whole number indexes a list."""
    parts = path.split(".")
    value = rec
    for i, part in enumerate(parts):
        many = part.endswith("[]")
        key = part[:-2] if many else part
        if key:
            if isinstance(value, dict):
                if key not in value:
                    raise KeyError(path)
                value = value[key]
            elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
                value = value[int(key)]
            else:
                raise KeyError(path)
        if many:
            if not isinstance(value, list):
                raise KeyError(path)
            rest = ".".join(parts[i + 1 :])
            return [get_path(v, rest) if rest else v for v in value]
    return value


def _letter_index(value: Any) -> int | None:
    text = str(value).strip().upper()
    return ord(text) - ord("A") if len(text) == 1 and "A" <= text <= "Z" else None


def _gold(spec: BenchmarkSpec, values: dict[str, Any], choices: list[str]) -> Any:
    ans = spec.answer
    kind, raw = ans.get("type", "index"), values[ans["field"]]
    if spec.kind == "generate":
        if kind == "regex":
            m = re.search(str(ans["pattern"]), str(raw), flags=re.S)
            if not m:
                raise ValueError(f"{raw!r} does not match answer.pattern {ans['pattern']!r}")
            return m.group(1) if m.groups() else m.group(0)
        return str(raw)
    index: int | None
    if kind == "index":
        index = int(raw) if isinstance(raw, int) or str(raw).strip().lstrip("-").isdigit() else None
    elif kind == "letter":
        index = _letter_index(raw)
    elif kind == "label":
        labels = [str(x).strip() for x in values[ans["labels_field"]]]
        index = labels.index(str(raw).strip()) if str(raw).strip() in labels else None
    elif kind == "bool":
        truth = {"true": 1, "false": 0, "1": 1, "0": 0, "yes": 1, "no": 0}
        index = int(raw) if isinstance(raw, bool) else truth.get(str(raw).strip().lower())
    elif kind == "text":
        index = choices.index(raw) if raw in choices else None
    else:
        raise ValueError(f"answer type {kind} is for generate tasks")
    if index is None or not 0 <= index < len(choices):
        raise ValueError(f"{raw!r} does not name one of the {len(choices)} options (answer type {kind})")
    return index


def make_doc(spec: BenchmarkSpec, rec: dict, source: str, subject: str) -> Doc:
    """Extract the task's fields, options and gold answer from one record (DataError naming the field if not)."""
    file, _, line = source.rpartition(":")
    values: dict[str, Any] = {"subject": subject, "subject_name": subject_name(spec, subject)}
    for name, alts in spec.fields.items():
        for alt in alts:
            try:
                values[name] = get_path(rec, alt)
                break
            except KeyError:
                continue
        else:
            raise DataError(f"no field at {' or '.join(alts)}", file=file, line=int(line), field=name)
    choices: list[str] = []
    if spec.kind == "multiple_choice":
        if spec.choices is not None:
            choices = [render(c, values, f"{spec.path}: choices") for c in spec.choices]
        else:
            raw = values[spec.choices_field]
            if not isinstance(raw, list) or len(raw) < 2:
                raise DataError(
                    "needs a list of at least 2 options", file=file, line=int(line), field=spec.choices_field
                )
            choices = [str(c) for c in raw]
    try:
        gold = _gold(spec, values, choices) if spec.kind != "code" else None
    except (ValueError, KeyError) as err:
        raise DataError(str(err), file=file, line=int(line), field=spec.answer.get("field")) from None
    return Doc(source, subject, values, choices, gold)


def subject_name(spec: BenchmarkSpec, subject: str) -> str:
    return spec.subject_names.get(subject, subject.replace("_", " "))


def _resolve(spec: BenchmarkSpec, pattern: str, benchmark_dir: str | None) -> Path:
    base = spec.data_dir or (benchmark_dir if spec.builtin else str(spec.path.parent))
    p = Path(pattern)
    if p.is_absolute():
        return p
    if base is None:
        raise ChatforgeError(
            f"benchmark {spec.name}: its data path {pattern} is relative; set eval.benchmark_dir (or the "
            "CHATFORGE_BENCHMARKS environment variable) to the folder holding the benchmark files, e.g. "
            "../shared/data/benchmarks"
        )
    return Path(base) / p


def find_subjects(spec: BenchmarkSpec, benchmark_dir: str | None) -> dict[str, Path]:
    """subject -> test file ('' -> the one test file for a task without subjects)."""
    test = _resolve(spec, spec.test, benchmark_dir)
    if not spec.has_subjects:
        if not test.is_file():
            raise ChatforgeError(
                f"benchmark {spec.name}: {test}: no such benchmark data file (is eval.benchmark_dir right?)"
            )
        return {"": test}
    text = str(test)
    head, tail = text.split("{subject}", 1)
    found = {}
    for p in sorted(glob.glob(glob.escape(head) + "*" + glob.escape(tail))):
        found[p[len(head) : len(p) - len(tail)]] = Path(p)
    if not found:
        raise ChatforgeError(f"benchmark {spec.name}: no files match {text} (is eval.benchmark_dir right?)")
    return found


def load_docs(spec: BenchmarkSpec, path: Path, subject: str) -> list[Doc]:
    return [
        make_doc(spec, rec, f"{path}:{line}", subject) for line, rec in read_records(path, spec.format, spec.columns)
    ]


def fewshot_pool(spec: BenchmarkSpec, subject: str, benchmark_dir: str | None, test_docs: list[Doc]) -> list[Doc]:
    """The few-shot examples' pool for a subject: the fewshot file, or (none given) the test docs themselves."""
    if not spec.fewshot:
        return test_docs
    path = _resolve(spec, spec.fewshot.replace("{subject}", subject), benchmark_dir)
    return load_docs(spec, path, subject)


def pick_shots(pool: list[Doc], doc: Doc, k: int, sampler: str, rng: random.Random) -> list[Doc]:
    """k examples for `doc` (never the doc itself): the first k of the pool, or a seeded random sample."""
    if k == 0:
        return []
    candidates = [d for d in pool if d.source != doc.source]
    if len(candidates) < k:
        raise ChatforgeError(f"{k}-shot asked for, but the few-shot pool for {doc.source} has {len(candidates)} items")
    return candidates[:k] if sampler == "first" else rng.sample(candidates, k)


def target_text(spec: BenchmarkSpec, doc: Doc) -> str:
    """The answer written after a few-shot example."""
    if spec.target is not None:
        return render(spec.target, doc.values, f"{spec.path}: target")
    if spec.kind == "multiple_choice":
        return doc.choices[doc.gold]
    return str(doc.gold)


def build_context(spec: BenchmarkSpec, doc: Doc, shots: list[Doc]) -> str:
    """description + solved examples + this question, exactly as scored."""
    where = f"{spec.path}: prompt"
    parts = [render(spec.description, doc.values, f"{spec.path}: description")]
    for s in shots:
        parts.append(render(spec.prompt, s.values, where) + spec.target_delimiter + target_text(spec, s))
        parts.append(spec.fewshot_delimiter)
    parts.append(render(spec.prompt, doc.values, where))
    return "".join(parts)
