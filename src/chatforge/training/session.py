"""What every recipe does around its own data and objective: optimizer, schedule, state and resume, the loop, the
final save and the summary. A recipe calls `run_session` once it has its model, data, batches and objective.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from chatforge.training import checkpoint as ckpt_mod
from chatforge.training.batching import Batches
from chatforge.training.dataset import TrainData
from chatforge.training.loop import run_loop
from chatforge.training.model_setup import TrainModel
from chatforge.training.monitor import FlopModel, MetricsLog, Progress, Throughput, peak_flops
from chatforge.training.optim import make_optimizer, make_scheduler
from chatforge.training.plots import plot_curves
from chatforge.training.run_folder import RunFolder, save_final, write_summary
from chatforge.training.state import TrainState


@dataclass
class TrainResult:
    output_dir: Path
    summary: dict


def finished_run(folder: RunFolder) -> TrainResult:
    """`train.resume=auto` on a run that already finished: report it, change nothing."""
    summary = folder.finished_summary or {}
    print(f"{folder.path} holds a finished run ({summary.get('steps')} steps); nothing to resume", flush=True)
    return TrainResult(folder.path, summary)


def total_steps_for(tcfg, n_units: int) -> int:
    steps_per_epoch = math.ceil(math.ceil(n_units / tcfg.batch_size) / tcfg.grad_accum)
    return tcfg.max_steps or max(1, math.ceil(tcfg.epochs * steps_per_epoch))


def run_session(
    cfg, folder: RunFolder, tm: TrainModel, data: TrainData, batches: Batches, val_batches: list[dict], objective
) -> TrainResult:
    """Train `tm.model` on `batches` with `objective`, checkpointing into and finally saving to the run folder."""
    from chatforge.config import save_config

    t_start = time.perf_counter()
    tcfg, out = cfg.train, folder.path
    save_config(cfg, out / "config.yaml")
    total_steps = total_steps_for(tcfg, len(batches.units))
    optimizer = make_optimizer(tm.model, tcfg, lora_plus_ratio=cfg.peft.lora_plus_ratio or 0.0)
    scheduler = make_scheduler(optimizer, tcfg, total_steps)
    if tm.hooks is not None:
        tm.hooks.begin(tm.model, total_steps)
    state = TrainState(
        plan=dict(
            fingerprint=data.fingerprint(),
            batch_size=tcfg.batch_size,
            grad_accum=tcfg.grad_accum,
            batching=tcfg.batching,
            seed=tcfg.seed,
        )
    )
    metrics = MetricsLog(out / "metrics.jsonl", out / "tensorboard" if tcfg.tensorboard else None)
    resume = folder.resume_from
    if resume is not None:
        state.check_plan(resume.state.get("plan", {}), str(resume.path))
        method_state = ckpt_mod.read_method_state(resume)
        if tm.hooks is not None and method_state:  # AdaLoRA: full-size weights and allocator state
            tm.hooks.load_state(tm.model, method_state)
        else:
            ckpt_mod.restore_model(resume, tm.model)
        ckpt_mod.restore_optimizer(resume, optimizer)
        ckpt_mod.restore_scheduler(resume, scheduler)
        state = TrainState.from_dict(resume.state)
        metrics.truncate_after(state.step)
        ckpt_mod.restore_rng(resume)  # last, so nothing above consumes random numbers after it
    else:
        metrics.truncate_after(0)

    pad_frac = batches.padding_fraction()
    progress = Progress(total_steps, state.step, enabled=tcfg.progress, every=tcfg.log_every)
    progress.message(
        f"train: {len(data.train)} examples ({len(batches.units)} batch units), {len(data.val)} validation; "
        f"{tm.trainable.describe()}; {total_steps} steps on {tm.device} ({tm.precision}); padding {pad_frac:.1%}"
        + (f"; speedups: {', '.join(tm.speedups)}" if tm.speedups else "")
        + (f"; resumed from {resume.path.name}" if resume else "")
    )
    for note, count in data.stats.items():
        progress.message(f"data: {note}: {count}")
    throughput = Throughput(FlopModel.of(tm.model), peak_flops(tm.device, tcfg.peak_tflops))
    if tm.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(tm.device)  # peak of training itself (weights stay allocated)
    t_loop = time.perf_counter()
    result = run_loop(
        model=tm.model,
        objective=objective,
        batches=batches,
        val_batches=val_batches,
        optimizer=optimizer,
        scheduler=scheduler,
        state=state,
        tcfg=tcfg,
        total_steps=total_steps,
        device=tm.device,
        attention=tm.attention,
        autocast=tm.autocast,
        out=out,
        metrics=metrics,
        progress=progress,
        throughput=throughput,
        hooks=tm.hooks,
    )
    loop_time = time.perf_counter() - t_loop
    progress.close()
    metrics.close()

    tm.model.config.use_cache = True
    save_final(out, tm.model, tm.tokenizer, str(cfg.model.name_or_path))
    plot_curves(out / "metrics.jsonl", out / "curves.png")
    steps_here = result.steps_this_process
    plan_len = len(batches.plan(state.epoch))
    summary = dict(
        stage=tcfg.stage,
        finetuning=cfg.peft.finetuning,
        steps=state.step,
        epochs=state.epoch + (state.batch / plan_len if plan_len else 0),
        tokens=state.tokens,
        trained_tokens=state.trained_tokens,
        time_s=round(state.elapsed + (time.perf_counter() - t_start) - loop_time, 3),
        step_time_s=round(loop_time / steps_here, 4) if steps_here else None,
        **throughput.summary(),
        final_train_loss=result.last_train.get("loss"),
        final_val_loss=result.last_eval.get("val_loss"),
        final_val_accuracy=result.last_eval.get("val_accuracy"),
        best_val_loss=state.best_val,
        best_step=state.best_step,
        stopped_early=result.stopped_early,
        padding_fraction=round(pad_frac, 4),
        train_examples=len(data.train),
        val_examples=len(data.val),
        batch_units=len(batches.units),
        trainable_parameters=tm.trainable.trainable,
        total_parameters=tm.trainable.total,
        data_notes=dict(data.stats),
        device=str(tm.device),
        peak_gpu_memory_gib=(
            round(torch.cuda.max_memory_allocated(tm.device) / 2**30, 2) if tm.device.type == "cuda" else None
        ),
        precision=tm.precision,
        speedups=tm.speedups,
        resumed_from=str(resume.path) if resume else None,
    )
    write_summary(out, summary)
    tput = throughput.summary()
    progress.message(
        f"done: {summary['steps']} steps, final loss {summary['final_train_loss']}, val loss "
        f"{summary['final_val_loss']}, {summary['time_s']} s; steady {tput['steady_tok_per_s']} tok/s"
        + (f", MFU {tput['mfu']:.3f}" if tput["mfu"] is not None else "")
        + f" (warm-up {tput['warmup_s']} s over {tput['warmup_steps']} steps) -> {out}"
    )
    return TrainResult(out, summary)
