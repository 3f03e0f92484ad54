"""Choosing which parameters train: full fine-tuning, freezing (last/first N layers or named modules), LoRA (DoRA,
rsLoRA, PiSSA init; LoRA+ is a learning-rate group in `training.optim`), QLoRA (LoRA over a 4-bit NF4 base,
bitsandbytes), AdaLoRA (LoRA whose ranks a budget schedule cuts while it trains) or a virtual-token method (prefix
tuning / P-Tuning v2, prompt tuning, P-tuning).

AdaLoRA needs work in the training loop, given as `StepHooks` (`method_hooks`): a penalty added to every step's
loss, `update_and_allocate` after every optimizer step, and its rank-allocator state in checkpoints.

The adapter methods go through peft (`get_peft_model` with the method's config), so the saved adapter is one plain
`PeftModel.from_pretrained` loads; full and freeze modes only flip `requires_grad`, so the saved result is a plain HF
model. Methods chatforge does not implement raise NotSupportedError naming why.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from chatforge.errors import ChatforgeError, NotSupportedError
from chatforge.training.config import PeftConfig
from chatforge.training.speedups import decoder_layers

# Methods that add virtual tokens (or prefix key/values) inside PeftModel.forward: packed rows cannot carry them.
VIRTUAL_TOKEN_METHODS = ("prefix", "prompt", "p_tuning")
SUPPORTED = ("full", "freeze", "lora", "qlora", "adalora", *VIRTUAL_TOKEN_METHODS)
# Names users bring from other toolkits; each gets a precise message instead of a generic "bad choice".
_UNSUPPORTED = {
    "dora": "DoRA is a LoRA flag here: use finetuning: lora with peft.use_dora: true",
    "prefix_tuning": "the name is finetuning: prefix",
    "prompt_tuning": "the name is finetuning: prompt",
    "ptuning": "the name is finetuning: p_tuning",
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
    if cfg.lora_plus_ratio and method not in ("lora", "qlora"):
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
    elif method == "qlora":
        model = _qlora(model, cfg, extra_modules_to_save)
    elif method == "adalora":
        model = _adalora(model, cfg, extra_modules_to_save)
    else:
        model = _virtual_tokens(model, cfg, method, extra_modules_to_save, tokenizer)
    return model, count_parameters(model, method)


def count_parameters(model: nn.Module, method: str) -> TrainableSummary:
    # Tied weights appear once in parameters(), so these counts are honest for tied embeddings too.
    total = sum(_numel(p) for p in model.parameters())
    trainable = sum(_numel(p) for p in model.parameters() if p.requires_grad)
    return TrainableSummary(trainable, total, method)


def _numel(p) -> int:
    # A bitsandbytes 4-bit weight is stored as packed bytes, two values per uint8 element.
    if type(p).__name__ == "Params4bit" and getattr(p, "quant_state", None) is not None:
        return int(torch.Size(p.quant_state.shape).numel())
    return p.numel()


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


def _target(cfg: PeftConfig) -> str | list[str]:
    targets = cfg.target_modules
    # peft expects the string "all-linear", not a one-element list, to select every linear layer but the head.
    return "all-linear" if targets == ["all-linear"] or targets == "all-linear" else list(targets)


def _get_peft_model(model: nn.Module, pcfg, cfg: PeftConfig) -> nn.Module:
    from peft import get_peft_model

    try:
        return get_peft_model(model, pcfg)
    except ValueError as err:  # peft reports unknown target module names as ValueError
        raise ChatforgeError(f"peft.target_modules={cfg.target_modules}: {err}") from err


def _lora(
    model: nn.Module, cfg: PeftConfig, extra_modules_to_save: tuple[str, ...] = (), task_type: str = "CAUSAL_LM"
) -> nn.Module:
    from peft import LoraConfig

    lora = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=_target(cfg),
        use_dora=cfg.use_dora,
        use_rslora=cfg.use_rslora,
        init_lora_weights={"default": True, "gaussian": "gaussian", "pissa": "pissa"}[cfg.init_lora_weights],
        modules_to_save=list(dict.fromkeys([*cfg.modules_to_save, *extra_modules_to_save])) or None,
        task_type=task_type,  # SEQ_CLS adds the score head to modules_to_save (trained in full, saved)
        bias="none",
    )
    return _get_peft_model(model, lora, cfg)


def _qlora(model: nn.Module, cfg: PeftConfig, extra_modules_to_save: tuple[str, ...] = ()) -> nn.Module:
    """QLoRA: every linear layer of the base except the output head becomes a frozen bitsandbytes 4-bit layer (NF4,
    double quantisation and bf16 compute by default), prepared with peft's `prepare_model_for_kbit_training`, and LoRA
    trains on top. The base may come from anywhere `model.name_or_path` loads (a GGUF file is dequantised on load and
    re-quantised here). bitsandbytes runs on CUDA and, since 0.46, on CPU (its torch backend)."""
    if cfg.init_lora_weights == "pissa":
        raise NotSupportedError(
            "peft.init_lora_weights=pissa needs the full-precision base: not with finetuning: qlora"
        )
    quantize_4bit(model, cfg.qlora)
    from peft import prepare_model_for_kbit_training

    # Gradient checkpointing stays the run's choice (train.gradient_checkpointing), set before this in model_setup.
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return _lora(model, cfg, extra_modules_to_save)


def quantize_4bit(model: nn.Module, opts) -> int:
    """Replace the base's linear layers (not the output head) by bitsandbytes `Linear4bit` in place, quantising the
    current weights (`opts`: quant_type, double_quant, compute_dtype); returns how many layers were replaced."""
    import torch

    try:
        import bitsandbytes as bnb
    except ImportError as err:
        raise NotSupportedError(
            "peft.finetuning=qlora needs the bitsandbytes package: pip install 'chatforge[qlora]'"
        ) from err
    head = model.get_output_embeddings()
    compute = getattr(torch, opts.compute_dtype)
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear) or child is head or isinstance(child, bnb.nn.Linear4bit):
                continue
            device = child.weight.device
            q = bnb.nn.Linear4bit(
                child.in_features,
                child.out_features,
                bias=child.bias is not None,
                compute_dtype=compute,
                compress_statistics=opts.double_quant,
                quant_type=opts.quant_type,
                device="meta",
            )
            # Params4bit quantises when it is moved to a real device; the weight is copied, not kept in full.
            weight = bnb.nn.Params4bit(
                child.weight.data.detach().clone().cpu(),
                requires_grad=False,
                compress_statistics=opts.double_quant,
                quant_type=opts.quant_type,
            )
            q.weight = weight.to(device)
            if child.bias is not None:
                q.bias = nn.Parameter(child.bias.data.detach().clone(), requires_grad=False)
            setattr(parent, name, q)
            count += 1
    if not count:
        raise ChatforgeError("peft.finetuning=qlora: the model has no linear layers to quantise")
    model.is_loaded_in_4bit = True  # what peft reads to pick its 4-bit LoRA layers
    return count


def _adalora(model: nn.Module, cfg: PeftConfig, extra_modules_to_save: tuple[str, ...] = ()) -> nn.Module:
    """AdaLoRA through peft. `total_step` must be known when peft builds the config but the run's step count is only
    known once the data is encoded; a placeholder schedule is set here and `AdaLoraHooks.begin` puts the real one in
    (peft's rank allocator reads it from the same config object at every step)."""
    import warnings

    from peft import AdaLoraConfig

    # AdaLoRA may cut a matrix to rank 0; peft's save then warns about sharded (ZeRO-3/FSDP) tensors, which is wrong.
    warnings.filterwarnings("ignore", message=r".*LoRA tensor\(s\) have invalid shape.*")
    if cfg.use_dora or cfg.init_lora_weights == "pissa" or cfg.use_rslora:
        raise ChatforgeError("peft.finetuning=adalora: use_dora, use_rslora and init_lora_weights=pissa are LoRA-only")
    a = cfg.adalora
    pcfg = AdaLoraConfig(
        init_r=a.init_r,
        target_r=a.target_r,
        tinit=a.tinit,
        tfinal=a.tfinal,
        deltaT=a.deltaT,
        beta1=a.beta1,
        beta2=a.beta2,
        orth_reg_weight=a.orth_reg_weight,
        total_step=a.tinit + a.tfinal + 1,  # placeholder, replaced by AdaLoraHooks.begin(total_steps)
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=_target(cfg),
        modules_to_save=list(dict.fromkeys([*cfg.modules_to_save, *extra_modules_to_save])) or None,
        task_type="CAUSAL_LM",
        bias="none",
    )
    return _get_peft_model(model, pcfg, cfg)


class StepHooks:
    """What a method adds to the training loop (no-ops here). `begin` once the run's step count is known,
    `extra_loss` once per optimizer step (after the micro-batches' backward), `after_optimizer_step` after
    `optimizer.step()` and before the gradients are zeroed, `state`/`load_state` for checkpoints (tensors only)."""

    def begin(self, model: nn.Module, total_steps: int) -> None:
        pass

    def extra_loss(self, model: nn.Module):
        return None

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        pass

    def state(self, model: nn.Module) -> dict:
        return {}

    def load_state(self, model: nn.Module, tensors: dict) -> None:
        pass


class AdaLoraHooks(StepHooks):
    """AdaLoRA's loop work: the orthogonality penalty, `update_and_allocate(step)` once per optimizer step, and the
    allocator (sensitivity / uncertainty EMAs, rank pattern) with the full-size adapter weights in checkpoints.

    The adapter in a checkpoint's `model/` folder is the one peft saves (cut to the rank pattern, for use as is); a
    resume loads the full-size weights from the hooks' state instead, because the live model keeps every rank and
    only masks the removed ones."""

    def _peft(self, model):
        return model.peft_config[model.active_adapter]

    def begin(self, model: nn.Module, total_steps: int) -> None:
        pc = self._peft(model)
        if pc.tinit >= total_steps - pc.tfinal:
            raise ChatforgeError(
                f"peft.adalora: tinit={pc.tinit} and tfinal={pc.tfinal} leave no budget phase in this run's "
                f"{total_steps} optimizer steps: need tinit < total_steps - tfinal"
            )
        pc.total_step = total_steps

    def extra_loss(self, model: nn.Module):
        """peft's penalty (mean over A and B of ||AA^T - I||_F, ||B^TB - I||_F) times `orth_reg_weight`; peft adds
        it inside its forward only when the forward computes the loss, which chatforge's chunked loss bypasses.
        Added once per optimizer step, as Trainer's per-micro-batch sum divided by grad_accum amounts to."""
        import torch

        pc = self._peft(model)
        if not pc.orth_reg_weight:
            return None
        name = model.active_adapter
        terms = []
        for n, p in model.named_parameters():
            if ("lora_A" in n or "lora_B" in n) and f".{name}" in n and p.requires_grad:
                cov = p @ p.T if "lora_A" in n else p.T @ p
                terms.append(torch.linalg.matrix_norm(cov - torch.eye(*cov.shape, device=cov.device, dtype=cov.dtype)))
        return pc.orth_reg_weight * torch.stack(terms).mean() if terms else None

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        model.base_model.update_and_allocate(step)

    def state(self, model: nn.Module) -> dict:
        import torch

        alloc = model.base_model.rankallocator
        out = {f"param/{n}": p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        for kind in ("ipt", "exp_avg_ipt", "exp_avg_unc"):
            out.update({f"{kind}/{n}": t.detach().clone() for n, t in getattr(alloc, kind).items()})
        for n, keep in (self._peft(model).rank_pattern or {}).items():
            out[f"rank_pattern/{n}"] = torch.tensor(keep, dtype=torch.bool).to(torch.uint8)
        return out

    def load_state(self, model: nn.Module, tensors: dict) -> None:
        params = dict(model.named_parameters())
        missing = [n for n, p in params.items() if p.requires_grad and f"param/{n}" not in tensors]
        if missing:
            raise ChatforgeError(f"the checkpoint's AdaLoRA state lacks {missing[:3]}: it is not from this run")
        import torch

        with torch.no_grad():
            for n, p in params.items():
                if f"param/{n}" in tensors:
                    p.copy_(tensors[f"param/{n}"])
        alloc = model.base_model.rankallocator
        alloc.reset_ipt()
        device = next(iter(params.values())).device
        pattern = {}
        for key, t in tensors.items():
            kind, _, n = key.partition("/")
            if kind in ("ipt", "exp_avg_ipt", "exp_avg_unc"):
                getattr(alloc, kind)[n] = t.to(device)  # keyed by the inner model's names
            elif kind == "rank_pattern":
                pattern[n] = t.bool().tolist()
        self._peft(model).rank_pattern = pattern or None


def method_hooks(model: nn.Module) -> StepHooks | None:
    """The loop hooks the model's method needs (AdaLoRA), or None."""
    config = getattr(model, "peft_config", None)
    if config and getattr(config[model.active_adapter], "peft_type", None) == "ADALORA":
        return AdaLoraHooks()
    return None


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
