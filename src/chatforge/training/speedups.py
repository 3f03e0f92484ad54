"""Training speed switches, each safe by default and a no-op (or plain fallback) where it cannot apply.

- `liger`: Liger Kernel's fused RMSNorm / RoPE / SwiGLU patched into the model instance (only with CUDA and the
  `liger_kernel` package importable; the cross-entropy stays ours, see `losses.py`).
- `compile_layers`: `torch.compile` of each decoder layer (identical layers share one compiled graph), CUDA only.
- `checkpoint_ratio`: activation checkpointing of that fraction of the decoder layers (0 = none, 1 = all): the
  selective middle ground trades memory for recompute one layer at a time, and works with compile and peft.
- `dynamic_shapes`: compile for varying batch shapes from the start (padded batches) instead of recompiling when
  the second shape arrives. Three things still made padded batches recompile after warm-up, and each is handled
  here or in the batch plan: (a) with SDPA, transformers passes no mask at all (`None`, "use is_causal") for a batch
  without padding, a different graph input than the 4D mask of every padded batch, so a compiled layer gets an
  explicit causal mask instead (equivalent for SDPA; eager always gets a mask, flex keeps its BlockMask);
  (b) a batch of one row specialises the batch dimension (dynamo treats sizes 0 and 1 as constants), so the plan
  never makes one (`training.batching`); (c) "duck sizing" gives equal sizes one symbol at the first trace, so a
  first batch whose length equals the hidden or head size (64, 128, ...) pins the length to a constant; the layers
  trace with duck sizing off.

`apply_speedups(model, cfg)` returns the list of what was applied, so runs record what really happened.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass

import torch
import torch.fx.experimental._config as fx_config
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


def explicit_causal_mask(hidden_states: torch.Tensor) -> torch.Tensor:
    """The [B, 1, T, T] boolean causal mask (True = may attend) that transformers builds for a padded SDPA batch, for
    a batch it would give none: same rank, dtype and layout, so both kinds of batch run one compiled graph.

    Layout includes being a view: transformers ends with `.expand(...)` of a full-size tensor, and dynamo guards a
    view's base too, so a plain contiguous tensor would still recompile."""
    b, t = hidden_states.shape[:2]
    pos = torch.arange(t, device=hidden_states.device)
    keys = torch.ones((b, 1, 1, t), dtype=torch.bool, device=hidden_states.device)
    return ((pos[:, None] >= pos[None, :]) & keys).expand(b, -1, t, t)


class CompiledLayerCall:
    """Calls one decoder layer through the shared compiled forward so that padded batches keep one graph.

    Records, per input shape (batch x length), how many graphs torch.compile built during calls with it
    (`events`): the run's summary shows which shapes compiled.
    """

    def __init__(self, compiled, events: dict[str, int]):
        self.compiled, self.events = compiled, events

    def __call__(self, layer, hidden_states, *args, **kwargs):
        impl = getattr(getattr(layer, "self_attn", None), "config", None)
        impl = getattr(impl, "_attn_implementation", None)
        cached = any(kwargs.get(k) is not None for k in ("cache", "past_key_values", "past_key_value"))
        if "attention_mask" in kwargs and kwargs["attention_mask"] is None and impl == "sdpa" and not cached:
            # (a): None means "no padding, use is_causal"; an explicit causal mask gives the same attention.
            kwargs["attention_mask"] = explicit_causal_mask(hidden_states)
        from chatforge.training.monitor import compile_count

        before = compile_count()
        # (c): without duck sizing a length equal to a model dimension at the first trace stays symbolic.
        with fx_config.patch(use_duck_shape=False):
            out = self.compiled(layer, hidden_states, *args, **kwargs)
        built = compile_count() - before
        if built:
            # Validation runs without grad, a graph of its own (once per shape kind); kept apart from training's.
            key = "x".join(str(n) for n in hidden_states.shape[:2]) + ("" if torch.is_grad_enabled() else " no_grad")
            self.events[key] = self.events.get(key, 0) + built
        return out


def wrap_layers(
    model: torch.nn.Module,
    *,
    checkpoint_ratio: float = 0.0,
    compile: bool = False,
    dynamic: bool = False,
    compile_on_cpu: bool = False,
    backend: str = "inductor",
) -> tuple[int, bool]:
    """Activation checkpointing on round(ratio * L) layers (spread evenly) and/or torch.compile of every layer.

    Each layer's forward is replaced in place by the class's forward called through one shared compiled function
    (identical layers then share one graph instead of compiling L times) and, for the chosen layers, through
    non-reentrant checkpointing outside it. Parameter names, hence saved adapters, do not change. Compile only
    happens on CUDA unless `compile_on_cpu` (the CPU recompilation tests). Returns (layers checkpointed, compiled or
    not); the compile events per shape are in `compile_events(model)`.
    """
    layers = decoder_layers(model)
    n = round(checkpoint_ratio * len(layers))
    chosen = {int(i * len(layers) / n) for i in range(n)} if n else set()
    compile = compile and (compile_on_cpu or on_cuda(model))
    if not chosen and not compile:
        return 0, False
    forward = type(layers[0]).forward
    if compile:
        # Guards may still specialise per layer; allow one entry per layer rather than falling back to eager at 8.
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 2 * len(layers))
        events: dict[str, int] = {}
        _base(model)._chatforge_compile_events = events
        forward = CompiledLayerCall(torch.compile(forward, dynamic=True if dynamic else None, backend=backend), events)
    for i, layer in enumerate(layers):
        if i in chosen:
            layer.forward = functools.partial(_checkpointed, forward, layer)
        elif compile:
            layer.forward = functools.partial(forward, layer)
    if chosen and hasattr(_base(model), "enable_input_require_grads"):
        # With frozen embeddings (LoRA) the checkpointed layers' inputs must carry grad for the recompute to count.
        _base(model).enable_input_require_grads()
    return len(chosen), compile


def compile_events(model: torch.nn.Module) -> dict[str, int]:
    """Graphs built per layer-input shape ("BxT") since `wrap_layers` compiled this model; {} when not compiled."""
    return dict(getattr(_base(model), "_chatforge_compile_events", {}))


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
