"""Named Llama sizes for pretraining from scratch: `model.init.preset: llama-43m | llama-92m | llama-124m`.

    fields = apply_preset({"preset": "llama-43m", "num_hidden_layers": 6}, vocab_size=len(tokenizer))
    count_parameters(fields, vocab_size)  # exact, equals LlamaForCausalLM(LlamaConfig(**fields)).num_parameters()

A preset fills every shape field of a LlamaConfig; any field given next to `preset` overrides the preset's value.
`vocab_multiple` pads the vocabulary. The name is the parameter count at each preset's reference vocabulary (a real count depends on the tokenizer, so
`count_parameters` reports it and `describe` prints it):

- llama-43m: dim 256, 12 layers, 8 heads, untied embeddings: seed 004's small Chinese Llama; 42.8M at a 64,793-token
  vocabulary (ChatGLM2-sized, what Chinese baby-Llama setups use).
- llama-92m: dim 512, 8 layers, 8 heads, untied embeddings: the next Chinese baby-Llama size; 91.6M at 64,793.
- llama-124m: dim 768, 12 layers, 12 heads, tied embeddings: GPT-2 small's shape (the llm.c comparison point);
  123.6M at GPT-2's 50,257 tokens.

The feed-forward width is the SwiGLU rule of thumb 2/3 * 4 * dim rounded up to a multiple of 32 (704, 1376, 2048), so
the MLP costs about what a 4 * dim GELU MLP costs. Heads are 64 or 32 wide, no grouped-query attention (these sizes
are compute-bound, not KV-cache-bound).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from chatforge.errors import ChatforgeError


def swiglu_hidden(dim: int, multiple_of: int = 32) -> int:
    """The SwiGLU feed-forward width for model width `dim`: 2/3 of 4*dim, rounded up to `multiple_of`."""
    hidden = int(2 * 4 * dim / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def _shape(dim: int, layers: int, heads: int, tied: bool, max_positions: int) -> dict[str, Any]:
    return {
        "hidden_size": dim,
        "intermediate_size": swiglu_hidden(dim),
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "head_dim": dim // heads,
        "max_position_embeddings": max_positions,
        "tie_word_embeddings": tied,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "attention_bias": False,
        "mlp_bias": False,
    }


PRESETS: dict[str, dict[str, Any]] = {
    "llama-43m": _shape(256, 12, 8, tied=False, max_positions=2048),
    "llama-92m": _shape(512, 8, 8, tied=False, max_positions=2048),
    "llama-124m": _shape(768, 12, 12, tied=True, max_positions=2048),
}
# The vocabulary each preset's name is counted at (see the module docstring).
REFERENCE_VOCAB = {"llama-43m": 64793, "llama-92m": 64793, "llama-124m": 50257}


def apply_preset(init: Mapping[str, Any], vocab_size: int) -> dict[str, Any]:
    """Llama config fields for a `model.init` section: the preset's shape (when `preset` is given), then every other
    field of `init` on top, and `vocab_size` unless `init` sets it. The result has no `preset` key.

    `vocab_multiple: 64` (also popped) rounds the tokenizer's size up to a multiple (50257 -> 50304 for GPT-2's
    vocabulary), which makes the embedding and output-head matrices faster on GPUs."""
    fields = dict(init)
    name = fields.pop("preset", None)
    multiple = fields.pop("vocab_multiple", None)
    out: dict[str, Any] = {}
    if name is not None:
        key = str(name).strip().lower()
        if key not in PRESETS:
            close = difflib.get_close_matches(key, list(PRESETS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ChatforgeError(
                f"model.init.preset: unknown preset {name!r}{hint}; choose one of: {', '.join(PRESETS)}"
            )
        out.update(PRESETS[key])
        # A user who changes the width or head count without giving head_dim means the usual dim / heads.
        if "head_dim" not in fields and ("hidden_size" in fields or "num_attention_heads" in fields):
            out.pop("head_dim")
        if "num_key_value_heads" not in fields and "num_attention_heads" in fields:
            out.pop("num_key_value_heads")
    out.update(fields)
    if multiple is not None and (not isinstance(multiple, int) or isinstance(multiple, bool) or multiple < 1):
        raise ChatforgeError(f"model.init.vocab_multiple must be a positive integer, got {multiple!r}")
    # Rows past the tokenizer are never produced as inputs; they only round the output head to a GPU-friendly width.
    step = int(multiple or 1)
    out.setdefault("vocab_size", -(-int(vocab_size) // step) * step)
    _check_shape(out, name)
    return out


def _check_shape(fields: Mapping[str, Any], preset: str | None) -> None:
    where = f"model.init (preset {preset})" if preset else "model.init"
    dim, heads = fields.get("hidden_size"), fields.get("num_attention_heads")
    kv = fields.get("num_key_value_heads", heads)
    if dim is None or heads is None:
        return
    if "head_dim" not in fields and dim % heads:
        raise ChatforgeError(f"{where}: hidden_size={dim} is not divisible by num_attention_heads={heads}")
    if kv and heads % kv:
        raise ChatforgeError(f"{where}: num_attention_heads={heads} is not a multiple of num_key_value_heads={kv}")


def count_parameters(fields: Mapping[str, Any], vocab_size: int | None = None) -> int:
    """Exact parameter count of `LlamaForCausalLM` with these config fields (computed, nothing is allocated).

    `vocab_size` defaults to `fields["vocab_size"]`. Missing fields take LlamaConfig's defaults."""
    from transformers import LlamaConfig

    defaults = LlamaConfig()
    get = lambda name: fields[name] if name in fields else getattr(defaults, name)  # noqa: E731
    vocab = int(vocab_size if vocab_size is not None else get("vocab_size"))
    dim, ffn, layers = int(get("hidden_size")), int(get("intermediate_size")), int(get("num_hidden_layers"))
    heads = int(get("num_attention_heads"))
    kv = int(fields.get("num_key_value_heads") or heads)
    head_dim = int(fields.get("head_dim") or dim // heads)
    attn_bias, mlp_bias = bool(get("attention_bias")), bool(get("mlp_bias"))
    attention = dim * heads * head_dim + 2 * dim * kv * head_dim + heads * head_dim * dim
    if attn_bias:
        attention += heads * head_dim + 2 * kv * head_dim + dim
    mlp = 3 * dim * ffn + ((2 * ffn + dim) if mlp_bias else 0)
    per_layer = attention + mlp + 2 * dim  # two RMSNorm weights
    embeddings = vocab * dim * (1 if get("tie_word_embeddings") else 2)
    return layers * per_layer + embeddings + dim  # + the final norm


def describe(fields: Mapping[str, Any], vocab_size: int | None = None, preset: str | None = None) -> str:
    """One line for the user, e.g. `llama-43m: 12 layers, dim 256, 8 heads, vocab 32000: 26.4M parameters (...)`."""
    vocab = int(vocab_size if vocab_size is not None else fields["vocab_size"])
    total = count_parameters(fields, vocab)
    emb = vocab * int(fields["hidden_size"]) * (1 if fields.get("tie_word_embeddings") else 2)
    name = f"{preset}: " if preset else ""
    return (
        f"{name}{fields['num_hidden_layers']} layers, dim {fields['hidden_size']}, {fields['num_attention_heads']} "
        f"heads, ffn {fields['intermediate_size']}, vocab {vocab}: {total / 1e6:.1f}M parameters "
        f"({(total - emb) / 1e6:.1f}M without embeddings)"
    )
