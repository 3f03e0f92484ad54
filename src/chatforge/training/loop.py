"""The training loop: an explicit PyTorch loop (no framework Trainer) for SFT and continued pretraining.

`train(cfg)` loads the model and tokenizer, applies the fine-tuning method, encodes the data, then runs optimizer
steps of `grad_accum` micro-batches each. The loss of a step is the mean over every trained token of all its
micro-batches (exact under accumulation and padding), computed by `losses.trained_token_loss`, which never builds
the full logits tensor. Validation (loss, token accuracy) runs every `eval_every` steps; checkpoints every
`save_every` steps hold everything needed to continue bit-for-bit (`resume: auto`).

The environment variable CHATFORGE_DEBUG_STEP_DELAY (seconds) sleeps after each step; the resume test uses it to
kill a run reliably between checkpoints.
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from chatforge.errors import ChatforgeError, NotSupportedError
from chatforge.models.loading import resolve_device
from chatforge.training import checkpoint as ckpt_mod
from chatforge.training.adapters import apply_finetuning, count_parameters
from chatforge.training.config import TrainRunConfig
from chatforge.training.dataset import IGNORE, Example, TrainData, build_data, plan_batches
from chatforge.training.losses import trained_token_loss
from chatforge.training.monitor import MetricsLog, Progress
from chatforge.training.packing import attention_inputs, collate, pack, pad_batch, padding_fraction
from chatforge.training.plots import plot_curves
from chatforge.training.speedups import SpeedConfig, apply_speedups

_RUN_FILES = ("summary.json", "metrics.jsonl", "curves.png", "checkpoints", "tensorboard")


@dataclass
class TrainResult:
    output_dir: Path
    summary: dict


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def load_components(cfg: TrainRunConfig):
    """(model, tokenizer, template): the tokenizer prepared with the template's chat markers, embeddings resized.
    With `model.adapter` set (LoRA only), training continues that adapter instead of starting a new one."""
    from chatforge.models.loading import build_model_from_init, default_template_for, load_model, load_tokenizer
    from chatforge.templates import get_template, prepare_tokenizer

    mcfg = cfg.model
    if mcfg.adapter is not None and cfg.peft.finetuning != "lora":
        raise NotSupportedError("model.adapter (continue training an adapter) works with peft.finetuning=lora only")
    tok_spec = mcfg.tokenizer or mcfg.adapter or mcfg.name_or_path
    tokenizer = load_tokenizer(tok_spec, trust_remote_code=mcfg.trust_remote_code)
    # The embedded model's name picks its template directly; otherwise the tokenizer's own template is the clue.
    template_hint = mcfg.name_or_path if mcfg.init is None and mcfg.tokenizer is None else tokenizer
    template = get_template(cfg.template.name or default_template_for(template_hint))
    if cfg.template.default_system is not None:
        template = template.with_default_system(cfg.template.default_system)
    # Sets the Jinja chat template too, so the saved tokenizer renders chats exactly as training did.
    added = prepare_tokenizer(tokenizer, template)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Mixed precision keeps fp32 master weights; "auto" therefore means fp32 for training.
    dtype = "float32" if mcfg.dtype == "auto" else mcfg.dtype
    if mcfg.init is not None:
        model = build_model_from_init(mcfg.init, tokenizer, dtype=dtype, seed=cfg.train.seed)
    else:
        model = load_model(
            mcfg.name_or_path, dtype=dtype, allow_pickle=mcfg.allow_pickle, trust_remote_code=mcfg.trust_remote_code
        )
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
        if added and cfg.peft.finetuning == "lora":
            # New marker tokens need trained embeddings, and the adapter must carry them to be loadable.
            extra = [m for m in ("embed_tokens", "lm_head") if m not in cfg.peft.modules_to_save]
            cfg.peft.modules_to_save = [*cfg.peft.modules_to_save, *extra]
    if mcfg.adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, mcfg.adapter, is_trainable=True)
    return model, tokenizer, template


def make_optimizer(model, tcfg, device: torch.device) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]  # norms and biases are not weight-decayed
    groups = [{"params": decay, "weight_decay": tcfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    kw = dict(lr=tcfg.learning_rate, betas=(tcfg.adam_beta1, tcfg.adam_beta2), eps=tcfg.adam_eps)
    if tcfg.fused_optimizer:
        try:
            return torch.optim.AdamW(groups, fused=True, **kw)
        except (RuntimeError, ValueError):  # device or dtype without a fused kernel: use the foreach version
            pass
    return torch.optim.AdamW(groups, **kw)


def make_scheduler(optimizer, tcfg, total_steps: int):
    from transformers import get_scheduler

    warmup = tcfg.warmup_steps or int(round(tcfg.warmup_ratio * total_steps))
    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[tcfg.scheduler]
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


def _trained_count(batch: dict) -> int:
    return int((batch["labels"][:, 1:] != IGNORE).sum())


@torch.no_grad()
def evaluate(model, examples: list[Example], batch_size: int, pad_id: int, device, autocast, loss_fn) -> dict:
    """Mean loss and next-token accuracy over the trained tokens of `examples`."""
    if not examples:
        return {}
    was_training = model.training
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    loss_sum, n_tok, n_correct = 0.0, 0, 0
    for start in range(0, len(order), batch_size):
        batch = pad_batch([examples[i] for i in order[start : start + batch_size]], pad_id)
        batch = attention_inputs(batch, device)
        with autocast():
            ls, n, c = loss_fn(model, batch)
        loss_sum += float(ls)
        n_tok += int(n)
        n_correct += int(c)
    model.train(was_training)
    return {"val_loss": loss_sum / max(1, n_tok), "val_accuracy": n_correct / max(1, n_tok), "val_tokens": n_tok}


def _prepare_output(cfg: TrainRunConfig) -> ckpt_mod.Checkpoint | None:
    """Decide between a fresh start and a resume; refuse to clobber an existing run unless asked."""
    out = Path(cfg.output.dir)
    resume = cfg.train.resume
    found: ckpt_mod.Checkpoint | None = None
    if resume == "auto":
        path = ckpt_mod.latest_checkpoint(out)
        if path is not None:
            found = ckpt_mod.read_checkpoint(path)
        elif (out / "summary.json").exists() and not cfg.output.overwrite:
            raise ChatforgeError(f"{out} holds a finished run without checkpoints; set output.overwrite=true")
    elif resume:
        found = ckpt_mod.read_checkpoint(resume)
    if found is None:
        existing = [n for n in _RUN_FILES if (out / n).exists()]
        if existing and not (cfg.output.overwrite or resume == "auto"):
            raise ChatforgeError(
                f"output.dir {out} already holds a run ({', '.join(existing)}); "
                "set train.resume=auto to continue it or output.overwrite=true to replace it"
            )
        for name in existing:
            target = out / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()
    out.mkdir(parents=True, exist_ok=True)
    ckpt_mod.clean_incomplete(out)
    return found


def train(cfg: TrainRunConfig) -> TrainResult:
    """Run one training job as configured; returns the output folder and the summary written to summary.json."""
    from chatforge.config import save_config

    t_start = time.perf_counter()
    tcfg = cfg.train
    out = Path(cfg.output.dir)
    resume_from = _prepare_output(cfg)
    if tcfg.num_threads:
        torch.set_num_threads(tcfg.num_threads)
    device = resolve_device(tcfg.device)
    seed_everything(tcfg.seed)

    model, tokenizer, template = load_components(cfg)
    if tcfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False  # no KV cache while training
    if cfg.model.adapter is None:
        model, trainable = apply_finetuning(model, cfg.peft)
    else:
        trainable = count_parameters(model, f"lora (continuing {cfg.model.adapter})")
    model.to(device)
    speed = SpeedConfig(
        liger=tcfg.liger, compile_layers=tcfg.compile_layers, checkpoint_ratio=tcfg.checkpoint_ratio, fused_adamw=False
    )
    speedups = apply_speedups(model, speed)
    # FlexAttention keeps packed samples apart without materialising a (rows x len x len) mask; CUDA only.
    attention = tcfg.attention if tcfg.batching == "packed" else "mask"
    if attention == "flex":
        if device.type != "cuda":
            raise ChatforgeError("train.attention=flex needs a CUDA device; use train.attention=mask on CPU")
        model.config._attn_implementation = "flex_attention"
        speedups.append("flex_attention")
    save_config(cfg, out / "config.yaml")

    data: TrainData = build_data(cfg, tokenizer, template)
    pad_id = tokenizer.pad_token_id
    loss_fn = functools.partial(trained_token_loss, chunk_size=tcfg.loss_chunk_size)
    units: list
    if tcfg.batching == "packed":
        # Packed rows (block-diagonal attention, positions restarting per sample) are the batch units.
        units = pack(data.train, cfg.data.max_length)
        lengths = [len(row) for row in units]

        def make_batch(idx: list[int]) -> dict:
            return collate([units[i] for i in idx], pad_id, attention=attention)

    else:
        units = data.train
        lengths = [len(ids) for ids, _ in units]

        def make_batch(idx: list[int]) -> dict:
            return pad_batch([units[i] for i in idx], pad_id)

    steps_per_epoch = math.ceil(math.ceil(len(units) / tcfg.batch_size) / tcfg.grad_accum)
    total_steps = tcfg.max_steps or max(1, math.ceil(tcfg.epochs * steps_per_epoch))
    first_plan = plan_batches(lengths, tcfg.batch_size, tcfg.batching, tcfg.seed, 0)
    pad_frac = padding_fraction([[lengths[i] for i in b] for b in first_plan])

    optimizer = make_optimizer(model, tcfg, device)
    scheduler = make_scheduler(optimizer, tcfg, total_steps)
    use_bf16 = tcfg.precision == "bf16"

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()

    plan_key = dict(
        fingerprint=data.fingerprint(),
        batch_size=tcfg.batch_size,
        grad_accum=tcfg.grad_accum,
        batching=tcfg.batching,
        seed=tcfg.seed,
    )
    state = dict(step=0, epoch=0, batch=0, tokens=0, trained_tokens=0, elapsed=0.0, best_val=None, best_step=None)
    state.update(bad_evals=0, plan=plan_key)
    metrics = MetricsLog(out / "metrics.jsonl", out / "tensorboard" if tcfg.tensorboard else None)
    if resume_from is not None:
        saved = resume_from.state
        if saved["plan"] != plan_key:
            diff = sorted(k for k in plan_key if saved["plan"].get(k) != plan_key[k])
            raise ChatforgeError(f"cannot resume {resume_from.path}: {', '.join(diff)} changed since the checkpoint")
        ckpt_mod.restore_model(resume_from, model)
        ckpt_mod.restore_optimizer(resume_from, optimizer)
        ckpt_mod.restore_scheduler(resume_from, scheduler)
        state.update({k: v for k, v in saved.items() if k in state})
        metrics.truncate_after(state["step"])
        ckpt_mod.restore_rng(resume_from)  # last, so nothing above consumes random numbers after it
    else:
        metrics.truncate_after(0)

    progress = Progress(total_steps, state["step"], enabled=tcfg.progress, every=tcfg.log_every)
    progress.message(
        f"train: {len(data.train)} examples ({len(units)} batch units), {len(data.val)} validation; "
        f"{trainable.describe()}; {total_steps} steps on {device}; padding {pad_frac:.1%}"
        + (f"; speedups: {', '.join(speedups)}" if speedups else "")
        + (f"; resumed from {resume_from.path.name}" if resume_from else "")
    )
    for note, count in data.stats.items():
        progress.message(f"data: {note}: {count}")
    delay = float(os.environ.get("CHATFORGE_DEBUG_STEP_DELAY", "0") or 0)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    plan_epoch, plan = -1, []
    last_train: dict = {}
    last_eval: dict = {}
    last_eval_step = -1
    stopped_early = False
    t_loop = time.perf_counter()
    steps_this_process = 0

    while state["step"] < total_steps and not stopped_early:
        if plan_epoch != state["epoch"]:
            plan_epoch = state["epoch"]
            plan = plan_batches(lengths, tcfg.batch_size, tcfg.batching, tcfg.seed, plan_epoch)
        if state["batch"] >= len(plan):
            state["epoch"], state["batch"] = state["epoch"] + 1, 0
            continue
        t_step = time.perf_counter()
        window_idx = plan[state["batch"] : state["batch"] + tcfg.grad_accum]
        window = [make_batch(idx) for idx in window_idx]
        n_trained = sum(_trained_count(b) for b in window)
        step_loss = torch.zeros((), device=device)
        step_correct = 0
        for batch in window:
            batch = attention_inputs(batch, device, attention=attention)
            with autocast():
                loss_sum, _, n_correct = loss_fn(model, batch)
            # Dividing by the whole window's trained tokens makes accumulation equal to one big batch.
            (loss_sum / max(1, n_trained)).backward()
            step_loss += loss_sum.detach().float()
            step_correct += int(n_correct)
        grad_norm = None
        if tcfg.max_grad_norm > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, tcfg.max_grad_norm))
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        real = sum(lengths[i] for idx in window_idx for i in idx)  # tokens processed, padding excluded
        state["step"] += 1
        state["batch"] += len(window)
        state["tokens"] += real
        state["trained_tokens"] += n_trained
        steps_this_process += 1
        step = state["step"]
        loss_value = float(step_loss) / max(1, n_trained)
        dt = time.perf_counter() - t_step
        last_train = dict(
            kind="train",
            step=step,
            epoch=state["epoch"] + state["batch"] / len(plan),
            loss=loss_value,
            accuracy=step_correct / max(1, n_trained),
            lr=lr,
            grad_norm=grad_norm,
            tokens=state["tokens"],
            step_time=dt,
            tok_per_s=real / max(dt, 1e-9),
        )
        metrics.write(last_train)
        progress.update(step, loss_value, lr, real)

        if data.val and tcfg.eval_every and step % tcfg.eval_every == 0 and step < total_steps:
            last_eval = evaluate(model, data.val, tcfg.eval_batch_size, pad_id, device, autocast, loss_fn)
            last_eval_step = step
            metrics.write(dict(kind="eval", step=step, **last_eval))
            progress.message(f"step {step}: val_loss {last_eval['val_loss']:.4f} acc {last_eval['val_accuracy']:.3f}")
            stopped_early = _early_stop(state, last_eval["val_loss"], step, tcfg)
        if tcfg.save_every and (step % tcfg.save_every == 0 or stopped_early):
            state["elapsed"] += time.perf_counter() - t_start
            t_start = time.perf_counter()
            ckpt_mod.save_checkpoint(out, step, model, optimizer, scheduler, state, tcfg.save_total_limit)
        if delay:
            time.sleep(delay)
    progress.close()
    loop_time = time.perf_counter() - t_loop

    if data.val and last_eval_step != state["step"]:
        last_eval = evaluate(model, data.val, tcfg.eval_batch_size, pad_id, device, autocast, loss_fn)
        metrics.write(dict(kind="eval", step=state["step"], **last_eval))
        if not stopped_early:
            _early_stop(state, last_eval["val_loss"], state["step"], tcfg)
    metrics.close()

    model.config.use_cache = True
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    plot_curves(out / "metrics.jsonl", out / "curves.png")
    state["elapsed"] += time.perf_counter() - t_start
    summary = dict(
        stage=tcfg.stage,
        finetuning=cfg.peft.finetuning,
        steps=state["step"],
        epochs=state["epoch"] + (state["batch"] / len(plan) if plan else 0),
        tokens=state["tokens"],
        trained_tokens=state["trained_tokens"],
        time_s=round(state["elapsed"], 3),
        step_time_s=round(loop_time / steps_this_process, 4) if steps_this_process else None,
        final_train_loss=last_train.get("loss"),
        final_val_loss=last_eval.get("val_loss"),
        final_val_accuracy=last_eval.get("val_accuracy"),
        best_val_loss=state["best_val"],
        best_step=state["best_step"],
        stopped_early=stopped_early,
        padding_fraction=round(pad_frac, 4),
        train_examples=len(data.train),
        val_examples=len(data.val),
        batch_units=len(units),
        trainable_parameters=trainable.trainable,
        total_parameters=trainable.total,
        data_notes=dict(data.stats),
        device=str(device),
        precision=tcfg.precision,
        speedups=speedups,
        resumed_from=str(resume_from.path) if resume_from else None,
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    progress.message(
        f"done: {summary['steps']} steps, final loss {summary['final_train_loss']}, val loss "
        f"{summary['final_val_loss']}, {summary['time_s']} s -> {out}"
    )
    return TrainResult(out, summary)


def _early_stop(state: dict, val_loss: float, step: int, tcfg) -> bool:
    """Track the best validation loss; True when `early_stopping_patience` evals in a row did not improve it."""
    if state["best_val"] is None or val_loss < state["best_val"] - tcfg.early_stopping_min_delta:
        state["best_val"], state["best_step"], state["bad_evals"] = val_loss, step, 0
        return False
    state["bad_evals"] += 1
    return bool(tcfg.early_stopping_patience) and state["bad_evals"] >= tcfg.early_stopping_patience
