"""Make a saved HF folder read the same in transformers 4.4x and 5.x.

transformers 5 writes two things 4.x misreads:
- `tokenizer_config.json` names `"tokenizer_class": "TokenizersBackend"`, a class 4.x does not have (load fails), and
  may write `extra_special_tokens` as a list where 4.x expects a dict (load fails);
- `config.json` keeps `rope_theta` only inside `rope_parameters`; 4.x reads the top-level `rope_theta` and silently
  falls back to 10000, so its logits differ with no warning. Likewise `torch_dtype` (4.x) vs `dtype` (5.x).

`make_folder_compatible` rewrites both files in place so that each version finds the keys it reads; 5.x ignores the
legacy keys when the new ones agree. `check_folder_compatible` reads the files the way 4.x does and lists problems.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Tokenizer classes transformers 4.4x knows for byte-level / sentencepiece-BPE fast tokenizers.
LEGACY_TOKENIZER_CLASS = "PreTrainedTokenizerFast"
_V5_ONLY_TOKENIZER_CLASSES = {"TokenizersBackend"}
# Keys transformers 5 records about how the tokenizer was loaded here; meaningless in another environment.
_LOAD_TIME_KEYS = ("is_local", "local_files_only")


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _write(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def compatible_config(config: dict[str, Any]) -> dict[str, Any]:
    """config.json content with the 4.x spellings added next to the 5.x ones."""
    out = dict(config)
    rope = out.get("rope_parameters")
    if isinstance(rope, dict):
        if "rope_theta" in rope:
            out["rope_theta"] = rope["rope_theta"]
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default" and "rope_scaling" not in out:
            # 4.x: rope_scaling holds the non-default RoPE variant's fields (without rope_theta).
            out["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    if "dtype" in out and "torch_dtype" not in out:
        out["torch_dtype"] = out["dtype"]
    return out


def compatible_tokenizer_config(tok_config: dict[str, Any], chat_template: str | None) -> dict[str, Any]:
    """tokenizer_config.json content that 4.x loads as a fast tokenizer with the same chat template."""
    out = {k: v for k, v in tok_config.items() if k not in _LOAD_TIME_KEYS}
    if out.get("tokenizer_class") in _V5_ONLY_TOKENIZER_CLASSES or not out.get("tokenizer_class"):
        out["tokenizer_class"] = LEGACY_TOKENIZER_CLASS
    extra = out.get("extra_special_tokens")
    if isinstance(extra, list):
        # 4.x reads a list of additional special tokens only under this name.
        out.pop("extra_special_tokens")
        merged = list(out.get("additional_special_tokens") or [])
        out["additional_special_tokens"] = merged + [t for t in extra if t not in merged]
    if chat_template and "chat_template" not in out:
        # 4.4x before 4.51 reads the template only from here; 5.x prefers chat_template.jinja when both exist.
        out["chat_template"] = chat_template
    return out


def make_folder_compatible(folder: Path) -> None:
    """Rewrite config.json / tokenizer_config.json in `folder` so transformers 4.4x and 5.x read the same model."""
    config_path = folder / "config.json"
    if config_path.is_file():
        _write(config_path, compatible_config(_read(config_path)))
    tok_path = folder / "tokenizer_config.json"
    if tok_path.is_file():
        jinja = folder / "chat_template.jinja"
        template = jinja.read_text(encoding="utf-8") if jinja.is_file() else None
        _write(tok_path, compatible_tokenizer_config(_read(tok_path), template))


def check_folder_compatible(folder: Path) -> list[str]:
    """Problems transformers 4.4x would have with `folder`, found by reading its files the way 4.x does."""
    problems = []
    config = _read(folder / "config.json")
    rope = config.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope:
        # 4.x LlamaConfig/Qwen2Config: rope_theta=10000.0 unless config.json has it at the top level.
        if config.get("rope_theta", 10000.0) != rope["rope_theta"]:
            problems.append(
                f"config.json: 4.x would use rope_theta={config.get('rope_theta', 10000.0)}, "
                f"the model has {rope['rope_theta']}"
            )
    tok_path = folder / "tokenizer_config.json"
    if tok_path.is_file():
        tok = _read(tok_path)
        if tok.get("tokenizer_class") in _V5_ONLY_TOKENIZER_CLASSES:
            problems.append(f"tokenizer_config.json: tokenizer_class {tok['tokenizer_class']!r} does not exist in 4.x")
        if isinstance(tok.get("extra_special_tokens"), list):
            problems.append("tokenizer_config.json: extra_special_tokens is a list; 4.x expects a dict")
        if (folder / "chat_template.jinja").is_file() and "chat_template" not in tok:
            problems.append("tokenizer_config.json: no chat_template (4.4x before 4.51 reads it only from here)")
    return problems
