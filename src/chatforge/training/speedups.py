"""Training speed switches, each safe by default and a no-op (or plain fallback) where it cannot apply.

- `liger`: Liger Kernel's fused RMSNorm / RoPE / SwiGLU patched into the model instance (only with CUDA and the
  `liger_kernel` package importable; the cross-entropy stays ours, see `losses.py`).
- `compile_layers`: `torch.compile` of each decoder layer (identical layers share one compiled graph), CUDA only.
- `checkpoint_ratio`: activation checkpointing of that fraction of the decoder layers (0 = none, 1 = all): the
  selective middle ground trades memory for recompute one layer at a time, and works with compile and peft.
- `dynamic_shapes`: compile for varying batch shapes from the start (padded batches) instead of recompiling when
  the second shape arrives.

`apply_speedups(model, cfg)` returns the list of what was applied, so runs record what really happened.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from chatforge.errors import ChatforgeError


@dataclass
class SpeedConfig:
    """The switches; the defaults are what is safe everywhere (CUDA-only ones turn themselves off on CPU)."""

    liger: bool = False
    compile_layers: bool = False
    checkpoint_ratio: float = 0.0
    dynamic_shapes: bool = False

    def __post_init__(self):
        if not 0.0 <= self.checkpoint_ratio <= 1.0:
            raise ChatforgeError(f"train.checkpoint_ratio must be between 0 and 1, not {self.checkpoint_ratio}")


def _base(model: torch.nn.Module) -> torch.nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The repeated blocks of a causal LM (Llama family: `model.model.layers`), also under peft."""
    layers = getattr(_base(model).get_decoder(), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ChatforgeError(f"cannot find the decoder layers of {type(_base(model)).__name__}")
    return layers


def on_cuda(model: torch.nn.Module) -> bool:
    return next(model.parameters()).device.type == "cuda"


def apply_liger(model: torch.nn.Module) -> bool:
    """Patches Liger's RMSNorm/RoPE/SwiGLU into this model instance; False (nothing changed) without CUDA or liger.

    Call before peft wrapping or on the peft model: liger patches module forwards, which LoRA layers keep.
    """
    if not on_cuda(model) or importlib.util.find_spec("liger_kernel") is None:
        return False
    from liger_kernel.transformers.monkey_patch import _apply_liger_kernel_to_instance

    base = _base(model)
    _apply_liger_kernel_to_instance(
        model=base, rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False
    )
    return True


def _checkpointed(forward, layer, *args, **kwargs):
    return checkpoint(forward, layer, *args, use_reentrant=False, **kwargs)


def wrap_layers(
    model: torch.nn.Module, *, checkpoint_ratio: float = 0.0, compile: bool = False, dynamic: bool = False
) -> tuple[int, bool]:
    """Activation checkpointing on round(ratio * L) layers (spread evenly) and/or torch.compile of every layer.

    Each layer's forward is replaced in place by the class's forward called through one shared compiled function
    (identical layers then share one graph instead of compiling L times) and, for the chosen layers, through
    non-reentrant checkpointing outside it. Parameter names, hence saved adapters, do not change. Compile only
    happens on CUDA. Returns (layers checkpointed, compiled or not).
    """
    layers = decoder_layers(model)
    n = round(checkpoint_ratio * len(layers))
    chosen = {int(i * len(layers) / n) for i in range(n)} if n else set()
    compile = compile and on_cuda(model)
    if not chosen and not compile:
        return 0, False
    forward = type(layers[0]).forward
    if compile:
        # Guards may still specialise per layer; allow one entry per layer rather than falling back to eager at 8.
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 2 * len(layers))
        forward = torch.compile(forward, dynamic=True if dynamic else None)
    for i, layer in enumerate(layers):
        if i in chosen:
            layer.forward = functools.partial(_checkpointed, forward, layer)
        elif compile:
            layer.forward = functools.partial(forward, layer)
    if chosen and hasattr(_base(model), "enable_input_require_grads"):
        # With frozen embeddings (LoRA) the checkpointed layers' inputs must carry grad for the recompute to count.
        _base(model).enable_input_require_grads()
    return len(chosen), compile


def apply_speedups(model: torch.nn.Module, cfg: SpeedConfig) -> list[str]:
    """Applies the configured switches in the order that composes (liger, checkpointing, compile)."""
    applied = []
    if cfg.liger and apply_liger(model):
        applied.append("liger")
    n_ckpt, compiled = wrap_layers(
        model, checkpoint_ratio=cfg.checkpoint_ratio, compile=cfg.compile_layers, dynamic=cfg.dynamic_shapes
    )
    if n_ckpt:
        applied.append(f"checkpoint {n_ckpt}/{len(decoder_layers(model))} layers")
    if compiled:
        applied.append("compile_layers")
    return applied
