"""KV-cached decoding for PEFT's virtual-token adapters (prefix tuning, prompt tuning, P-tuning), and the forward
keyword for the KV cache.

`PeftModel.forward` adds the adapter's virtual tokens on *every* call: prompt tuning and P-tuning prepend their
embeddings to `inputs_embeds`, prefix tuning replaces `past_key_values` with the learned prefix. That is right for
training (one call per sequence) and wrong for a decode loop that feeds one token at a time against a cache: each
step would see the virtual tokens again (or lose the cache). So the engine calls the *base* model itself and puts the
virtual tokens in exactly once, at prefill:

- prompt / P-tuning: the prompt encoder's output is prepended to the prompt's embeddings; they become the first
  `V` columns of the KV cache;
- prefix: the learned key/values are written into a fresh cache as its first `V` columns.

Either way the cache row is `[virtual V][left padding][prompt]` with an attention mask of ones over the virtual
columns, and position ids are the running count of real columns minus one: the virtual tokens (or prefix slots) take
positions 0..V-1 and the prompt V.., exactly what `PeftModel.forward` gives an unpadded row (its base model counts
positions from the cache length / the prepended embeddings). Decode steps then need nothing special.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch


def base_model(model) -> Any:
    """The transformers model under a PeftModel (LoRA layers are injected in place, so they still apply)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def cache_keyword(model) -> str:
    """The forward keyword for a KV cache: `cache` where the installed transformers has it (5.x renamed it; the old
    `past_key_values` is removed in 5.40), else `past_key_values`. Inspected once per engine, on the base model's own
    forward (a PeftModel's forward takes **kwargs and would hide it)."""
    params = inspect.signature(type(base_model(model)).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def output_cache(out) -> Any:
    """The cache a forward returned, under either name (reading `past_key_values` warns in transformers 5.x)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


class VirtualTokens:
    """The virtual tokens of the active prompt-learning adapter of a PeftModel, computed once (inference weights).

    `kind` is "prefix" (learned key/values per layer) or "embeds" (prompt / P-tuning: input embeddings)."""

    def __init__(self, model):
        cfg = model.active_peft_config
        self.n = int(cfg.num_virtual_tokens)
        self.kind = "prefix" if str(cfg.peft_type).upper().endswith("PREFIX_TUNING") else "embeds"
        with torch.inference_mode():
            prompt = model.get_prompt(batch_size=1)
        if self.kind == "prefix":
            # A Cache (DynamicCache for decoder-only models) holding [1, kv_heads, V, head_dim] per layer.
            self.layers = [(layer.keys.clone(), layer.values.clone()) for layer in prompt.layers]
        else:
            self.embeds = prompt.detach().clone()  # [1, V, hidden]

    @staticmethod
    def of(model) -> VirtualTokens | None:
        """The model's virtual tokens, or None when it is not a prompt-learning PeftModel."""
        cfg = getattr(model, "active_peft_config", None)
        if cfg is None or not getattr(cfg, "is_prompt_learning", False):
            return None
        return VirtualTokens(model)

    def fill_prefix(self, cache, batch: int) -> None:
        """Write the prefix key/values into an empty cache (its first V columns) for `batch` rows."""
        for i, (k, v) in enumerate(self.layers):
            cache.update(k.expand(batch, -1, -1, -1).contiguous(), v.expand(batch, -1, -1, -1).contiguous(), i)

    def prefill_inputs(self, model, ids: torch.Tensor, mask: torch.Tensor, cache) -> tuple[dict, torch.Tensor]:
        """Forward kwargs for a left-padded prefill of `ids` [B, W] with `mask` [B, W] into an empty `cache`, and the
        mask over the cache columns ([B, V + W]: ones over the virtual columns)."""
        batch = ids.shape[0]
        full = torch.cat([torch.ones((batch, self.n), dtype=mask.dtype, device=mask.device), mask], dim=1)
        positions = (full.cumsum(-1) - 1).clamp(min=0)
        if self.kind == "prefix":
            self.fill_prefix(cache, batch)
            return {"input_ids": ids, "attention_mask": full, "position_ids": positions[:, self.n :]}, full
        embed = base_model(model).get_input_embeddings()(ids)
        virtual = self.embeds.to(device=embed.device, dtype=embed.dtype).expand(batch, -1, -1)
        kwargs = {
            "inputs_embeds": torch.cat([virtual, embed], dim=1),
            "attention_mask": full,
            "position_ids": positions,
        }
        return kwargs, full
