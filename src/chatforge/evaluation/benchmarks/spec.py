"""The benchmark task YAML: its keys, their validation, and the small prompt-template language.

Keys (a missing optional key takes the default shown):

    name: mmlu                      # what reports call it
    version: 1                      # bump when the prompt or scoring changes (reports carry it)
    kind: multiple_choice           # multiple_choice | generate | code
    test: mmlu/test/{subject}_test.csv   # the scored file; `{subject}` = one file per subject (a glob)
    fewshot: mmlu/dev/{subject}_dev.csv  # where few-shot examples come from (default: the test file, item itself left out)
    data_dir: null                  # folder the two paths are relative to (default: eval.benchmark_dir for shipped
                                    #   tasks, the YAML's own folder for a user's task)
    format: auto                    # jsonl | csv | auto (by suffix; `.gz` is read transparently)
    columns: null                   # csv without a header row: the column names
    fields: {question: question.stem, texts: "question.choices[].text"}   # name -> record path; a list = alternatives
    description: ""                 # put once before the few-shot examples; may use {subject} and {subject_name}
    subject_names: {}               # subject -> name shown in the description (default: underscores as spaces)
    prompt: "Question: {question}\nAnswer:"
    choices: null                   # multiple choice: literal option strings (e.g. [A, B, C, D]) ...
    choices_field: null             # ... or the field holding each record's list of option texts
    answer: {field: answerKey, type: label, labels_field: labels}   # type: index | letter | label | text | bool | regex
    target: null                    # few-shot answer text (default: the gold option); e.g. "{answer}" for GSM8K
    target_delimiter: " "           # between prompt and answer (also before each option scored)
    fewshot_delimiter: "\n\n"       # between examples
    num_fewshot: 0
    fewshot_sampler: first          # first (the first n, as lm-eval's first_n) | random (seeded by eval.seed)
    metrics: [acc, acc_norm]        # multiple_choice: acc, acc_norm; generate: exact_match; code: pass@1
    generation: {until: ["Question:"], max_new_tokens: 256}
    extract: [{name: strict, regex: "#### (-?[0-9.,]+)", select: first}]   # generate: answer extraction filters
    normalize: {ignore_case: true, remove: [",", "\\$"]}                  # generate: applied to both sides
    code: {test_field: test, entry_point_field: entry_point}             # code: how to build the test program

Templates: `{name}` is a field, `{name[0]}` an item of a list field, `{name|strip}` applies a filter (strip, lstrip,
rstrip, lower, upper); `{{` and `}}` are literal braces. `{subject}`/`{subject_name}` are always available.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from chatforge.errors import ChatforgeError

KINDS = ("multiple_choice", "generate", "code")
ANSWER_TYPES = ("index", "letter", "label", "text", "bool", "regex")
METRICS = {"multiple_choice": ("acc", "acc_norm"), "generate": ("exact_match",), "code": ("pass@1",)}
FILTERS = {
    "strip": str.strip,
    "lstrip": str.lstrip,
    "rstrip": str.rstrip,
    "lower": str.lower,
    "upper": str.upper,
}
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_]\w*)(?:\[(\d+)\])?((?:\|[a-z]+)*)\}")


def render(template: str, values: dict[str, Any], where: str = "template") -> str:
    """Fill `{field}`, `{field[i]}` and `{field|filter}` placeholders; a missing field is a ChatforgeError."""

    def fill(m: re.Match) -> str:
        if m.group(0) == "{{":
            return "{"
        if m.group(0) == "}}":
            return "}"
        name, index, filters = m.group(1), m.group(2), m.group(3)
        if name not in values:
            raise ChatforgeError(f"{where}: unknown field {{{name}}}; known: {', '.join(sorted(values))}")
        value = values[name]
        if index is not None:
            if not isinstance(value, list) or int(index) >= len(value):
                raise ChatforgeError(f"{where}: {{{name}[{index}]}} but {name} is {value!r}")
            value = value[int(index)]
        text = "" if value is None else str(value)
        for f in filter(None, filters.split("|")):
            text = FILTERS[f](text)
        return text

    return _PLACEHOLDER.sub(fill, template)


def template_fields(template: str) -> set[str]:
    return {m.group(1) for m in _PLACEHOLDER.finditer(template) if m.group(1)}


@dataclass
class BenchmarkSpec:
    """One benchmark task, as read from its YAML (see the module docstring for every key)."""

    name: str
    path: Path
    builtin: bool
    kind: str
    test: str
    version: Any = 1
    fewshot: str | None = None
    data_dir: str | None = None
    format: str = "auto"
    columns: list[str] | None = None
    fields: dict[str, list[str]] = field(default_factory=dict)
    description: str = ""
    subject_names: dict[str, str] = field(default_factory=dict)
    prompt: str = ""
    choices: list[str] | None = None
    choices_field: str | None = None
    answer: dict[str, Any] = field(default_factory=dict)
    target: str | None = None
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    num_fewshot: int = 0
    fewshot_sampler: str = "first"
    metrics: list[str] = field(default_factory=list)
    generation: dict[str, Any] = field(default_factory=dict)
    extract: list[dict[str, Any]] = field(default_factory=list)
    normalize: dict[str, Any] = field(default_factory=dict)
    code: dict[str, Any] = field(default_factory=dict)

    @property
    def has_subjects(self) -> bool:
        return "{subject}" in self.test


_KEYS = set(BenchmarkSpec.__dataclass_fields__) - {"path", "builtin"}


def parse_spec(path: Path, builtin: bool) -> BenchmarkSpec:
    """Read and check a task YAML; every problem names the file and the key."""
    if not path.is_file():
        from chatforge.evaluation.benchmarks import builtin_names

        raise ChatforgeError(
            f"{path}: no such benchmark task file (shipped benchmarks: {', '.join(builtin_names())}; "
            "or give the path of your own task YAML)"
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ChatforgeError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise ChatforgeError(f"{path}: a task YAML must be a mapping of keys (name, kind, test, prompt, ...)")

    def bad(key: str, why: str) -> ChatforgeError:
        return ChatforgeError(f"{path}: key '{key}': {why}")

    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise bad(unknown[0], f"unknown key; known keys: {', '.join(sorted(_KEYS))}")
    for key in ("name", "kind", "test", "prompt"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise bad(key, "required, a non-empty string")
    if raw["kind"] not in KINDS:
        raise bad("kind", f"{raw['kind']!r} is not one of {', '.join(KINDS)}")
    kind = raw["kind"]
    fields: dict[str, list[str]] = {}
    for name, paths in (raw.get("fields") or {}).items():
        alts = [paths] if isinstance(paths, str) else paths
        if not isinstance(alts, list) or not alts or not all(isinstance(p, str) and p for p in alts):
            raise bad(f"fields.{name}", "a record path (e.g. question.stem) or a list of alternative paths")
        fields[str(name)] = alts
    spec = BenchmarkSpec(
        name=raw["name"],
        path=path,
        builtin=builtin,
        kind=kind,
        test=raw["test"],
        fields=fields,
        **{k: v for k, v in raw.items() if k not in ("name", "kind", "test", "fields") and v is not None},
    )
    for key in ("description", "prompt", "target_delimiter", "fewshot_delimiter"):
        if not isinstance(getattr(spec, key), str):
            raise bad(key, "must be a string")
    if spec.format not in ("auto", "jsonl", "csv"):
        raise bad("format", f"{spec.format!r} is not auto, jsonl or csv")
    if not isinstance(spec.num_fewshot, int) or spec.num_fewshot < 0:
        raise bad("num_fewshot", "a whole number >= 0")
    if spec.fewshot_sampler not in ("first", "random"):
        raise bad("fewshot_sampler", "first or random")
    known = set(fields) | {"subject", "subject_name"}
    for key in ("prompt", "description", "target"):
        text = getattr(spec, key)
        missing = sorted(template_fields(text or "") - known)
        if missing:
            raise bad(key, f"uses {{{missing[0]}}}, which is not in fields ({', '.join(sorted(fields))})")
        bad_filters = [m.group(3) for m in _PLACEHOLDER.finditer(text or "") if m.group(3)]
        for chain in bad_filters:
            for f in filter(None, chain.split("|")):
                if f not in FILTERS:
                    raise bad(key, f"unknown filter |{f}; known: {', '.join(FILTERS)}")
    allowed = METRICS[kind]
    spec.metrics = list(spec.metrics or allowed)
    for m in spec.metrics:
        if m not in allowed:
            raise bad("metrics", f"{m!r} does not apply to kind {kind}; use {', '.join(allowed)}")
    if kind == "multiple_choice":
        if (spec.choices is None) == (spec.choices_field is None):
            raise bad("choices", "give exactly one of choices (literal options) or choices_field (a list field)")
        if spec.choices is not None and (
            not isinstance(spec.choices, list)
            or len(spec.choices) < 2
            or not all(isinstance(c, str) for c in spec.choices)
        ):
            raise bad("choices", "a list of at least 2 strings")
        if spec.choices_field is not None and spec.choices_field not in fields:
            raise bad("choices_field", f"{spec.choices_field!r} is not in fields")
    if kind in ("multiple_choice", "generate"):
        ans = spec.answer
        if not isinstance(ans, dict) or ans.get("field") not in fields:
            raise bad("answer", "a mapping with 'field' (one of fields) and 'type'")
        if ans.get("type", "index") not in ANSWER_TYPES:
            raise bad("answer.type", f"{ans.get('type')!r} is not one of {', '.join(ANSWER_TYPES)}")
        if ans.get("type") == "label" and ans.get("labels_field") not in fields:
            raise bad("answer.labels_field", "type label needs labels_field, the field listing each option's label")
        if ans.get("type") == "regex":
            try:
                re.compile(str(ans.get("pattern")))
            except re.error as err:
                raise bad("answer.pattern", f"not a regular expression ({err})") from None
    if kind in ("generate", "code"):
        gen = spec.generation
        if not isinstance(gen, dict) or not isinstance(gen.get("until", []), list):
            raise bad("generation", "a mapping with until (list of stop strings) and max_new_tokens")
        if not isinstance(gen.get("max_new_tokens", 256), int) or gen.get("max_new_tokens", 256) < 1:
            raise bad("generation.max_new_tokens", "a whole number >= 1")
    if kind == "generate":
        for i, ex in enumerate(spec.extract or []):
            if not isinstance(ex, dict) or not isinstance(ex.get("regex"), str) or not ex.get("name"):
                raise bad(f"extract[{i}]", "a mapping with name and regex (and optional select: first|last)")
            try:
                re.compile(ex["regex"])
            except re.error as err:
                raise bad(f"extract[{i}].regex", f"not a regular expression ({err})") from None
            if ex.get("select", "first") not in ("first", "last"):
                raise bad(f"extract[{i}].select", "first or last")
    if kind == "code":
        for key in ("test_field", "entry_point_field"):
            if spec.code.get(key) not in fields:
                raise bad(f"code.{key}", "required: one of fields")
    return spec
