"""`train.stage: kto`: KTO on unpaired desirable / undesirable replies (see `training.kto` for the loss).

What it does, and the keys that steer each part:
- model, method, precision, speed switches: as in sft (`model.*`, `peft.*`, `train.*`)
- data: conversations whose last message is the reply, labelled desirable / undesirable by a boolean (`label`, or
  LLaMA-Factory's `kto_tag` column: `kto_en_demo.json` through `dataset_info.json` or read directly); preference
  pairs are split into a desirable (chosen) and an undesirable (rejected) example. The prompt is rendered with
  `template.name|mask` as in SFT and only the reply's tokens count
- loss: `kto.beta`, `kto.desirable_weight` (lambda_D), `kto.undesirable_weight` (lambda_U); the KL estimate comes
  from mismatched prompt / reply pairs inside each micro-batch, so `train.batch_size` must be at least 2
- reference: LoRA -> the same model with the adapter disabled; full / freeze -> a frozen copy of the starting
  weights (taken before a resume restores the checkpoint; twice the weights' memory)
- batches: one unit = one example; a micro-batch of P examples is 2P padded rows (packed is refused)
- validation, checkpoints, exact resume: as in sft; metrics: loss, kl, reward, margin, accuracy
"""

from __future__ import annotations

import copy
import hashlib
from collections import Counter

import numpy as np

from chatforge.errors import ChatforgeError, NotSupportedError
from chatforge.training.batching import Batches
from chatforge.training.dataset import TrainData, read_data
from chatforge.training.kto import KtoObjective, kto_batch, kto_examples
from chatforge.training.model_setup import check_single_process, prepare_model
from chatforge.training.run_folder import open_run_folder
from chatforge.training.session import TrainResult, finished_run, run_session


class KtoData(TrainData):
    """TrainData whose examples are `KtoExample`s; the fingerprint covers tokens and labels."""

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for ex in self.train:
            h.update(np.asarray(ex.prompt + ex.reply, dtype=np.int64).tobytes())
            h.update(np.asarray(ex.reply_labels, dtype=np.int64).tobytes())
            h.update(b"+" if ex.desirable else b"-")
        return h.hexdigest()[:16]


def run(cfg) -> TrainResult:
    check_single_process()
    if cfg.train.batching == "packed":
        raise NotSupportedError("train.stage=kto: train.batching=packed is not supported; use length_grouped or random")
    if cfg.train.batch_size < 2:
        raise ChatforgeError(
            "train.stage=kto: train.batch_size must be >= 2 (the KL estimate pairs each prompt with another "
            "example's reply from the same micro-batch)"
        )
    folder = open_run_folder(cfg)
    try:
        if folder.finished_summary is not None:
            return finished_run(folder)
        raw = read_data(cfg)  # before the model loads: a bad record fails in seconds
        tm = prepare_model(cfg)
        stats = Counter(raw.stats)

        def encode(records):
            return kto_examples(
                records, tm.tokenizer, tm.template, mask=cfg.template.mask, max_length=cfg.data.max_length, stats=stats
            )

        train, val = encode(raw.train), encode(raw.val)
        if not train:
            raise ChatforgeError(f"data.train: no usable KTO examples ({dict(stats) or 'files are empty'})")
        n_good = sum(ex.desirable for ex in train)
        stats[f"train examples: {n_good} desirable, {len(train) - n_good} undesirable"] += 1
        data = KtoData(train, val, stats)
        ref_model = None
        if not hasattr(tm.model, "disable_adapter"):
            # Full / freeze: no adapter to switch off, so the starting weights are kept as a frozen copy.
            ref_model = copy.deepcopy(tm.model).eval()
            for p in ref_model.parameters():
                p.requires_grad_(False)
        objective = KtoObjective(
            beta=cfg.kto.beta,
            desirable_weight=cfg.kto.desirable_weight,
            undesirable_weight=cfg.kto.undesirable_weight,
            chunk_size=cfg.train.loss_chunk_size,
            ref_model=ref_model,
        )
        pad_id, max_len = tm.tokenizer.pad_token_id, cfg.data.max_length
        batches = Batches(
            units=train,
            lengths=[len(ex) for ex in train],
            doc_lengths=[[len(ex)] for ex in train],
            batch_size=cfg.train.batch_size,
            mode=cfg.train.batching,
            seed=cfg.train.seed,
            make=lambda idx: kto_batch(train, idx, pad_id, max_len, tm.pad_multiple),
            pad_width=lambda n: -(-n // tm.pad_multiple) * tm.pad_multiple,
        )
        # Validation keeps the file order (shuffled by the split), not sorted by length: the mismatched KL rows
        # should pair unrelated prompts and replies, as in training.
        step = max(2, cfg.train.eval_batch_size)
        val_batches = [
            kto_batch(val, list(range(s, min(s + step, len(val)))), pad_id, max_len) for s in range(0, len(val), step)
        ]
        return run_session(cfg, folder, tm, data, batches, val_batches, objective)
    finally:
        folder.close()
