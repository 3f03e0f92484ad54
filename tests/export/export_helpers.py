"""Tiny base model + LoRA adapter folders for the export tests (built in code, in well under a second)."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model

from chatforge.models.tiny import tiny_llama, tiny_tokenizer
from chatforge.templates import prepare_tokenizer


def make_base(folder, dtype=torch.float32, seed=0, template="chatml", style="bytelevel", **config):
    """A tiny Llama (rope_theta 100000, like SmolLM2) + tokenizer with our chat template, saved to `folder`."""
    tok = tiny_tokenizer(style=style)
    prepare_tokenizer(tok, template)
    rope = {"rope_type": "default", "rope_theta": 100000.0}
    model = tiny_llama(len(tok), seed=seed, rope_parameters=rope, **config)
    model.to(dtype).save_pretrained(folder)
    tok.save_pretrained(folder)
    return model, tok


def make_adapter(base_model, tok, folder, trained=True, seed=1):
    """A LoRA adapter on q/v/down; `trained=False` keeps peft's init (B = 0: merging changes nothing)."""
    torch.manual_seed(seed)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=not trained)
    peft_model = get_peft_model(base_model, cfg)
    peft_model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return peft_model
