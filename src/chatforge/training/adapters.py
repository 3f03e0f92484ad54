"""Choosing which parameters train: full fine-tuning, freezing (last/first N layers or named modules), LoRA (DoRA,
rsLoRA, PiSSA init; LoRA+ is a learning-rate group in `training.optim`) or a virtual-token method (prefix tuning /
P-Tuning v2, prompt tuning, P-tuning).

The adapter methods go through peft (`get_peft_model` with the method's config), so the saved adapter is one plain
`PeftModel.from_pretrained` loads; full and freeze modes only flip `requires_grad`, so the saved result is a plain HF
model. Methods chatforge does not implement raise NotSupportedError naming why.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from chatforge.errors import ChatforgeError, NotSupportedError
from chatforge.training.config import PeftConfig
from chatforge.training.speedups import decoder_layers

# Methods that add virtual tokens (or prefix key/values) inside PeftModel.forward: packed rows cannot carry them.
VIRTUAL_TOKEN_METHODS = ("prefix", "prompt", "p_tuning")
SUPPORTED = ("full", "freeze", "lora", *VIRTUAL_TOKEN_METHODS)
# Names users bring from other toolkits; each gets a precise message instead of a generic "bad choice".
_UNSUPPORTED = {
    "qlora": "QLoRA (a 4-bit NF4 base) needs a CUDA device and the bitsandbytes package, which chatforge does not "
    "wire up yet; use finetuning: lora (optionally use_dora: true)",
    "dora": "DoRA is a LoRA flag here: use finetuning: lora with peft.use_dora: true",
    "prefix_tuning": "the name is finetuning: prefix",
    "prompt_tuning": "the name is finetuning: prompt",
    "ptuning": "the name is finetuning: p_tuning",
    "adalora": "AdaLoRA needs model.base_model.update_and_allocate(step) after every optimizer step (before the "
    "gradients are zeroed) and its rank-allocator state (sensitivity EMAs) saved in checkpoints for exact resume; "
    "the training loop has no post-step hook and checkpoints have no slot for it yet",
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
    model: nn.Module,
    cfg: PeftConfig,
    extra_modules_to_save: tuple[str, ...] = (),
    tokenizer=None,
    *,
    head: str | None = None,
) -> tuple[nn.Module, TrainableSummary]:
    """Return the model to train (a PeftModel for the adapter methods) with exactly the configured parameters
    requiring grad.

    `extra_modules_to_save` are trained in full beside an adapter (embeddings of newly added marker tokens).
    `tokenizer` turns `peft.prompt_init_text` into token ids (prompt tuning). `head="score"` (a reward model): LoRA
    uses peft's `SEQ_CLS` task, which trains the score head in full beside the adapter and saves it with it."""
    method = cfg.finetuning.lower()
    if method in _UNSUPPORTED:
        raise NotSupportedError(f"peft.finetuning={cfg.finetuning!r}: {_UNSUPPORTED[method]}; supported: {SUPPORTED}")
    if method not in SUPPORTED:
        raise ChatforgeError(f"peft.finetuning={cfg.finetuning!r} is unknown; choose one of {', '.join(SUPPORTED)}")
    if cfg.lora_plus_ratio and method != "lora":
        raise ChatforgeError(f"peft.lora_plus_ratio applies to finetuning: lora, not {cfg.finetuning!r}")
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    elif method == "freeze":
        _freeze(model, cfg)
        if head is not None:  # a new score head starts random: it always trains
            for name, p in model.named_parameters():
                if name.split(".")[0] == head:
                    p.requires_grad_(True)
    elif method == "lora":
        model = _lora(model, cfg, extra_modules_to_save, task_type="CAUSAL_LM" if head is None else "SEQ_CLS")
    elif head is not None:
        raise NotSupportedError(
            f"peft.finetuning={cfg.finetuning}: a reward model (score head) trains with full, freeze or lora only"
        )
    else:
        model = _virtual_tokens(model, cfg, method, extra_modules_to_save, tokenizer)
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


def _lora(
    model: nn.Module, cfg: PeftConfig, extra_modules_to_save: tuple[str, ...] = (), task_type: str = "CAUSAL_LM"
) -> nn.Module:
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
        use_rslora=cfg.use_rslora,
        init_lora_weights={"default": True, "gaussian": "gaussian", "pissa": "pissa"}[cfg.init_lora_weights],
        modules_to_save=list(dict.fromkeys([*cfg.modules_to_save, *extra_modules_to_save])) or None,
        task_type=task_type,  # SEQ_CLS adds the score head to modules_to_save (trained in full, saved)
        bias="none",
    )
    try:
        model = get_peft_model(model, lora)
    except ValueError as err:  # peft reports unknown target module names as ValueError
        raise ChatforgeError(f"peft.target_modules={targets}: {err}") from err
    return model


def _virtual_tokens(
    model: nn.Module, cfg: PeftConfig, method: str, extra_modules_to_save: tuple[str, ...], tokenizer
) -> nn.Module:
    """Prefix tuning (key/values on every layer: P-Tuning v2), prompt tuning or P-tuning, through peft."""
    from peft import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, get_peft_model

    common = dict(task_type="CAUSAL_LM", num_virtual_tokens=cfg.num_virtual_tokens)
    if method == "prefix":
        pcfg = PrefixTuningConfig(
            prefix_projection=cfg.prefix_projection, encoder_hidden_size=cfg.encoder_hidden_size, **common
        )
    elif method == "prompt":
        pcfg = PromptTuningConfig(**common)
    else:
        pcfg = PromptEncoderConfig(
            encoder_reparameterization_type=cfg.encoder_type, encoder_hidden_size=cfg.encoder_hidden_size, **common
        )
    if extra_modules_to_save:
        pcfg.modules_to_save = list(extra_modules_to_save)
    model = get_peft_model(model, pcfg)
    if method == "prompt" and cfg.prompt_init_text is not None:
        _init_prompt_from_text(model, cfg, tokenizer)
    return model


def _init_prompt_from_text(model: nn.Module, cfg: PeftConfig, tokenizer) -> None:
    """Soft tokens start as the embeddings of `prompt_init_text`, repeated or cut to `num_virtual_tokens`.

    Done here with the run's own tokenizer (peft's TEXT init would load a tokenizer by name itself)."""
    import torch

    if tokenizer is None:
        raise ChatforgeError("peft.prompt_init_text needs the run's tokenizer")
    ids = tokenizer(cfg.prompt_init_text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ChatforgeError(f"peft.prompt_init_text={cfg.prompt_init_text!r} tokenizes to nothing")
    n = cfg.num_virtual_tokens
    ids = (ids * (n // len(ids) + 1))[:n]
    embed = model.get_input_embeddings()
    with torch.no_grad():
        init = embed(torch.tensor(ids, device=embed.weight.device)).detach().clone().float()
        model.prompt_encoder["default"].embedding.weight.copy_(init)
