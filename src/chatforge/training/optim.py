"""Optimizer and learning-rate schedule for a run: AdamW (fused where the device has it) with warmup + decay."""

from __future__ import annotations

import torch

from chatforge.errors import ChatforgeError


def make_optimizer(model: torch.nn.Module, tcfg, lora_plus_ratio: float = 0.0) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; norms and biases (1-D tensors) are not weight-decayed. With
    `lora_plus_ratio` > 0 (`peft.lora_plus_ratio`) the LoRA B matrices get their own group at learning_rate * ratio
    (LoRA+)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ChatforgeError("the model has no trainable parameters")
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": tcfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if lora_plus_ratio:
        # LoRA+ (Hayou et al. 2024): the B matrices learn `ratio` times faster than A. The scheduler scales every
        # group's lr by the same factor, so the ratio holds through warmup and decay.
        b_ids = {id(p) for name, p in model.named_parameters() if p.requires_grad and "lora_B" in name}
        if not b_ids:
            raise ChatforgeError("peft.lora_plus_ratio is set but the model has no lora_B matrices (LoRA only)")
        groups = [{**g, "params": [p for p in g["params"] if id(p) not in b_ids]} for g in groups]
        b = [p for p in params if id(p) in b_ids]
        groups.append({"params": b, "weight_decay": tcfg.weight_decay, "lr": tcfg.learning_rate * lora_plus_ratio})
    groups = [g for g in groups if g["params"]]
    kw = dict(lr=tcfg.learning_rate, betas=(tcfg.adam_beta1, tcfg.adam_beta2), eps=tcfg.adam_eps)
    if tcfg.fused_optimizer and params[0].device.type == "cuda":
        try:
            return torch.optim.AdamW(groups, fused=True, **kw)
        except (RuntimeError, ValueError):  # a dtype without a fused kernel: use the foreach version
            pass
    return torch.optim.AdamW(groups, **kw)


def make_scheduler(optimizer: torch.optim.Optimizer, tcfg, total_steps: int):
    """cosine | linear | constant, after `warmup_steps` (or `warmup_ratio` of the run) of linear warmup."""
    from transformers import get_scheduler

    warmup = tcfg.warmup_steps or int(round(tcfg.warmup_ratio * total_steps))
    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[tcfg.scheduler]
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
