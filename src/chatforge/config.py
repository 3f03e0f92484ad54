"""Run configuration: one YAML file per run plus dotted `key=value` overrides, checked against typed dataclasses.

A command composes its run schema from small dataclass sections (the shared ones are defined here: `ModelConfig`,
`DataConfig`, `TemplateConfig`, `OutputConfig`; training and evaluation add their own) and calls

    cfg = load_config("examples/sft.yaml", ["train.learning_rate=1e-4", "peft.target_modules=[q_proj,v_proj]"], RunConfig)

Validation follows the dataclasses' type hints (str, int, float, bool, Optional / `X | None`, `Literal[...]`,
`list[...]`, `dict[...]`, `Any`, `Path`, nested dataclass sections) and `field(metadata=...)` keys `min`/`max`
(inclusive), `gt`/`lt` (exclusive) and `help`. Every problem (unknown key with a "did you mean", wrong type,
out-of-range value, bad choice, missing required value, bad override syntax) is collected and raised together in one
`ConfigError` with dotted paths, so a user fixes a config in one round. A section may define
`check_config(self) -> list[tuple[str, str]]` for cross-field rules; its (field, message) pairs join the same report.
`save_config` writes the resolved config as YAML that `load_config` reads back into an equal object.

Paths inside a config are kept as written (relative to the working directory, as on the command line), so a saved
config re-runs from the same place. Schema dataclasses must be defined at module level: their (possibly string)
annotations are resolved with `typing.get_type_hints`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from chatforge.errors import ChatforgeError

T = TypeVar("T")

__all__ = [
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "OutputConfig",
    "TemplateConfig",
    "config_to_dict",
    "format_config_help",
    "load_config",
    "parse_overrides",
    "save_config",
]


class ConfigError(ChatforgeError):
    """One or more problems in a run config; `problems` lists (dotted path, message) pairs, all reported at once."""

    def __init__(self, problems: list[tuple[str, str]], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        noun = "problem" if len(self.problems) == 1 else "problems"
        lines = [f"{len(self.problems)} config {noun}{where}:"]
        lines += [f"  {path or '<top level>'}: {msg}" for path, msg in self.problems]
        super().__init__("\n".join(lines))


# ----------------------------------------------------------------------------------------------------------------------
# Shared sections. Commands build their run schema from these, e.g.
#   @dataclass
#   class RunConfig:
#       model: ModelConfig = field(default_factory=ModelConfig)
#       data: DataConfig = field(default_factory=DataConfig)
#       train: TrainConfig = field(default_factory=TrainConfig)
# ----------------------------------------------------------------------------------------------------------------------


def _help(text: str, **limits: Any) -> dict[str, Any]:
    return {"help": text, **limits}


@dataclass
class ModelConfig:
    name_or_path: str = field(
        default="smollm2-135m-instruct",
        metadata=_help("HF folder, .gguf file, or the embedded default 'smollm2-135m-instruct'"),
    )
    adapter: str | None = field(default=None, metadata=_help("PEFT adapter folder to load on top of the model"))
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(
        default="auto", metadata=_help("weights dtype; auto = bfloat16 on a GPU that supports it, else float32")
    )
    allow_pickle: bool = field(default=False, metadata=_help("allow loading pickle (.bin/.pt) weights"))
    trust_remote_code: bool = field(default=False, metadata=_help("run model code shipped inside the model folder"))
    init: dict[str, Any] | None = field(
        default=None, metadata=_help("train from scratch: Llama config fields (hidden_size, num_hidden_layers, ...)")
    )
    tokenizer: str | None = field(default=None, metadata=_help("tokenizer source if not the model's own"))
    device: str = field(default="auto", metadata=_help("auto (CUDA when present, else CPU) | cpu | cuda | cuda:N"))

    def check_config(self) -> list[tuple[str, str]]:
        return check_model_init(self.init) if self.init else []


# Llama shape fields of `model.init` that must be positive integers, with a generous upper bound each.
_INIT_INT_FIELDS = {
    "hidden_size": 65536,
    "intermediate_size": 262144,
    "num_hidden_layers": 1024,
    "num_attention_heads": 1024,
    "num_key_value_heads": 1024,
    "head_dim": 4096,
    "max_position_embeddings": 1 << 24,
    "vocab_size": 1 << 24,
}


def check_model_init(init: dict[str, Any]) -> list[tuple[str, str]]:
    """Shape rules for training from scratch (`model.init`): positive sizes, heads dividing the width, GQA groups,
    even head_dim (rotary embeddings rotate pairs), finite float fields."""
    problems: list[tuple[str, str]] = []
    for key, limit in _INIT_INT_FIELDS.items():
        if key not in init:
            continue
        value = init[key]
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append((f"init.{key}", f"expected an integer, got {_describe(value)}"))
        elif not 1 <= value <= limit:
            problems.append((f"init.{key}", f"{value} is out of range: must be between 1 and {limit}"))
    for key, value in init.items():
        if isinstance(value, float) and not math.isfinite(value):
            problems.append((f"init.{key}", f"{value!r} is not a finite number"))
    if problems:
        return problems
    # The defaults of chatforge.models.tiny.tiny_llama_config, which fills in what init leaves out.
    hidden = init.get("hidden_size", 64)
    heads = init.get("num_attention_heads", 4)
    kv_heads = init.get("num_key_value_heads", 2)
    head_dim = init.get("head_dim")
    if head_dim is None:
        if hidden % heads:
            problems.append(
                ("init.hidden_size", f"{hidden} is not divisible by num_attention_heads={heads} (or set head_dim)")
            )
        else:
            head_dim = hidden // heads
    if head_dim is not None and head_dim % 2:
        problems.append(("init.head_dim", f"head dimension {head_dim} must be even (rotary embeddings)"))
    if heads % kv_heads:
        problems.append(
            (
                "init.num_key_value_heads",
                f"{kv_heads} must divide num_attention_heads={heads} (grouped-query attention)",
            )
        )
    return problems


@dataclass
class DataConfig:
    train: list[str] = field(default_factory=list, metadata=_help("training files or dataset_info names"))
    val: list[str] = field(default_factory=list, metadata=_help("validation files or dataset_info names"))
    dataset_info: str | None = field(default=None, metadata=_help("LLaMA-Factory dataset_info.json"))
    shards: str | None = field(
        default=None,
        metadata=_help(
            "stage pt: a token-shard folder from `chatforge data tokenize` (streamed, instead of data.train)"
        ),
    )
    val_rows: float = field(
        default=0.0, metadata=_help("stage pt with shards: fraction of rows held out for validation", min=0.0, lt=1.0)
    )
    document_mask: bool = field(
        default=True,
        metadata=_help(
            "stage pt with shards: keep the documents inside a row apart (positions restart, block-diagonal "
            "attention, no label across an end-of-text); false = each row is one sample with plain causal attention "
            "and labels across end-of-text, as GPT-2/llm.c pretrain"
        ),
    )
    dataset_dir: str | None = field(
        default=None,
        metadata=_help(
            "folder the dataset_info file_name paths must stay inside (LLaMA-Factory's dataset_dir); "
            "default: the registry's own folder"
        ),  # fmt: skip
    )
    format: Literal["auto", "alpaca", "sharegpt", "openai", "preference", "text"] = field(
        default="auto", metadata=_help("record format; auto = detect per file")
    )
    val_size: float = field(
        default=0.0, metadata=_help("fraction of train held out for validation when val is empty", min=0.0, lt=1.0)
    )
    max_length: int = field(
        default=1024, metadata=_help("tokens per example (longer ones are truncated)", min=16, max=1 << 20)
    )
    max_samples: int | None = field(default=None, metadata=_help("use at most this many records per file", min=1))
    on_error: Literal["raise", "skip"] = field(
        default="raise", metadata=_help("bad records: stop with an error, or skip them and print counts per reason")
    )
    seed: int = field(default=0, metadata=_help("shuffle / split seed"))


@dataclass
class TemplateConfig:
    name: str | None = field(
        default=None, metadata=_help("chat template name, LLaMA-Factory alias or YAML file; None = pick from the model")
    )
    use_model_jinja: bool = field(
        default=False, metadata=_help("train with the model's own Jinja chat template (masks from rendered prefixes)")
    )
    mask: Literal["all_assistant", "last_assistant", "all"] = field(
        default="all_assistant", metadata=_help("which tokens are trained")
    )
    default_system: str | None = field(default=None, metadata=_help("system prompt used when a record has none"))
    date: str | None = field(
        default=None,
        metadata=_help("Llama 3.1 'Today Date' header: 'DD Mon YYYY' or 'today' (None = the template's default)"),
    )

    def check_config(self) -> list[tuple[str, str]]:
        if self.date is None:
            return []
        from chatforge.templates.formats import check_date  # here: templates import this module's neighbours

        try:
            check_date(self.date)
        except ChatforgeError as err:
            return [("date", str(err))]
        return []


@dataclass
class OutputConfig:
    dir: str = field(default="runs/run", metadata=_help("output folder (the resolved config is written there)"))
    overwrite: bool = field(default=False, metadata=_help("reuse a non-empty output folder"))


# ----------------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------------------------------
# YAML reading: PyYAML's SafeLoader, minus the things a config must never do silently
# ----------------------------------------------------------------------------------------------------------------------

MAX_YAML_NODES = 100_000  # a config has hundreds of values; a billion-laughs bomb expands to billions
MAX_YAML_DEPTH = 64
MAX_CONFIG_BYTES = 4 << 20


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML keeps the last one silently), self-referencing aliases, and
    alias bombs: the document's size with every alias expanded is bounded before anything is constructed."""

    def compose_document(self):  # type: ignore[no-untyped-def]
        node = super().compose_document()
        if node is not None:
            _check_expanded_size(node)
        return node

    def construct_mapping(self, node, deep=False):  # type: ignore[no-untyped-def]
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: PyYAML reports it itself
                    continue
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"duplicate key {key!r} (first given at line {first + 1}); give each key once",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def _check_expanded_size(root: yaml.Node) -> None:
    """Count the nodes of the document as if every alias were copied out; refuse cycles, bombs, deep nesting."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise yaml.composer.ComposerError(
                None, None, "an alias refers to a node that contains it (a cycle)", node.start_mark
            )
        if depth > MAX_YAML_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", node.start_mark
            )
        total = 1
        if isinstance(node, (yaml.SequenceNode, yaml.MappingNode)):
            active.add(key)
            children = node.value if isinstance(node, yaml.SequenceNode) else [n for kv in node.value for n in kv]
            for child in children:
                total += size(child, depth + 1)
                if total > MAX_YAML_NODES:
                    raise yaml.composer.ComposerError(
                        None,
                        None,
                        f"the document expands to more than {MAX_YAML_NODES} values (anchors/aliases repeated "
                        "inside each other: an alias bomb?)",
                        node.start_mark,
                    )
            active.discard(key)
        sizes[key] = total
        return total

    size(root, 0)


def _yaml_load(text: str) -> Any:
    """yaml.safe_load with the strict rules above."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - _StrictLoader is a SafeLoader


class _Override:
    """A value typed on the command line: YAML-parsed, but the raw text is kept for string fields.

    Without the raw text, `template.default_system=Note: be brief` (YAML sees a mapping) or `model.adapter=2024`
    (YAML sees an int) could not be given unquoted on a shell command line.
    """

    __slots__ = ("text", "value")

    def __init__(self, text: str, value: Any):
        self.text, self.value = text, value


_KEY_RE = re.compile(r"^[A-Za-z_][\w\-]*(\.[A-Za-z_0-9][\w\-]*)*$")


def _short(item: str) -> str:
    return repr(item) if len(item) <= 80 else repr(item[:77]) + "..."


def parse_overrides(overrides: list[str]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Turn `a.b=1` strings into a nested dict (values parsed as YAML); returns (tree, problems)."""
    tree: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not _KEY_RE.match(key):
            problems.append(
                (key if _KEY_RE.match(key) else "", f"bad override {item!r}: expected dotted.key=value, e.g. x.y=3")
            )
            continue
        try:
            value = _yaml_load(text)
        except RecursionError:
            problems.append((key, f"bad override {_short(item)}: nested too deeply"))
            continue
        except ValueError as err:  # not a YAMLError: e.g. an integer of more than 4300 digits
            problems.append((key, f"bad override {_short(item)}: {str(err).split(':')[0]}"))
            continue
        except yaml.YAMLError as err:
            if text.lstrip()[:1] in ("[", "{"):  # meant as a list/mapping: taking it as text would hide the typo
                problems.append((key, f"bad override {item!r}: invalid YAML value ({getattr(err, 'problem', err)})"))
                continue
            value = text  # e.g. "a: b: c" in a free-text field: the user meant the literal text
        node = tree
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                if nxt is not None:
                    problems.append(
                        (".".join(parts[: depth + 1]), f"override {item!r} conflicts with another override")
                    )
                    break
                nxt = node[part] = {}
            node = nxt
        else:
            node[parts[-1]] = _Override(text, value)
    return tree, problems


def _merge(base: dict[str, Any], over: dict[str, Any], path: str, problems: list[tuple[str, str]]) -> None:
    """Merge override tree `over` into `base` in place; refuses to descend into a scalar (it would be silently lost)."""
    for key, value in over.items():
        dotted = f"{path}.{key}" if path else key
        if isinstance(value, dict):
            current = base.get(key)
            if current is None:
                base[key] = current = {}
            if not isinstance(current, dict):
                problems.append(
                    (dotted, f"is {type(current).__name__} {current!r}, not a section; cannot set sub-keys")
                )
                continue
            _merge(current, value, dotted, problems)
        else:
            base[key] = value


def _read_yaml(path: Path) -> tuple[dict[str, Any] | None, list[tuple[str, str]]]:
    if not path.is_file():
        raise ConfigError([("", f"config file not found: {path}")], str(path))
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError([("", f"the file is {size} bytes; a config is at most {MAX_CONFIG_BYTES}")], str(path))
        data = _yaml_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError([("", f"invalid YAML: {where}{err.problem or err}")], str(path)) from None
    except RecursionError:
        raise ConfigError([("", f"invalid YAML: nested deeper than {MAX_YAML_DEPTH} levels")], str(path)) from None
    except UnicodeDecodeError as err:
        raise ConfigError([("", f"not UTF-8 text ({err.reason} at byte {err.start})")], str(path)) from None
    except ValueError as err:  # e.g. an integer of more than 4300 digits
        raise ConfigError([("", f"invalid YAML: {str(err).split(':')[0]}")], str(path)) from None
    except (yaml.YAMLError, OSError) as err:
        raise ConfigError([("", f"invalid YAML: {err}")], str(path)) from None
    if data is None:
        return {}, []
    if not isinstance(data, dict):
        return None, [("", f"the file must hold a mapping of sections, got {type(data).__name__}")]
    return data, []


def load_config(path: str | Path | None, overrides: list[str] | None, schema: type[T]) -> T:
    """Read one YAML file (or none: defaults only), apply dotted overrides, validate against `schema`.

    Raises `ConfigError` listing every problem found, each with its dotted path.
    """
    problems: list[tuple[str, str]] = []
    data: dict[str, Any] = {}
    source = str(path) if path is not None else None
    if path is not None:
        read, problems = _read_yaml(Path(path))
        data = read or {}
    tree, override_problems = parse_overrides(list(overrides or []))
    problems += override_problems
    _merge(data, tree, "", problems)
    if problems and not data:
        raise ConfigError(problems, source)
    result = _build(schema, data, "", problems, schema)
    if problems:
        raise ConfigError(problems, source)
    return result


# ----------------------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------------------

_INVALID = object()
INT64_MAX = 2**63 - 1
SEED_MAX = 2**32 - 1  # numpy's legacy RandomState and several CUDA paths take 32-bit seeds
MAX_THREADS = 1024
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d{1,3})?)$")
_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _describe(value: Any) -> str:
    if isinstance(value, _Override):
        value = value.value
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a section (mapping)"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = typing.get_args(tp)
        if not args or args[0] is Any:
            return "a list"
        plural = {str: "strings", int: "integers", float: "numbers", bool: "true/false values", Path: "paths"}
        return f"a list of {plural.get(args[0]) or _type_name(args[0])}"
    if origin is dict or tp is dict:
        return "a mapping"
    return {str: "a string", int: "an integer", float: "a number", bool: "true/false", Path: "a path"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _accepts_str(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp in (str, Path, Any):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_accepts_str(a) for a in typing.get_args(tp))
    return False


def _convert(value: Any, tp: Any, path: str, problems: list[tuple[str, str]], root: type, finite: bool = True) -> Any:
    """Check/convert `value` against type `tp`; on failure append problems and return _INVALID.

    `finite=False` (a field with metadata `allow_nonfinite`) lets float values be inf/nan; every other float must be
    finite, and every integer must fit in int64 (what torch, numpy and the JSON writers can hold).
    """
    if isinstance(value, _Override):
        trial: list[tuple[str, str]] = []
        out = _convert(value.value, tp, path, trial, root, finite)
        if out is not _INVALID:
            return out
        if _accepts_str(tp) and not isinstance(value.value, str) and value.value is not None:
            return _convert(value.text, tp, path, problems, root, finite)
        problems.extend(trial)
        return _INVALID

    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        return value
    if tp is type(None):
        if value is None:
            return None
        problems.append((path, f"expected null, got {_describe(value)}"))
        return _INVALID
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            problems.append((path, f"expected {_type_name(tp)}, got null"))
            return _INVALID
        arms = [a for a in args if a is not type(None)]
        attempts: list[list[tuple[str, str]]] = []
        for arm in arms:
            trial = []
            out = _convert(value, arm, path, trial, root, finite)
            if out is not _INVALID:
                return out
            attempts.append(trial)
        # One real candidate (e.g. `int | None`): its specific message is the useful one.
        if len(arms) == 1:
            problems.extend(attempts[0])
        else:
            problems.append((path, f"expected {_type_name(tp)}, got {_describe(value)}"))
        return _INVALID
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}  # `section:` with nothing under it means "all defaults"
        if not isinstance(value, dict):
            problems.append((path, f"expected a section (mapping of keys), got {_describe(value)}"))
            return _INVALID
        return _build(tp, value, path, problems, root)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices and not (isinstance(value, bool) and not any(isinstance(c, bool) for c in choices)):
            return value
        msg = f"{value!r} is not one of: " + ", ".join(repr(c) for c in choices)
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        problems.append((path, msg + (f" (did you mean {close[0]!r}?)" if close else "")))
        return _INVALID
    if origin in (list, tuple) or tp in (list, tuple):
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        if isinstance(value, str) and _accepts_str(item_tp):
            value = [value]  # `train: data.jsonl` is the natural way to name a single file
        if not isinstance(value, list):
            problems.append((path, f"expected {_type_name(tp)}, got {_describe(value)}"))
            return _INVALID
        out_list = [_convert(v, item_tp, f"{path}[{i}]", problems, root, finite) for i, v in enumerate(value)]
        if any(v is _INVALID for v in out_list):
            return _INVALID
        return tuple(out_list) if origin is tuple or tp is tuple else out_list
    if origin is dict or tp is dict:
        args = typing.get_args(tp)
        key_tp, val_tp = args if args else (Any, Any)
        if not isinstance(value, dict):
            problems.append((path, f"expected a mapping, got {_describe(value)}"))
            return _INVALID
        out_dict = {}
        for k, v in value.items():
            ck = _convert(k, key_tp, f"{path}.{k}", problems, root)
            cv = _convert(v, val_tp, f"{path}.{k}", problems, root, finite)
            out_dict[ck] = cv
        return _INVALID if any(v is _INVALID for v in out_dict.values()) or _INVALID in out_dict else out_dict
    if tp is bool:
        if isinstance(value, bool):
            return value
        problems.append((path, f"expected true/false, got {_describe(value)}"))
        return _INVALID
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if not -INT64_MAX - 1 <= value <= INT64_MAX:
                problems.append((path, f"{value} is out of range: integers must fit in 64 bits (|x| < 2**63)"))
                return _INVALID
            return value
        problems.append((path, f"expected an integer, got {_describe(value)}"))
        return _INVALID
    if tp is float:
        number: float | None = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an integer beyond the float range
                number = math.inf
        # PyYAML (YAML 1.1) reads `1e-4` as a string; it is plainly a number to the user.
        elif isinstance(value, str) and _FLOAT_RE.match(value.strip()):
            number = float(value)
        if number is None:
            problems.append((path, f"expected a number, got {_describe(value)}"))
            return _INVALID
        if finite and not math.isfinite(number):
            problems.append((path, f"{_describe(value)} is not a finite number (inf/nan are not allowed here)"))
            return _INVALID
        return number
    if tp is str:
        if isinstance(value, str):
            if _has_surrogate(value):
                problems.append((path, f"{_describe(value)} holds a lone UTF-16 surrogate (not valid text)"))
                return _INVALID
            return value
        problems.append((path, f"expected a string, got {_describe(value)} (quote it if it is meant as text)"))
        return _INVALID
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        problems.append((path, f"expected a path, got {_describe(value)}"))
        return _INVALID
    raise TypeError(f"config schema type {tp!r} at {path or '<root>'} is not supported by chatforge.config")


def _has_surrogate(text: str) -> bool:
    """A lone surrogate (YAML "\\ud800", or undecodable bytes on the command line) would fail at the first encode."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _check_range(value: Any, meta: typing.Mapping[str, Any], path: str, problems: list[tuple[str, str]]) -> None:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    for key, ok, words in (
        ("min", lambda v, b: v >= b, ">="),
        ("max", lambda v, b: v <= b, "<="),
        ("gt", lambda v, b: v > b, ">"),
        ("lt", lambda v, b: v < b, "<"),
    ):
        if key in meta and not ok(value, meta[key]):
            problems.append((path, f"{value!r} is out of range: must be {words} {meta[key]!r}"))


def _implied_limits(name: str, meta: typing.Mapping[str, Any]) -> dict[str, Any]:
    """Bounds every field of a kind gets unless it states its own: seeds are 32-bit unsigned, thread/process counts
    are at most MAX_THREADS (torch segfaults on absurd thread counts)."""
    if name == "seed" or name.endswith("_seed"):
        return {"min": 0, "max": SEED_MAX}
    if name in ("threads", "num_threads", "num_proc", "num_workers") or name.endswith(("_threads", "_workers")):
        return {"min": meta.get("min", 0), "max": MAX_THREADS}
    return {}


def _check_by_name(name: str, value: Any, path: str, problems: list[tuple[str, str]]) -> None:
    """Rules for string fields of a kind: device names, and output folders that must not be files."""
    if isinstance(value, str) and (name == "device" or name.endswith("_device")):
        if not _DEVICE_RE.match(value.strip()):
            problems.append((path, f"{value!r} is not a device: use auto, cpu, cuda, cuda:N or mps"))
    if isinstance(value, (str, Path)) and (name == "dir" or name.endswith(("_dir", "output_dir"))) and str(value):
        target = Path(value)
        if target.exists() and not target.is_dir():
            problems.append((path, f"{value} is a file, not a folder"))


def _all_field_paths(schema: type, prefix: str = "") -> dict[str, str]:
    """name -> dotted path of every field in nested sections (for 'did you mean train.learning_rate?')."""
    out: dict[str, str] = {}
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        dotted = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            for name, p in _all_field_paths(tp, dotted).items():
                out.setdefault(name, p)
        else:
            out.setdefault(f.name, dotted)
    return out


def _suggest(key: str, names: list[str], root: type, path: str) -> str:
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    elsewhere = _all_field_paths(root)
    here = f"{path}.{key}" if path else key
    if key in elsewhere and elsewhere[key] != here:
        return f" (did you mean {elsewhere[key]!r}?)"
    return f"; known keys: {', '.join(names)}"


def _build(schema: type[T], data: dict[str, Any], path: str, problems: list[tuple[str, str]], root: type) -> T:
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema) if f.init}
    kwargs: dict[str, Any] = {}
    bad = False
    for key in data:
        if key not in fields:
            dotted = f"{path}.{key}" if path else str(key)
            problems.append((dotted, "unknown key" + _suggest(str(key), list(fields), root, path)))
            bad = True
    for name, f in fields.items():
        dotted = f"{path}.{name}" if path else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append((dotted, f"missing required value ({_type_name(hints[name])})"))
                bad = True
            continue
        value = _convert(data[name], hints[name], dotted, problems, root, not f.metadata.get("allow_nonfinite"))
        if value is _INVALID:
            bad = True
            continue
        before = len(problems)
        _check_range(value, {**_implied_limits(name, f.metadata), **f.metadata}, dotted, problems)
        _check_by_name(name, value, dotted, problems)
        bad = bad or len(problems) > before
        kwargs[name] = value
    if bad:
        return _INVALID  # type: ignore[return-value]
    obj = schema(**kwargs)
    check = getattr(obj, "check_config", None)
    if callable(check):
        for name, msg in check() or []:
            problems.append((f"{path}.{name}" if path else name, msg))
    return obj


# ----------------------------------------------------------------------------------------------------------------------
# Saving and help
# ----------------------------------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain YAML-able data (sections become mappings, paths become strings)."""
    return _plain(cfg)


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically); `load_config(path, [], type(cfg))` gives an equal object."""
    from chatforge.io import atomic_write_text

    path = Path(path)
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True, default_flow_style=False)
    atomic_write_text(path, "# resolved config written by chatforge; re-run it as is\n" + text)
    return path


def format_config_help(schema: type, prefix: str = "") -> str:
    """One line per option: dotted key, type, default, help text (for a command's --help)."""
    lines: list[str] = []
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        dotted = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines.append(format_config_help(tp, dotted))
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        limits = ", ".join(f"{k} {f.metadata[k]}" for k in ("min", "max", "gt", "lt") if k in f.metadata)
        text = f.metadata.get("help", "")
        extra = f" [{limits}]" if limits else ""
        lines.append(f"  {dotted}={default!r}  ({_type_name(tp)}){extra}  {text}".rstrip())
    return "\n".join(lines)
