"""The model a recipe trains: the one assembly (`models.assembly`), the fine-tuning method, speed switches, precision.

`prepare_model(cfg)` returns a `TrainModel` with everything the loop needs to know about the model: the module to
train, its tokenizer and template, the device, the autocast policy, the attention kind for packed rows, what was
applied (speedups) and the parameter counts. Nothing in the config is changed on the way.
"""

from __future__ import annotations

import os
import random
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from chatforge.errors import ChatforgeError, NotSupportedError
from chatforge.training.adapters import (
    VIRTUAL_TOKEN_METHODS,
    StepHooks,
    TrainableSummary,
    apply_finetuning,
    count_parameters,
    method_hooks,
)
from chatforge.training.speedups import SpeedConfig, apply_speedups


@dataclass
class TrainModel:
    model: torch.nn.Module
    tokenizer: object
    template: object
    device: torch.device
    trainable: TrainableSummary
    speedups: list[str]
    attention: str  # mask | flex: how packed rows keep their samples apart; causal: rows are one sample (no mask)
    precision: str  # fp32 | bf16 (autocast), resolved from train.precision
    pad_multiple: int  # padded batches round their length up to this
    hooks: StepHooks | None = None  # loop work of the fine-tuning method (AdaLoRA), see adapters.StepHooks

    def autocast(self) -> AbstractContextManager:
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def check_single_process(stage: str | None = None) -> None:
    """For a recipe that has no distributed path: refuse to let every torchrun rank train alone."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1:
        from chatforge.training.recipes import DISTRIBUTED

        what = f"train.stage={stage}" if stage else "this stage"
        raise NotSupportedError(
            f"WORLD_SIZE={world}: {what} does not run on several processes yet (stages that do: "
            f"{', '.join(sorted(DISTRIBUTED))}); run one process (one device)"
        )


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ChatforgeError(f"train.precision=bf16: {torch.cuda.get_device_name(device)} has no bf16 support")
        return precision
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return "bf16" if cuda_bf16 else "fp32"


def avoid_cudnn_attention_backward() -> None:
    """Keep SDPA off its cuDNN kernel for the rest of the process (flash / memory-efficient take over).

    cuDNN's SDPA backward on Hopper (the default backend since torch 2.11) returns NaN in dQ when an explicit
    attention mask is passed, the length is 64 mod 128 and a row's logsumexp is below ln(FLT_MAX) of -88.7
    (pytorch/pytorch#196678). Qwen2.5's massive-activation heads produce such rows, and padded batches (rounded up
    to multiples of 64) hit those lengths: LoRA SFT of Qwen2.5-0.5B stopped at step 2-4 with a NaN gradient norm on an
    H200. The forward is not affected, so inference keeps the default choice."""
    torch.backends.cuda.enable_cudnn_sdp(False)


def prepare_model(cfg, *, head: str | None = None) -> TrainModel:
    """Assemble the model for training and apply `peft`, checkpointing, speedups and the attention choice.

    `head="score"` trains a reward model (the decoder with a scalar score head, see `models.assembly`)."""
    from chatforge.models.assembly import assemble

    tcfg = cfg.train
    if cfg.peft.finetuning.lower() in VIRTUAL_TOKEN_METHODS and tcfg.batching == "packed":
        # Packed rows carry per-sample position_ids and a block-diagonal mask; peft's virtual tokens / prefix
        # key/values are prepended once per row, so every sample after the first would not see them.
        raise ChatforgeError(
            f"peft.finetuning={cfg.peft.finetuning} adds virtual tokens, which packed rows cannot carry: "
            "use train.batching=length_grouped or random"
        )
    if cfg.peft.finetuning.lower() == "prefix" and tcfg.gradient_checkpointing:
        # peft refuses it deep inside get_peft_model; say so before the model loads.
        raise ChatforgeError(
            "peft.finetuning=prefix does not work with train.gradient_checkpointing=true (peft's prefix key/values "
            "bypass the recompute): turn one of them off"
        )
    if tcfg.num_threads:
        torch.set_num_threads(tcfg.num_threads)
    from chatforge.models.assembly import is_reward_model

    if is_reward_model(cfg.model) and head is None:
        raise ChatforgeError(
            f"{cfg.model.adapter or cfg.model.name_or_path} is a reward model (a score head): train.stage=rm continues "
            f"it; stage {tcfg.stage} needs a causal LM"
        )
    if head is not None and cfg.model.adapter is not None and not is_reward_model(cfg.model):
        raise ChatforgeError(
            f"model.adapter={cfg.model.adapter} is a causal-LM adapter; train.stage=rm continues only a reward-model "
            "adapter (peft task_type SEQ_CLS): leave model.adapter unset, or merge the adapter first (chatforge export)"
        )
    seed_everything(tcfg.seed)  # adapter initialisation and dropout draw from the global generators
    parts = assemble(
        cfg.model, cfg.template, purpose="train", finetuning=cfg.peft.finetuning, seed=tcfg.seed, head=head
    )
    model = parts.model
    if tcfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False  # no KV cache while training
    if cfg.model.adapter is None:
        # New marker tokens need trained embeddings, and an adapter must carry them to be loadable.
        # (A reward model has no lm_head: its score head is saved by peft's SEQ_CLS task.)
        extra = (("embed_tokens", "lm_head") if head is None else ("embed_tokens",)) if parts.added_tokens else ()
        model, trainable = apply_finetuning(
            model, cfg.peft, extra_modules_to_save=extra, tokenizer=parts.tokenizer, head=parts.head
        )
    else:
        trainable = count_parameters(model, f"lora (continuing {cfg.model.adapter})")
    if parts.head is not None and resolve_precision(tcfg.precision, parts.device) == "bf16":
        # The score head trains in full: fp32 master weights even over a bf16 base (autocast does the maths; without
        # autocast a bf16 base needs a bf16 head).
        for name, p in model.named_parameters():
            if p.requires_grad and p.dtype != torch.float32 and ".score." in f".{name}":
                p.data = p.data.float()
    model.to(parts.device)
    if parts.device.type == "cuda":
        avoid_cudnn_attention_backward()
    speed = SpeedConfig(
        liger=tcfg.liger,
        compile_layers=tcfg.compile_layers,
        checkpoint_ratio=tcfg.checkpoint_ratio,
        dynamic_shapes=tcfg.batching != "packed",  # padded batches vary in shape; packed rows never do
    )
    speedups = apply_speedups(model, speed)
    # FlexAttention keeps packed samples apart without materialising a (rows x len x len) mask; CUDA only.
    attention = tcfg.attention if tcfg.batching == "packed" else "mask"
    if tcfg.stage == "pt" and cfg.data.shards and not cfg.data.document_mask:
        # Shard rows without document masking are one sample each: no mask tensor, so SDPA keeps its is_causal
        # (flash) kernel; FlexAttention would only add a BlockMask per step. The config refuses any other
        # train.attention than auto here.
        attention = "causal"
    if attention == "auto":  # a 4D mask forces SDPA off its fast kernels; FlexAttention skips the masked blocks
        attention = "flex" if parts.device.type == "cuda" else "mask"
    if attention == "flex":
        if parts.device.type != "cuda":
            raise ChatforgeError("train.attention=flex needs a CUDA device; use train.attention=mask on CPU")
        model.config._attn_implementation = "flex_attention"
        speedups.append("flex_attention")
    pad_multiple = tcfg.pad_to_multiple_of or (64 if parts.device.type == "cuda" else 1)
    return TrainModel(
        model=model,
        tokenizer=parts.tokenizer,
        template=parts.template,
        device=parts.device,
        trainable=trainable,
        speedups=speedups,
        attention=attention,
        precision=resolve_precision(tcfg.precision, parts.device),
        pad_multiple=pad_multiple,
        hooks=method_hooks(model),
    )
