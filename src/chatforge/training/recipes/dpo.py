"""`train.stage: dpo`: preference optimisation on chosen/rejected pairs with one of the DPO-family losses.

What it does, and the keys that steer each part:
- model, method, precision, speed switches: as in sft (`model.*`, `peft.*`, `train.*`)
- data: preference pairs (`data.train|val|val_size|max_length`): LLaMA-Factory `ranking` sharegpt/alpaca files,
  `messages` + `chosen`/`rejected` JSONL; the prompt is rendered with `template.name|mask` as in SFT and only the
  reply's tokens count
- loss: `dpo.loss` (sigmoid | ipo | hinge | orpo | simpo), `dpo.beta`, `dpo.label_smoothing`, `dpo.simpo_gamma`
- reference (sigmoid, ipo, hinge): LoRA -> the same model with the adapter disabled; full / freeze -> the reply
  log-probs of the starting weights, computed once before training (also on a resume: from the base weights,
  before the checkpoint is restored)
- batches: one unit = one pair; `train.batch_size` pairs make a batch of 2 x batch_size padded rows
  (`train.batching`: length_grouped | random; packed is refused)
- validation, checkpoints, exact resume: as in sft; metrics: loss, rewards/chosen, rewards/rejected, accuracy, margin
"""

from __future__ import annotations

from collections import Counter

import torch

from chatforge.errors import ChatforgeError, NotSupportedError
from chatforge.training.batching import Batches
from chatforge.training.dataset import PairData, PairExample, encode_preferences, read_data
from chatforge.training.model_setup import prepare_model
from chatforge.training.packing import pad_batch
from chatforge.training.preference import PreferenceObjective, precompute_reference
from chatforge.training.run_folder import open_run_folder
from chatforge.training.session import TrainResult, finished_run, run_session


def run(cfg) -> TrainResult:
    if cfg.train.batching == "packed":
        raise NotSupportedError("train.stage=dpo: train.batching=packed is not supported; use length_grouped or random")
    folder = open_run_folder(cfg)
    try:
        if folder.finished_summary is not None:
            return finished_run(folder)
        raw = read_data(cfg)  # before the model loads: a bad record fails in seconds
        tm = prepare_model(cfg)
        stats = Counter(raw.stats)

        def encode(records):
            return encode_preferences(
                records,
                tm.tokenizer,
                tm.template,
                mask=cfg.template.mask,
                max_length=cfg.data.max_length,
                stats=stats,
            )

        train, val = encode(raw.train), encode(raw.val)
        if not train:
            raise ChatforgeError(f"data.train: no usable preference pairs ({dict(stats) or 'files are empty'})")
        data = PairData(train, val, stats)
        objective = PreferenceObjective(
            loss=cfg.dpo.loss,
            beta=cfg.dpo.beta,
            label_smoothing=cfg.dpo.label_smoothing,
            gamma=cfg.dpo.simpo_gamma,
            chunk_size=cfg.train.loss_chunk_size,
        )
        pad_id = tm.tokenizer.pad_token_id
        ref_train = ref_val = None
        if objective.needs_reference and not hasattr(tm.model, "disable_adapter"):
            # Full / freeze fine-tuning: no adapter to switch off, so the starting weights' log-probs are kept.
            def ref(pairs):
                return precompute_reference(
                    tm.model,
                    pairs,
                    pad_id,
                    tm.device,
                    tm.autocast,
                    cfg.train.eval_batch_size,
                    cfg.train.loss_chunk_size,
                )

            ref_train, ref_val = ref(train), ref(val)
        batches = pair_batches(train, cfg.train, pad_id=pad_id, pad_multiple=tm.pad_multiple, ref=ref_train)
        val_batches = [
            batches_for(val, idx, pad_id, 1, ref_val)
            for idx in _chunks(sorted(range(len(val)), key=lambda i: _len(val[i])), cfg.train.eval_batch_size)
        ]
        return run_session(cfg, folder, tm, data, batches, val_batches, objective)
    finally:
        folder.close()


def _len(pair: PairExample) -> int:
    return max(len(pair.chosen[0]), len(pair.rejected[0]))


def _chunks(order: list[int], n: int) -> list[list[int]]:
    return [order[s : s + n] for s in range(0, len(order), n)]


def batches_for(pairs: list[PairExample], idx: list[int], pad_id: int, pad_multiple: int, ref=None) -> dict:
    """A padded batch of 2*len(idx) rows: the chosen sequences, then the rejected ones (+ reference log-probs)."""
    rows = [pairs[i].chosen for i in idx] + [pairs[i].rejected for i in idx]
    batch = pad_batch(rows, pad_id, pad_to_multiple_of=pad_multiple)
    if ref is not None:
        batch["ref_logps"] = torch.tensor([ref[i][0] for i in idx] + [ref[i][1] for i in idx], dtype=torch.float32)
    return batch


def pair_batches(pairs: list[PairExample], tcfg, *, pad_id: int, pad_multiple: int, ref=None) -> Batches:
    """Batch units for preference training: one unit per pair (its two sequences), padded rows."""
    # lengths count both sequences (the tokens processed); the padding fraction shown is approximate for pairs.
    return Batches(
        units=pairs,
        lengths=[len(q.chosen[0]) + len(q.rejected[0]) for q in pairs],
        doc_lengths=[[len(q.chosen[0]), len(q.rejected[0])] for q in pairs],
        batch_size=tcfg.batch_size,
        mode=tcfg.batching,
        seed=tcfg.seed,
        make=lambda idx: batches_for(pairs, idx, pad_id, pad_multiple, ref),
        pad_width=lambda n: -(-n // pad_multiple) * pad_multiple,
    )
