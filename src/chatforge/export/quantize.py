"""Weight-only int8 / int4 HF folders with torchao, saved as safetensors that `from_pretrained` loads back.

    chatforge export --model M --adapter A --output exported/int8 --quantize int8

The merged model is saved unquantized to a scratch folder, reloaded through transformers' `TorchAoConfig` (so the
saved `config.json` carries the `quantization_config` transformers needs to load it back), and saved again. Every
Linear layer except the output head is quantized; embeddings and norms keep the compute dtype (bfloat16).

- int8: torchao `Int8WeightOnlyConfig` (per-channel int8 weights).
- int4: torchao `IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(g))`, g = the largest of 128/64/32
  that divides every layer's input size. This is torchao's format that runs on CPU; it stores each 4-bit value in an
  int8 container, so the file is no smaller than int8 (the 4-bit rounding, and its perplexity cost, are real). For a
  small 4-bit file use `--gguf q4_0`.

torchao is an optional dependency: `pip install 'chatforge[quantize]'`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from chatforge.errors import ChatforgeError, NotSupportedError
from chatforge.export.compat import make_folder_compatible

SCHEMES = ("int8", "int4")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


def require_torchao() -> None:
    """NotSupportedError naming the install command when torchao is missing."""
    try:
        import torchao  # noqa: F401
    except ImportError:
        raise NotSupportedError(
            "--quantize int8/int4 needs torchao: pip install 'torchao>=0.18,<0.19' (or chatforge[quantize])"
        ) from None


def int4_group_size(config: dict) -> int:
    """The largest group size of 128 / 64 / 32 that divides every Linear layer's input width."""
    heads = config.get("num_attention_heads") or 1
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    widths = {config["hidden_size"], config.get("intermediate_size") or config["hidden_size"], heads * head_dim}
    for size in (128, 64, 32):
        if all(w % size == 0 for w in widths):
            return size
    raise NotSupportedError(f"int4: layer widths {sorted(widths)} are not multiples of 32; use --quantize int8")


def torchao_config(scheme: str, config: dict):
    """transformers' TorchAoConfig for `scheme`."""
    require_torchao()
    import torch
    from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerGroup
    from transformers import TorchAoConfig

    if scheme == "int8":
        return TorchAoConfig(quant_type=Int8WeightOnlyConfig())
    if scheme == "int4":
        group = int4_group_size(config)
        return TorchAoConfig(quant_type=IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group)))
    raise ChatforgeError(f"unknown quantization {scheme!r}; choose one of {', '.join(SCHEMES)}")


def quantize_folder(source: Path, target: Path, scheme: str) -> None:
    """Write `source` (an unquantized HF folder) into `target` with weight-only `scheme` weights."""
    import torch
    from transformers import AutoModelForCausalLM

    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    model = AutoModelForCausalLM.from_pretrained(
        str(source), dtype=torch.bfloat16, quantization_config=torchao_config(scheme, config), local_files_only=True
    )
    model.save_pretrained(target, safe_serialization=True)
    for name in _TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)
    make_folder_compatible(target)


def load_quantized(folder: str | Path):
    """A quantized folder loaded back for use (torchao must be installed)."""
    require_torchao()
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True).eval()
