"""The shared training loop: optimizer steps over planned batches, validation, checkpoints, metrics.

`run_loop` knows nothing about stages or fine-tuning methods: a recipe hands it a model, an objective (the step
contract in `training.objectives`), its `Batches`, validation batches, optimizer, scheduler and a `TrainState`, and it
runs steps until `total_steps` or early stopping. One step is `grad_accum` micro-batches; its loss is the mean over
all of their normaliser units (exact under accumulation and padding). Validation runs every `eval_every` steps,
checkpoints every `save_every` steps hold everything needed to continue bit-for-bit (`train.resume=auto`), and a
non-finite loss stops the run with an error, keeping the last good checkpoint.

Under a process group (`dist`, see `training.distributed`) each planned batch is a global batch: this rank trains
its slice, the step's normaliser is summed over ranks first, and the logged loss and metrics are global sums over
the global count, so a step equals the one-process step at the same global batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from chatforge.errors import ChatforgeError
from chatforge.training import checkpoint as ckpt_mod
from chatforge.training.batching import Batches
from chatforge.training.distributed import Dist, grad_norm_value
from chatforge.training.monitor import MetricsLog, Progress, Throughput, compile_count, eval_line, perplexity
from chatforge.training.packing import attention_inputs
from chatforge.training.state import TrainState


@dataclass
class LoopResult:
    last_train: dict = field(default_factory=dict)
    last_eval: dict = field(default_factory=dict)
    stopped_early: bool = False
    steps_this_process: int = 0


@torch.no_grad()
def evaluate(model, objective, val_batches: list[dict], device, autocast, dist: Dist | None = None) -> dict:
    """Mean validation loss and metrics over `val_batches` (padded CPU batches), weighted by the objective.
    Under a process group rank r evaluates batches r, r + world, ... and the sums are added over ranks."""
    if not val_batches:
        return {}
    d = dist or Dist()
    was_training = model.training
    model.eval()
    mine = val_batches[d.rank :: d.world]
    # Every rank runs the same number of forwards (FSDP2 gathers weights in each); the extra ones weigh 0.
    rounds = -(-len(val_batches) // d.world)
    loss_sum, count, sums = 0.0, 0, {}
    for i in range(rounds):
        batch, weight = (mine[i], 1) if i < len(mine) else (val_batches[0], 0)
        n = objective.count(batch) * weight
        with autocast():
            loss, metrics = objective(model, attention_inputs(batch, device))
        loss_sum += float(loss) * weight
        count += n
        for name, value in metrics.items():
            sums[name] = sums.get(name, 0.0) + float(value) * weight
    model.train(was_training)
    if d.active:
        names = sorted(sums)
        total = d.all_reduce_sum(torch.tensor([float(loss_sum), count] + [sums[k] for k in names], dtype=torch.float64))
        loss_sum, count = float(total[0]), int(total[1])
        sums = {k: float(total[2 + j]) for j, k in enumerate(names)}
    out = {"val_loss": loss_sum / max(1, count)}
    out.update({f"val_{name}": value / max(1, count) for name, value in sums.items()})
    out["val_count"] = count
    if getattr(objective, "reports_perplexity", False):
        out["val_ppl"] = perplexity(out["val_loss"])
    return out


def run_loop(
    *,
    model: torch.nn.Module,
    objective,
    batches: Batches,
    val_batches: list[dict],
    optimizer: torch.optim.Optimizer,
    scheduler,
    state: TrainState,
    tcfg,
    total_steps: int,
    device: torch.device,
    attention: str,
    autocast: Callable[[], AbstractContextManager],
    out: Path,
    metrics: MetricsLog,
    progress: Progress,
    throughput: Throughput,
    on_eval: Callable[[torch.nn.Module, int], object] | None = None,
    on_validated: Callable[[TrainState, torch.nn.Module], None] | None = None,
    dist: Dist | None = None,
    hooks=None,
) -> LoopResult:
    """Train until `total_steps` (or early stopping); `state` is updated in place and checkpointed with the model.

    `on_eval(model, step)` runs at every evaluation point (samples from fixed prompts); `on_validated(state, model)`
    runs after every tracked validation (`training.best` keeps the best weights with it). With `dist`, `model` is the
    DDP/FSDP2-wrapped module and `batches` plans global batches. `hooks` (`adapters.StepHooks`, e.g. AdaLoRA's) add a
    per-step loss term, work after each optimizer step and state to each checkpoint.
    """
    d = dist or Dist()
    params = [p for p in model.parameters() if p.requires_grad]
    result = LoopResult()
    last_eval_step = -1
    plan_epoch, plan = -1, []
    t_mark = time.perf_counter()  # wall time not yet added to state.elapsed
    model.train()
    while state.step < total_steps and not result.stopped_early:
        if plan_epoch != state.epoch:
            plan_epoch, plan = state.epoch, batches.plan(state.epoch)
        if state.batch >= len(plan):
            state.epoch, state.batch = state.epoch + 1, 0
            continue
        t_step = time.perf_counter()
        compiled_before = compile_count()
        window_idx = plan[state.batch : state.batch + tcfg.grad_accum]
        # This rank's slice of each global batch; an empty slice (short last batch) trains a zero-weight stand-in.
        mine = [d.shard(idx) for idx in window_idx]
        weights = [1.0 if idx else 0.0 for idx in mine]
        window = [batches.make(idx or global_idx[:1]) for idx, global_idx in zip(mine, window_idx, strict=True)]
        count = sum(objective.count(b) * int(w) for b, w in zip(window, weights, strict=True))
        if d.active:  # the whole step's normaliser, over every rank, before the first backward
            count = int(d.all_reduce_sum(torch.tensor(float(count))))
        step_loss = torch.zeros((), device=device)
        sums: dict[str, torch.Tensor] = {}
        for i, (batch, weight) in enumerate(zip(window, weights, strict=True)):
            with d.grad_sync(model, sync=i == len(window) - 1):
                with autocast():
                    loss_sum, step_metrics = objective(model, attention_inputs(batch, device, attention=attention))
                if weight == 0.0:
                    loss_sum = loss_sum * 0.0
                # Dividing by the whole window's count makes accumulation equal to one big batch; DDP and FSDP2
                # average gradients over ranks, so x world turns that average into the global sum.
                scaled = loss_sum / max(1, count)
                (scaled * d.world if d.world > 1 else scaled).backward()
            step_loss += loss_sum.detach().float()
            for name, value in step_metrics.items():
                sums[name] = sums.get(name, 0) + value.detach().float() * weight
        if d.active:  # the logged loss and metrics are global: one all-reduce of every sum
            names = sorted(sums)
            total = d.all_reduce_sum(torch.stack([step_loss.double()] + [sums[k].double() for k in names]))
            step_loss = total[0]
            sums = {k: total[1 + j] for j, k in enumerate(names)}
        extra = hooks.extra_loss(model) if hooks is not None else None
        if extra is not None:  # a regulariser of the weights: once per optimizer step, not per micro-batch
            extra.backward()
            sums["extra_loss"] = extra.detach().float() * max(1, count)  # reported as sum / count = extra
        grad_norm = None
        if tcfg.max_grad_norm > 0:
            grad_norm = grad_norm_value(torch.nn.utils.clip_grad_norm_(params, tcfg.max_grad_norm))
        loss_value = float(step_loss) / max(1, count)
        if not math.isfinite(loss_value) or (grad_norm is not None and not math.isfinite(grad_norm)):
            last = ckpt_mod.latest_checkpoint(out)
            raise ChatforgeError(
                f"step {state.step + 1}: the loss is {loss_value} (grad norm {grad_norm}); training stopped before "
                "applying it. Lower train.learning_rate or check the data"
                + (f"; the last good checkpoint is {last} (train.resume=auto continues from it)" if last else "")
            )
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        if hooks is not None:  # AdaLoRA reads this step's gradients: after the update, before they are zeroed
            hooks.after_optimizer_step(model, state.step + 1)
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        real = sum(batches.lengths[i] for idx in window_idx for i in idx)  # tokens processed, padding excluded
        docs = [n for idx in window_idx for i in idx for n in batches.doc_lengths[i]]
        state.step += 1
        state.batch += len(window)
        state.tokens += real
        state.trained_tokens += count
        result.steps_this_process += 1
        dt = time.perf_counter() - t_step
        throughput.record(real, dt, docs, compiled=compile_count() != compiled_before)
        result.last_train = dict(
            kind="train",
            step=state.step,
            epoch=state.epoch + state.batch / len(plan),
            loss=loss_value,
            **{name: float(v) / max(1, count) for name, v in sums.items()},
            lr=lr,
            grad_norm=grad_norm,
            tokens=state.tokens,
            step_time=dt,
            tok_per_s=real / max(dt, 1e-9),
        )
        if d.is_main:
            metrics.write(result.last_train)
        progress.update(state.step, loss_value, lr, throughput.steady_tok_per_s())

        step = state.step
        if tcfg.eval_every and step % tcfg.eval_every == 0 and step < total_steps:
            last_eval_step = step
            if on_eval is not None:
                on_eval(model, step)  # samples from the fixed prompts
        if val_batches and last_eval_step == step:
            result.last_eval = evaluate(model, objective, val_batches, device, autocast, d)
            if d.is_main:
                metrics.write(dict(kind="eval", step=step, **result.last_eval))
            progress.message(eval_line(step, result.last_eval))
            result.stopped_early = state.track_validation(
                result.last_eval["val_loss"], tcfg.early_stopping_patience, tcfg.early_stopping_min_delta
            )
            if on_validated is not None:
                on_validated(state, model)
        if tcfg.save_every and (step % tcfg.save_every == 0 or result.stopped_early):
            now = time.perf_counter()
            state.elapsed += now - t_mark
            t_mark = now
            ckpt_mod.save_checkpoint(
                out,
                step,
                model,
                optimizer,
                scheduler,
                state.to_dict(),
                tcfg.save_total_limit,
                dist=d,
                method_state=hooks.state(model) if hooks is not None else None,
            )
    state.elapsed += time.perf_counter() - t_mark

    if last_eval_step != state.step and result.steps_this_process and on_eval is not None:
        on_eval(model, state.step)
    if val_batches and last_eval_step != state.step and result.steps_this_process:
        result.last_eval = evaluate(model, objective, val_batches, device, autocast, d)
        if d.is_main:
            metrics.write(dict(kind="eval", step=state.step, **result.last_eval))
        progress.message(eval_line(state.step, result.last_eval))
        if not result.stopped_early:
            state.track_validation(
                result.last_eval["val_loss"], tcfg.early_stopping_patience, tcfg.early_stopping_min_delta
            )
            if on_validated is not None:
                on_validated(state, model)
    return result
