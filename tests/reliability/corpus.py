"""The corpus of bad inputs the reliability tests feed to the real CLI: each case is a file (or config) plus the
words the error message must contain (file, line/record, field, what is wrong).

Data cases build their files in code (no binary fixtures in the repo); `expect` strings are matched
case-sensitively against stderr.
"""

from __future__ import annotations

import gzip
import json
import random
from dataclasses import dataclass, field

USER = {"role": "user", "content": "Hi"}
ASSISTANT = {"role": "assistant", "content": "Hello"}
GOOD = json.dumps({"messages": [USER, ASSISTANT]})


def _jsonl(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n").encode("utf-8")


def _msgs(*messages: dict, **extra) -> str:
    return json.dumps({"messages": list(messages), **extra})


def _gz_truncated() -> bytes:
    data = gzip.compress(_jsonl(*[GOOD] * 2000), mtime=0)
    return data[: len(data) // 2]


def _gz_flipped() -> bytes:
    data = bytearray(gzip.compress(_jsonl(*[GOOD] * 200), mtime=0))
    for i in range(20, 40):
        data[i] ^= 0xA5
    return bytes(data)


def _random_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


@dataclass
class DataCase:
    id: str
    name: str  # file name (its extension picks the container)
    content: bytes
    expect: list[str] = field(default_factory=list)


CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}

DATA_CASES = [
    DataCase(
        "deep_nesting_line",
        "deep.jsonl",
        _jsonl(GOOD, '{"text": ' + "[" * 100_000 + "]" * 100_000 + "}"),
        ["deep.jsonl", "line 2", "nested deeper than"],
    ),
    DataCase(
        "deep_nesting_field",
        "deep2.jsonl",
        _jsonl(_msgs(USER, {**ASSISTANT, "x": json.loads("[" * 300 + "]" * 300)})),
        ["line 1", "field 'messages[1].x[0]", "nested deeper than 100 levels"],
    ),
    DataCase(
        "deep_nesting_json_array",
        "deep.json",
        ('[{"text": "a"}, {"text": ' + "[" * 300 + "]" * 300 + "}]").encode(),
        ["deep.json", "record 1", "nested deeper than"],
    ),
    DataCase(
        "deep_nesting_json_array_beyond_parser",
        "deeper.json",
        ('[{"text": "a"}, {"text": ' + "[" * 50_000 + "]" * 50_000 + "}]").encode(),
        ["deeper.json", "nested deeper than"],
    ),
    DataCase(
        "lone_surrogate",
        "sur.jsonl",
        _jsonl(GOOD, _msgs(USER, {"role": "assistant", "content": "aSURRb"}).replace("SURR", "\\ud800")),
        ["sur.jsonl", "line 2", "field 'messages[1].content'", "lone surrogate"],
    ),
    DataCase(
        "lone_surrogate_in_key", "surkey.jsonl", _jsonl('{"messages": [], "\\udc80": 1}'), ["line 1", "lone surrogate"]
    ),
    DataCase(
        "lone_surrogate_json_array",
        "sur.json",
        (b'[{"text": "ok"}, {"text": "x\\udfff"}]'),
        ["record 1", "field 'text'", "lone surrogate"],
    ),
    DataCase("gz_truncated", "cut.jsonl.gz", _gz_truncated(), ["cut.jsonl.gz", "corrupt or truncated"]),
    DataCase("gz_bit_flips", "flip.jsonl.gz", _gz_flipped(), ["flip.jsonl.gz", "corrupt or truncated"]),
    DataCase("gz_not_gzip", "plain.jsonl.gz", _jsonl(GOOD), ["plain.jsonl.gz", "corrupt or truncated"]),
    DataCase("gz_empty", "empty.json.gz", b"", ["empty.json.gz"]),
    DataCase(
        "not_utf8",
        "latin1.jsonl",
        _jsonl(GOOD, GOOD) + '{"text": "caf\xe9"}\n'.encode("latin-1"),
        ["latin1.jsonl", "line 3", "not UTF-8"],
    ),
    DataCase("random_bytes", "junk.jsonl", _random_bytes(4096, 1), ["junk.jsonl", "line"]),
    DataCase("random_bytes_json", "junk.json", b"[" + _random_bytes(4096, 2), ["junk.json"]),
    DataCase("malformed_line", "bad.jsonl", _jsonl(GOOD, '{"messages": [', GOOD), ["line 2", "malformed JSON"]),
    DataCase(
        "truncated_json_array",
        "cut.json",
        json.dumps([json.loads(GOOD)] * 3, indent=1)[:-20].encode(),
        ["cut.json", "malformed JSON"],
    ),
    DataCase("record_not_object", "list.jsonl", _jsonl("[1, 2, 3]"), ["line 1", "JSON object"]),
    DataCase(
        "single_object_file", "one.json", json.dumps({"data": [1]}, indent=1).encode(), ["one.json", "one JSON object"]
    ),
    DataCase(
        "unknown_role",
        "role.jsonl",
        _jsonl(_msgs({"role": "robot", "content": "x"}, ASSISTANT)),
        ["line 1", "field 'messages[0].role'", "unknown role"],
    ),
    DataCase(
        "content_wrong_type",
        "ctype.jsonl",
        _jsonl(_msgs({"role": "user", "content": 5}, ASSISTANT)),
        ["field 'messages[0].content'", "expected a string"],
    ),
    DataCase(
        "content_missing",
        "nocontent.jsonl",
        _jsonl(_msgs({"role": "user"}, ASSISTANT)),
        ["field 'messages[0].content'", "no 'content'"],
    ),
    DataCase(
        "image_part",
        "image.jsonl",
        _jsonl(_msgs({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}, ASSISTANT)),
        ["field 'messages[0].content[0]'", "text-only"],
    ),
    DataCase(
        "text_part_without_text",
        "part.jsonl",
        _jsonl(_msgs({"role": "user", "content": [{"type": "text"}]}, ASSISTANT)),
        ["field 'messages[0].content[0].text'"],
    ),
    DataCase(
        "tool_result_without_call",
        "tool.jsonl",
        _jsonl(_msgs(USER, {"role": "tool", "content": "r"}, ASSISTANT)),
        ["field 'messages[1]'", "tool result without"],
    ),
    DataCase(
        "tool_call_id_unknown",
        "tcid.jsonl",
        _jsonl(
            _msgs(
                USER,
                {"role": "assistant", "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "nope", "content": "r"},
                ASSISTANT,
            )
        ),
        ["field 'messages[2].tool_call_id'", "'nope'"],
    ),
    DataCase(
        "tool_call_args_not_json",
        "args.jsonl",
        _jsonl(
            _msgs(
                USER,
                {"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "f", "arguments": "{x"}}]},
                {"role": "tool", "content": "r"},
                ASSISTANT,
            )
        ),
        ["field 'messages[1].tool_calls[0].function.arguments'", "not valid JSON"],
    ),
    DataCase(
        "tool_call_custom_type",
        "ctool.jsonl",
        _jsonl(
            _msgs(
                USER,
                {"role": "assistant", "tool_calls": [{"id": "c", "type": "custom", "custom": {}}]},
                {"role": "tool", "content": "r"},
                ASSISTANT,
            )
        ),
        ["field 'messages[1].tool_calls[0].type'", "only function tool calls"],
    ),
    DataCase(
        "tool_calls_not_list",
        "tcl.jsonl",
        _jsonl(_msgs(USER, {"role": "assistant", "tool_calls": {"a": 1}})),
        ["field 'messages[1].tool_calls'", "must be a list"],
    ),
    DataCase(
        "weight_bad_value",
        "w.jsonl",
        _jsonl(_msgs(USER, {**ASSISTANT, "weight": 0.5})),
        ["field 'messages[1].weight'", "0 or 1"],
    ),
    DataCase(
        "weight_on_user",
        "wu.jsonl",
        _jsonl(_msgs({**USER, "weight": 0}, ASSISTANT)),
        ["field 'messages[0].weight'", "assistant messages only"],
    ),
    DataCase("ends_with_user", "end.jsonl", _jsonl(_msgs(USER)), ["line 1", "final assistant turn"]),
    DataCase(
        "alpaca_missing_output", "a.json", json.dumps([{"instruction": "x"}]).encode(), ["record 0", "field 'output'"]
    ),
    DataCase("unknown_format", "what.jsonl", _jsonl('{"foo": 1}'), ["line 1", "cannot tell the format"]),
    DataCase("empty_file", "nothing.jsonl", b"", ["no records"]),
    DataCase("only_blank_lines", "blank.jsonl", b"\n\n  \n", ["no records"]),
    DataCase("unsupported_extension", "data.csv", b"a,b\n1,2\n", ["data.csv"]),
    DataCase("bom_then_bad_line", "bom.jsonl", b"\xef\xbb\xbf" + _jsonl(GOOD, "nope"), ["line 2", "malformed JSON"]),
]

# dataset_info.json registries whose entries must be refused (the data file next to them is valid).
DATASET_INFO_CASES = {
    "parent_escape": ({"d": {"file_name": "../../etc/passwd", "formatting": "sharegpt"}}, ["d.file_name", "outside"]),
    "absolute_path": ({"d": {"file_name": "/etc/passwd"}}, ["d.file_name", "relative"]),
    "inner_escape": ({"d": {"file_name": "sub/../../x.json"}}, ["d.file_name", "outside"]),
    "not_a_string": ({"d": {"file_name": 3}}, ["d.file_name", "must be a string"]),
    "hub_only": ({"d": {"hf_hub_url": "org/x"}}, ["does not download"]),
    "bad_formatting": ({"d": {"file_name": "x.json", "formatting": "csv"}}, ["d.formatting"]),
}


@dataclass
class ConfigCase:
    id: str
    yaml: str | None  # the config file's text (None: no file, overrides only)
    overrides: list[str]
    expect: list[str]


# 9 levels of 9 aliases: 9**9 (387 million) values once expanded, in under 600 bytes; the error message for the
# wrongly typed learning_rate would print (expand) it.
_BOMB = "\n".join(
    ["model:", "  init:", "    a: &a [x, x, x, x, x, x, x, x, x]"]
    + [f"    {c}: &{c} [" + ", ".join([f"*{p}"] * 9) + "]" for p, c in zip("abcdefgh", "bcdefghi")]
    + ["train:", "  learning_rate: *i"]
)

CONFIG_CASES = [
    ConfigCase(
        "duplicate_key",
        "train:\n  learning_rate: 1.0e-4\n  epochs: 1\n  learning_rate: 1.0e-3\n",
        [],
        ["line 4", "duplicate key 'learning_rate'", "first given at line 2"],
    ),
    ConfigCase(
        "duplicate_section",
        "train:\n  epochs: 1\ndata:\n  train: [x.jsonl]\ntrain:\n  epochs: 2\n",
        [],
        ["line 5", "duplicate key 'train'"],
    ),
    ConfigCase("alias_bomb", _BOMB + "\n", [], ["alias bomb"]),
    ConfigCase("alias_cycle", "model:\n  init: &x {a: *x}\n", [], ["cycle"]),
    ConfigCase("deep_yaml", "x: " + "[" * 5000 + "]" * 5000 + "\n", [], ["nested deeper"]),
    ConfigCase("not_a_mapping", "- a\n- b\n", [], ["mapping"]),
    ConfigCase("not_utf8", "train:\n  epochs: 1 # caf\udce9\n", [], ["not UTF-8"]),
    ConfigCase("yaml_syntax", "train:\n  epochs: [1\n", [], ["invalid YAML", "line"]),
    ConfigCase("lr_inf_file", "train:\n  learning_rate: .inf\n", [], ["train.learning_rate", "finite"]),
    ConfigCase("lr_nan_file", "train:\n  learning_rate: .nan\n", [], ["train.learning_rate", "finite"]),
    ConfigCase("lr_inf_override", None, ["train.learning_rate=.inf"], ["train.learning_rate", "finite"]),
    ConfigCase("lr_overflow", None, ["train.learning_rate=1e400"], ["train.learning_rate", "finite"]),
    ConfigCase("epochs_neg_inf", None, ["train.epochs=-.inf"], ["train.epochs"]),
    ConfigCase("seed_negative", None, ["train.seed=-1"], ["train.seed", "out of range"]),
    ConfigCase("seed_2_64", None, [f"train.seed={2**64}"], ["train.seed", "out of range"]),
    ConfigCase("seed_2_32", None, [f"train.seed={2**32}"], ["train.seed", "out of range"]),
    ConfigCase("data_seed_huge", None, [f"data.seed={2**70}"], ["data.seed", "out of range"]),
    ConfigCase("max_steps_huge", None, [f"train.max_steps={10**30}"], ["train.max_steps", "64 bits"]),
    ConfigCase("device_tpu", None, ["model.device=tpu"], ["model.device", "'tpu' is not a device"]),
    ConfigCase("device_garbage", None, ["model.device=cuda:x"], ["model.device"]),
    ConfigCase("threads_huge", None, ["train.num_threads=100000"], ["train.num_threads", "<= 1024"]),
    ConfigCase("threads_zero", None, ["train.num_threads=0"], ["train.num_threads"]),
    ConfigCase("init_hidden_63", None, ["model.init={hidden_size: 63}"], ["model.init.hidden_size", "divisible"]),
    ConfigCase("init_negative", None, ["model.init={num_hidden_layers: -2}"], ["model.init.num_hidden_layers"]),
    ConfigCase(
        "init_gqa",
        None,
        ["model.init={num_attention_heads: 4, num_key_value_heads: 3}"],
        ["model.init.num_key_value_heads"],
    ),
    ConfigCase(
        "init_odd_head_dim",
        None,
        ["model.init={hidden_size: 60, num_attention_heads: 4}"],
        ["model.init.head_dim", "even"],
    ),
    ConfigCase("init_inf", None, ["model.init={rms_norm_eps: .inf}"], ["model.init.rms_norm_eps", "finite"]),
    ConfigCase("output_dir_is_file", None, ["output.dir={FILE}"], ["output.dir", "is a file"]),
    ConfigCase("unknown_key", None, ["train.learnin_rate=1"], ["train.learnin_rate", "did you mean 'learning_rate'"]),
    ConfigCase("wrong_type", None, ["train.batch_size=many"], ["train.batch_size", "expected an integer"]),
    ConfigCase("bad_override_syntax", None, ["train.epochs"], ["bad override"]),
    ConfigCase("val_size_range", None, ["data.val_size=1.5"], ["data.val_size", "out of range"]),
]


def write_case_files(root, case: DataCase):
    path = root / case.name
    path.write_bytes(case.content)
    return path


def write_config(root, case: ConfigCase):
    if case.yaml is None:
        return None
    path = root / f"{case.id}.yaml"
    # surrogateescape lets a case hold raw non-UTF-8 bytes (the not_utf8 case)
    path.write_bytes(case.yaml.encode("utf-8", "surrogateescape"))
    return path


__all__ = ["CONFIG_CASES", "DATASET_INFO_CASES", "DATA_CASES", "ConfigCase", "DataCase"]

# Cases added for JSON held inside string fields and for numbers Python refuses to parse.
DEEP_STRING = "[" * 50_000 + "]" * 50_000
DATA_CASES += [
    DataCase(
        "huge_integer",
        "bigint.jsonl",
        _jsonl('{"text": "a", "meta": {"n": ' + "1" * 5000 + "}}"),
        ["line 1", "cannot parse JSON"],
    ),
    DataCase(
        "tools_string_too_deep",
        "tools.jsonl",
        _jsonl(_msgs(USER, ASSISTANT, tools=DEEP_STRING)),
        ["line 1", "field 'tools'", "nested too deeply"],
    ),
    DataCase(
        "arguments_string_surrogate",
        "argsur.jsonl",
        _jsonl(
            _msgs(
                USER,
                {
                    "role": "assistant",
                    "tool_calls": [{**CALL, "function": {"name": "f", "arguments": '{"a": "SURR"}'}}],
                },
                {"role": "tool", "content": "r"},
                ASSISTANT,
            ).replace("SURR", "\\\\ud800")
        ),
        ["field 'messages[1].tool_calls[0].function.arguments -> a'", "lone surrogate"],
    ),
    DataCase(
        "sharegpt_function_call_too_deep",
        "fc.jsonl",
        _jsonl(
            json.dumps(
                {
                    "conversations": [
                        {"from": "human", "value": "x"},
                        {"from": "function_call", "value": DEEP_STRING},
                        {"from": "observation", "value": "r"},
                        {"from": "gpt", "value": "y"},
                    ]
                }
            )
        ),
        ["field 'conversations[1].value'", "function_call cannot be parsed"],
    ),
]
CONFIG_CASES += [
    ConfigCase(
        "surrogate_in_yaml", 'template:\n  default_system: "a\\ud800"\n', [], ["template.default_system", "surrogate"]
    ),
    ConfigCase("huge_integer_file", "train:\n  seed: " + "9" * 5000 + "\n", [], ["invalid YAML", "4300"]),
    ConfigCase("huge_integer_override", None, ["train.seed=" + "9" * 5000], ["bad override", "4300"]),
]
