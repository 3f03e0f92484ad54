"""Web forms generated from a run schema (the same dataclasses `chatforge.config` validates), and form values turned
back into a validated config.

`form_spec(TrainRunConfig)` walks the schema the way `chatforge.config.format_config_help` does and describes every
field (dotted path, widget kind, choices, default as text, limits, help). The page sends every field back as text;
`config_from_form` turns those texts into the dotted `key=value` overrides the CLI takes and calls
`chatforge.config.load_config`, so the page and `chatforge train` accept exactly the same values and report the same
problems, each under its dotted path (the page shows it next to the field).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from chatforge.config import ConfigError, _type_name, load_config


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        return (args[0] if len(args) == 1 else tp), optional
    return tp, False


def _kind(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "choice"
    if tp is bool:
        return "bool"
    if tp is int:
        return "integer"
    if tp is float:
        return "number"
    if origin in (list, tuple) or tp in (list, tuple):
        return "list"
    if origin is dict or tp is dict:
        return "mapping"
    if tp in (str, Path):
        return "text"
    return "yaml"


def value_text(value: Any) -> str:
    """A config value as the text a user would type in an override (`key=TEXT`)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, dict)):
        return yaml.safe_dump(_plain(value), default_flow_style=True, width=10**6, allow_unicode=True).strip()
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def form_spec(schema: type, skip: tuple[str, ...] = (), values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Sections of fields for `schema` (a dataclass whose fields are sections). `skip` drops sections or dotted
    fields the UI sets itself; `values` (dotted path -> value) replaces defaults, e.g. to prefill from a run."""
    values = values or {}
    sections = []
    hints = typing.get_type_hints(schema)
    for sf in dataclasses.fields(schema):
        if sf.name in skip:
            continue
        tp = hints[sf.name]
        if not dataclasses.is_dataclass(tp):
            raise TypeError(f"{schema.__name__}.{sf.name}: top-level fields must be sections")
        doc = (tp.__doc__ or "").strip()
        help_ = "" if doc.startswith(tp.__name__ + "(") else doc.split("\n\n")[0]
        sections.append(dict(name=sf.name, help=help_, fields=_fields(tp, sf.name, skip, values)))
    return sections


def _fields(schema: type, prefix: str, skip: tuple[str, ...], values: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        path = f"{prefix}.{f.name}"
        if path in skip or not f.init:
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += _fields(tp, path, skip, values)
            continue
        base, optional = _unwrap(tp)
        kind = _kind(base)
        value = values[path] if path in values else _default(f)
        limits = {k: f.metadata[k] for k in ("min", "max", "gt", "lt") if k in f.metadata}
        item = dict(
            path=path,
            name=f.name,
            kind=kind,
            optional=optional,
            default=value_text(value),
            type=_type_name(tp),
            help=f.metadata.get("help", ""),
            limits=limits,
        )
        if kind == "choice":
            item["choices"] = [value_text(c) for c in typing.get_args(base)]
        out.append(item)
    return out


def _leaves(spec: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for section in spec for f in section["fields"]}


def form_overrides(spec: list[dict[str, Any]], values: dict[str, Any]) -> tuple[list[str], list[tuple[str, str]]]:
    """Form texts -> `key=value` override strings, plus problems for fields the form does not have."""
    leaves = _leaves(spec)
    overrides, problems = [], []
    for path, raw in values.items():
        field = leaves.get(path)
        if field is None:
            problems.append((str(path), "not a field of this form"))
            continue
        text = raw if isinstance(raw, str) else value_text(raw)
        if not text.strip():
            # An empty box: null where null is allowed, an empty string/list where that is the natural reading.
            text = "null" if field["optional"] else {"text": "''", "list": "[]", "mapping": "{}"}.get(field["kind"], "")
            if not text:
                problems.append((path, f"a value is required ({field['type']})"))
                continue
        overrides.append(f"{path}={text}")
    return overrides, problems


def config_from_form(
    schema: type[Any], spec: list[dict[str, Any]], values: dict[str, Any], fixed: list[str]
) -> tuple[Any, list[tuple[str, str]]]:
    """Validate form values (+ `fixed` overrides the UI sets, e.g. output.dir) with `load_config`.

    Returns (config or None, problems) with problems as (dotted path, message), the same the CLI reports."""
    overrides, problems = form_overrides(spec, values)
    try:
        cfg = load_config(None, overrides + list(fixed), schema)
    except ConfigError as err:
        return None, problems + err.problems
    return (None if problems else cfg), problems
