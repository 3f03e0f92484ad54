"""What every recipe does around its own data and objective: optimizer, schedule, state and resume, the loop, the
final save and the summary. A recipe calls `run_session` once it has its model, data, batches and objective.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from chatforge.errors import NotSupportedError
from chatforge.training import checkpoint as ckpt_mod
from chatforge.training import distributed as dist_mod
from chatforge.training.batching import Batches
from chatforge.training.best import BestKeeper
from chatforge.training.dataset import TrainData
from chatforge.training.loop import run_loop
from chatforge.training.model_setup import TrainModel
from chatforge.training.monitor import FlopModel, MetricsLog, Progress, Sampler, Throughput, peak_flops
from chatforge.training.optim import make_optimizer, make_scheduler
from chatforge.training.plots import plot_curves
from chatforge.training.run_folder import RunFolder, save_final, write_summary
from chatforge.training.speedups import compile_events
from chatforge.training.state import TrainState


class _NoMetrics:
    """What ranks other than 0 log to: nothing (rank 0 writes the run's metrics.jsonl)."""

    def truncate_after(self, step: int) -> None:
        pass

    def write(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


def _save_final(d: dist_mod.Dist, out: Path, model, tm: TrainModel, base_name: str) -> None:
    """The single-folder model (or adapter) of a finished run, whatever the number of processes."""
    state_dict = None
    if d.mode == "fsdp2":  # every rank takes part in gathering the full weights; rank 0 receives them
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state_dict = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if d.is_main:
        save_final(out, dist_mod.unwrap(model), tm.tokenizer, base_name, state_dict=state_dict)
    d.barrier()


@dataclass
class TrainResult:
    output_dir: Path
    summary: dict


def finished_run(folder: RunFolder) -> TrainResult:
    """`train.resume=auto` on a run that already finished: report it, change nothing."""
    summary = folder.finished_summary or {}
    print(f"{folder.path} holds a finished run ({summary.get('steps')} steps); nothing to resume", flush=True)
    return TrainResult(folder.path, summary)


def total_steps_for(tcfg, n_batches: int) -> int:
    """Optimizer steps of the run from the plan's batches per epoch (`Batches.batches_per_epoch()`: global batches
    under torchrun, one-row merges for padded batches, grpo's repeated windows all included)."""
    steps_per_epoch = math.ceil(n_batches / tcfg.grad_accum)
    return tcfg.max_steps or max(1, math.ceil(tcfg.epochs * steps_per_epoch))


def run_session(
    cfg, folder: RunFolder, tm: TrainModel, data: TrainData, batches: Batches, val_batches: list[dict], objective
) -> TrainResult:
    """Train `tm.model` on `batches` with `objective`, checkpointing into and finally saving to the run folder.

    Under a process group (`training.distributed`) every rank calls it: `batches` is re-planned at the global batch
    (batch_size x world), the model is wrapped (DDP) or sharded (FSDP2), and only rank 0 writes to the run folder."""
    from chatforge.config import save_config

    d = dist_mod.current()
    t_start = time.perf_counter()
    tcfg, out = cfg.train, folder.path
    if d.is_main:
        save_config(cfg, out / "config.yaml")
    if d.world > 1 and tcfg.sample_prompts:
        raise NotSupportedError("train.sample_prompts under torchrun (several processes) is not supported yet")
    if d.world > 1 and tm.hooks is not None:
        raise NotSupportedError(
            f"peft.finetuning={cfg.peft.finetuning} under torchrun (several processes) is not supported yet"
        )
    if d.mode == "fsdp2" and tcfg.restore_best:
        raise NotSupportedError("train.restore_best with FSDP2 is not supported yet (use train.distributed=ddp)")
    batches = dataclasses.replace(batches, batch_size=tcfg.batch_size * d.world)
    # The plan's own batch count: it already holds one-row merges (padded) and grpo's repeated windows.
    total_steps = total_steps_for(tcfg, batches.batches_per_epoch())
    flops = FlopModel.of(tm.model)  # before FSDP2 turns the weights into shards
    model = d.wrap(tm.model, tcfg, tm.device)
    optimizer = make_optimizer(model, tcfg, lora_plus_ratio=cfg.peft.lora_plus_ratio or 0.0)
    scheduler = make_scheduler(optimizer, tcfg, total_steps)
    if tm.hooks is not None:
        tm.hooks.begin(tm.model, total_steps)
    state = TrainState(
        plan=dict(
            fingerprint=data.fingerprint(),
            batch_size=tcfg.batch_size * d.world,  # the global batch: the same plan on any number of processes
            grad_accum=tcfg.grad_accum,
            batching=tcfg.batching,
            seed=tcfg.seed,
        )
    )
    if d.is_main:
        metrics = MetricsLog(out / "metrics.jsonl", out / "tensorboard" if tcfg.tensorboard else None)
    else:
        metrics = _NoMetrics()
    sampler = None
    if tcfg.sample_prompts:
        sampler = Sampler(
            out / "samples.jsonl",
            tm.tokenizer,
            tm.template,
            tcfg.sample_prompts,
            chat=tcfg.stage != "pt",
            max_new_tokens=tcfg.sample_max_new_tokens,
            device=tm.device,
            autocast=tm.autocast,
        )
    resume = folder.resume_from
    if resume is not None:
        state.check_plan(resume.state.get("plan", {}), str(resume.path))
        method_state = ckpt_mod.read_method_state(resume)
        if tm.hooks is not None and method_state:  # AdaLoRA: full-size weights and allocator state
            tm.hooks.load_state(tm.model, method_state)
            ckpt_mod.restore_optimizer(resume, optimizer)
        else:
            ckpt_mod.restore_training(resume, model, optimizer, d)
        ckpt_mod.restore_scheduler(resume, scheduler)
        state = TrainState.from_dict(resume.state)
        metrics.truncate_after(state.step)
        ckpt_mod.restore_rng(resume, d.rank)  # last, so nothing above consumes random numbers after it
    else:
        metrics.truncate_after(0)
    if sampler is not None:
        sampler.truncate_after(state.step)  # samples past the checkpoint came from a run that died after it

    pad_frac = batches.padding_fraction()
    progress = Progress(total_steps, state.step, enabled=tcfg.progress and d.is_main, every=tcfg.log_every)
    progress.message(
        f"train: {len(data.train)} examples ({len(batches.units)} batch units), {len(data.val)} validation; "
        f"{tm.trainable.describe()}; {total_steps} steps on {tm.device} ({tm.precision}); padding {pad_frac:.1%}"
        + (f"; speedups: {', '.join(tm.speedups)}" if tm.speedups else "")
        + (f"; {d.mode} over {d.world} processes (global batch {batches.batch_size})" if d.active else "")
        + (f"; resumed from {resume.path.name}" if resume else "")
    )
    for note, count in data.stats.items():
        progress.message(f"data: {note}: {count}")
    peak = peak_flops(tm.device, tcfg.peak_tflops)
    throughput = Throughput(flops, peak * d.world if peak else None)  # tokens/s are global, so is the peak
    if tm.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(tm.device)  # peak of training itself (weights stay allocated)
    best = BestKeeper(
        out, enabled=tcfg.restore_best, resumed=resume is not None
    )  # train.restore_best (training/best.py)
    t_loop = time.perf_counter()
    with d.guard("training"):
        result = run_loop(
            model=model,
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
            on_eval=sampler,
            on_validated=best.after_eval,
            dist=d,
            hooks=tm.hooks,
        )
    loop_time = time.perf_counter() - t_loop
    progress.close()
    metrics.close()

    restored = best.restore(state, tm.model)  # before the final save: it saves the best weights
    tm.model.config.use_cache = True
    with d.guard("final save"):
        _save_final(d, out, model, tm, str(cfg.model.name_or_path))
    if d.is_main:
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
        **restored,
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
        compile_events=compile_events(tm.model),  # graphs built per layer-input shape ("BxT"): recompiles show here
        resumed_from=str(resume.path) if resume else None,
        distributed=d.mode if d.active else None,
        world_size=d.world,
    )
    if d.is_main:
        write_summary(out, summary)
    d.barrier()  # the run is finished (summary.json written) before any rank returns
    tput = throughput.summary()
    progress.message(
        f"done: {summary['steps']} steps, final loss {summary['final_train_loss']}, val loss "
        f"{summary['final_val_loss']}, {summary['time_s']} s; steady {tput['steady_tok_per_s']} tok/s"
        + (f", MFU {tput['mfu']:.3f}" if tput["mfu"] is not None else "")
        + f" (warm-up {tput['warmup_s']} s over {tput['warmup_steps']} steps) -> {out}"
    )
    return TrainResult(out, summary)
