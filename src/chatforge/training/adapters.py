"""Choosing which parameters train: full fine-tuning, freezing (last/first N layers or named modules), or LoRA/DoRA.

LoRA goes through peft (`LoraConfig`, `get_peft_model`); full and freeze modes only flip `requires_grad`, so the
saved result is a plain HF model. Methods chatforge does not implement raise NotSupportedError naming what is.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from chatforge.errors import ChatforgeError, NotSupportedError
from chatforge.training.config import PeftConfig
from chatforge.training.speedups import decoder_layers

SUPPORTED = ("full", "freeze", "lora")
# Names users bring from other toolkits; each gets a precise message instead of a generic "bad choice".
_UNSUPPORTED = {
    "qlora": "QLoRA (4-bit base weights) is not supported; use finetuning: lora (optionally use_dora: true)",
    "dora": "DoRA is a LoRA flag here: use finetuning: lora with peft.use_dora: true",
    "prefix": "prefix tuning is not supported",
    "prefix_tuning": "prefix tuning is not supported",
    "prompt": "prompt tuning is not supported",
    "prompt_tuning": "prompt tuning is not supported",
    "p_tuning": "P-tuning is not supported",
    "ptuning": "P-tuning is not supported",
    "adalora": "AdaLoRA is not supported",
    "ia3": "IA3 is not supported",
}


@dataclass
class TrainableSummary:
    trainable: int
    total: int
    method: str

    def describe(self) -> str:
        pct = 100.0 * self.trainable / max(1, self.total)
        return f"{self.method}: {self.trainable:,} trainable of {self.total:,} parameters ({pct:.2f}%)"


def apply_finetuning(
    model: nn.Module, cfg: PeftConfig, extra_modules_to_save: tuple[str, ...] = ()
) -> tuple[nn.Module, TrainableSummary]:
    """Return the model to train (a PeftModel for LoRA) with exactly the configured parameters requiring grad.

    `extra_modules_to_save` are trained in full beside an adapter (embeddings of newly added marker tokens)."""
    method = cfg.finetuning.lower()
    if method in _UNSUPPORTED:
        raise NotSupportedError(f"peft.finetuning={cfg.finetuning!r}: {_UNSUPPORTED[method]}; supported: {SUPPORTED}")
    if method not in SUPPORTED:
        raise ChatforgeError(f"peft.finetuning={cfg.finetuning!r} is unknown; choose one of {', '.join(SUPPORTED)}")
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    elif method == "freeze":
        _freeze(model, cfg)
    else:
        model = _lora(model, cfg, extra_modules_to_save)
    return model, count_parameters(model, method)


def count_parameters(model: nn.Module, method: str) -> TrainableSummary:
    # Tied weights appear once in parameters(), so these counts are honest for tied embeddings too.
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return TrainableSummary(trainable, total, method)


def _freeze(model: nn.Module, cfg: PeftConfig) -> None:
    for p in model.parameters():
        p.requires_grad_(False)
    layers = decoder_layers(model)
    n = min(cfg.freeze_layers, len(layers))
    chosen = list(layers)[-n:] if cfg.freeze_side == "last" else list(layers)[:n]
    if n == 0:
        chosen = []
    for layer in chosen:
        for p in layer.parameters():
            p.requires_grad_(True)
    unmatched = []
    for pattern in cfg.trainable_modules:
        hits = [p for name, p in model.named_parameters() if pattern in name]
        if not hits:
            unmatched.append(pattern)
        for p in hits:
            p.requires_grad_(True)
    if unmatched:
        raise ChatforgeError(f"peft.trainable_modules: no parameter name contains {unmatched}")
    if not any(p.requires_grad for p in model.parameters()):
        raise ChatforgeError(
            "freeze fine-tuning left nothing trainable: set peft.freeze_layers > 0 or trainable_modules"
        )


def _lora(model: nn.Module, cfg: PeftConfig, extra_modules_to_save: tuple[str, ...] = ()) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    targets = cfg.target_modules
    # peft expects the string "all-linear", not a one-element list, to select every linear layer but the head.
    target: str | list[str] = "all-linear" if targets == ["all-linear"] or targets == "all-linear" else list(targets)
    lora = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=target,
        use_dora=cfg.use_dora,
        modules_to_save=list(dict.fromkeys([*cfg.modules_to_save, *extra_modules_to_save])) or None,
        task_type="CAUSAL_LM",
        bias="none",
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as err:  # peft reports unknown target module names as ValueError
        raise ChatforgeError(f"peft.target_modules={targets}: {err}") from err
