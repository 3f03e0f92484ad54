"""`train.stage: grpo`: online RL on prompts; the policy samples G completions per prompt and Python reward
functions score them (see `training.grpo` for the objective, `training.rewards` for the functions).

What it does, and the keys that steer each part:
- model, method, precision, speed switches: as in sft (`model.*`, `peft.*`, `train.*`)
- data: prompt files (`data.train|val|val_size|max_samples|on_error`; `data.max_length` caps the prompt), read by
  `training.grpo_data`: messages / conversations (a final assistant turn dropped), alpaca, `prompt` or `question`;
  every other field is a column handed to the reward functions
- rewards: `grpo.rewards` (+ `grpo.reward_weights`, `grpo.format_pattern`, `grpo.length_limit`)
- sampling: `grpo.num_generations|max_new_tokens|temperature|top_p|top_k`
- loss: `grpo.beta|epsilon|epsilon_high|loss_type|scale_rewards|std_floor|num_iterations`
- reference (beta > 0): LoRA -> the same model with the adapter disabled; full / freeze -> a frozen copy of the
  starting weights (twice the weight memory)
- batches: `train.batch_size` prompts per micro-batch (x G completions), `train.grad_accum` micro-batches per step
- validation: greedy completions of the validation prompts, val_loss = -mean reward (early stopping works on it)
- checkpoints, exact resume (sampling RNG included): as in sft; with num_iterations > 1 a checkpoint must fall on a
  generation boundary (`train.save_every` a multiple of num_iterations)
"""

from __future__ import annotations

import copy
from collections import Counter

import torch

from chatforge.errors import ChatforgeError, NotSupportedError
from chatforge.training.batching import Batches
from chatforge.training.grpo import GrpoObjective, Rollout, WindowReuse
from chatforge.training.grpo_data import PromptData, encode_prompts, read_prompts
from chatforge.training.model_setup import check_single_process, prepare_model
from chatforge.training.rewards import load_rewards
from chatforge.training.run_folder import open_run_folder
from chatforge.training.session import TrainResult, finished_run, run_session


def run(cfg) -> TrainResult:
    check_single_process()
    gcfg, tcfg = cfg.grpo, cfg.train
    if tcfg.batching == "packed":
        raise NotSupportedError(
            "train.stage=grpo: train.batching=packed is not supported; use length_grouped or random"
        )
    if gcfg.num_iterations > 1 and tcfg.save_every % gcfg.num_iterations:
        raise ChatforgeError(
            f"train.save_every={tcfg.save_every} must be a multiple of grpo.num_iterations={gcfg.num_iterations}: "
            "a checkpoint between the updates of one generation batch could not resume exactly"
        )
    rewards = load_rewards(gcfg)  # before anything heavy: a bad reward spec fails at once
    folder = open_run_folder(cfg)
    try:
        if folder.finished_summary is not None:
            return finished_run(folder)
        resume = folder.resume_from
        if resume is not None and gcfg.num_iterations > 1 and resume.state.get("step", 0) % gcfg.num_iterations:
            raise ChatforgeError(
                f"cannot resume {resume.path}: step {resume.state.get('step')} is inside a generation batch "
                f"(grpo.num_iterations={gcfg.num_iterations})"
            )
        train_p, val_p, notes = read_prompts(cfg)  # before the model loads: a bad record fails in seconds
        tm = prepare_model(cfg)
        stats = Counter(notes)
        train = encode_prompts(train_p, tm.tokenizer, tm.template, max_length=cfg.data.max_length, stats=stats)
        val = encode_prompts(val_p, tm.tokenizer, tm.template, max_length=cfg.data.max_length, stats=stats)
        if not train:
            raise ChatforgeError(f"data.train: no usable prompts ({dict(stats)})")
        data = PromptData(train, val, stats)
        ref_model = None
        if gcfg.beta > 0 and not hasattr(tm.model, "disable_adapter"):
            # Full / freeze fine-tuning: no adapter to switch off, so the starting weights stay as a frozen copy
            # (made before a resume restores the checkpoint, so it is the same reference as the first run's).
            ref_model = copy.deepcopy(tm.model).eval()
            for p in ref_model.parameters():
                p.requires_grad_(False)
        from chatforge.templates.encode import stop_token_ids

        rollout = Rollout(
            model=tm.model,
            tokenizer=tm.tokenizer,
            gcfg=gcfg,
            rewards=rewards,
            prompts=train,
            val_prompts=val,
            stop_ids=stop_token_ids(tm.tokenizer, tm.template),
            device=tm.device,
            autocast=tm.autocast,
            chunk_size=tcfg.loss_chunk_size,
            ref_model=ref_model,
        )
        objective = GrpoObjective(
            rollout=rollout,
            beta=gcfg.beta,
            epsilon=gcfg.epsilon,
            epsilon_high=gcfg.epsilon_high,
            loss_type=gcfg.loss_type,
            max_new_tokens=gcfg.max_new_tokens,
            temperature=gcfg.temperature,
            chunk_size=tcfg.loss_chunk_size,
        )
        lengths = [len(p.ids) for p in train]
        # One window definition for both sides: the plan repeats each window and the maker reuses its rollouts.
        reuse = WindowReuse(rollout, window=tcfg.grad_accum, repeats=gcfg.num_iterations)
        batches = Batches(
            units=train,
            lengths=lengths,
            doc_lengths=[[n] * gcfg.num_generations for n in lengths],
            batch_size=tcfg.batch_size,
            mode=tcfg.batching,
            seed=tcfg.seed,
            make=reuse,
            pad_width=lambda n: n,
            repeat_window=reuse.window,
            repeats=reuse.repeats,
        )
        order = sorted(range(len(val)), key=lambda i: len(val[i].ids))
        val_batches = [
            {"val_index": torch.tensor(order[s : s + tcfg.eval_batch_size])}
            for s in range(0, len(order), tcfg.eval_batch_size)
        ]
        return run_session(cfg, folder, tm, data, batches, val_batches, objective)
    finally:
        folder.close()
