"""`train.stage: rm`: a reward model, trained on chosen/rejected pairs with the pairwise Bradley-Terry loss.

What it does, and the keys that steer each part:
- model: the causal LM of `model.*` with a scalar score head instead of the LM head (`models.assembly`,
  `head="score"`): transformers' `*ForSequenceClassification` with `num_labels=1`, weights `score.weight`, so the
  saved model loads in plain transformers; the score is read at the last non-pad token
- method: `peft.finetuning` full | freeze | lora (LoRA: peft's `SEQ_CLS` task, the score head trains in full beside
  the adapter and is saved in it); virtual-token methods are refused
- data: preference pairs, read and encoded exactly as for dpo (`data.*`, `template.name|mask`); a pair's `margin`
  field, where the data has one, overrides `rm.margin`
- loss: -log s(s_chosen - s_rejected - margin) (`training.reward`); metrics: loss, accuracy, margin, score/chosen,
  score/rejected (per-pair means, also on validation as val_*)
- batches, validation, checkpoints, exact resume: as in dpo (one unit = one pair; packed is refused)
"""

from __future__ import annotations

import math
from collections import Counter

import torch

from chatforge.data.schema import PreferencePair
from chatforge.errors import ChatforgeError, DataError, NotSupportedError
from chatforge.training.batching import Batches
from chatforge.training.dataset import PairData, PairExample, encode_preferences, read_data
from chatforge.training.model_setup import check_single_process, prepare_model
from chatforge.training.packing import pad_batch
from chatforge.training.reward import RewardObjective
from chatforge.training.run_folder import open_run_folder
from chatforge.training.session import TrainResult, finished_run, run_session


def run(cfg) -> TrainResult:
    check_single_process()
    if cfg.train.batching == "packed":
        raise NotSupportedError("train.stage=rm: train.batching=packed is not supported; use length_grouped or random")
    folder = open_run_folder(cfg)
    try:
        if folder.finished_summary is not None:
            return finished_run(folder)
        raw = read_data(cfg)  # before the model loads: a bad record fails in seconds
        # Checked before the model loads; record numbers count within each list (train, then val).
        margins_given = any(_margin_of(r, i) is not None for recs in (raw.train, raw.val) for i, r in enumerate(recs))
        tm = prepare_model(cfg, head="score")
        stats = Counter(raw.stats)

        def encode(records):
            return encode_scored_pairs(
                records,
                tm.tokenizer,
                tm.template,
                mask=cfg.template.mask,
                max_length=cfg.data.max_length,
                stats=stats,
                default_margin=cfg.rm.margin,
            )

        (train, train_m), (val, val_m) = encode(raw.train), encode(raw.val)
        if not train:
            raise ChatforgeError(f"data.train: no usable preference pairs ({dict(stats) or 'files are empty'})")
        data = MarginPairData(train, val, stats, margins=train_m)
        pad_id = tm.tokenizer.pad_token_id
        batches = Batches(
            units=train,
            lengths=[len(q.chosen[0]) + len(q.rejected[0]) for q in train],
            doc_lengths=[[len(q.chosen[0]), len(q.rejected[0])] for q in train],
            batch_size=cfg.train.batch_size,
            mode=cfg.train.batching,
            seed=cfg.train.seed,
            make=lambda idx: score_batch(train, idx, pad_id, tm.pad_multiple, train_m if margins_given else None),
            pad_width=lambda n: -(-n // tm.pad_multiple) * tm.pad_multiple,
        )
        order = sorted(range(len(val)), key=lambda i: max(len(val[i].chosen[0]), len(val[i].rejected[0])))
        step = cfg.train.eval_batch_size
        val_batches = [
            score_batch(val, order[s : s + step], pad_id, 1, val_m if margins_given else None)
            for s in range(0, len(order), step)
        ]
        objective = RewardObjective(margin=cfg.rm.margin)
        return run_session(cfg, folder, tm, data, batches, val_batches, objective)
    finally:
        folder.close()


class MarginPairData(PairData):
    """PairData whose fingerprint also covers the per-pair margins (a resume on other margins is other data)."""

    def __init__(self, train, val, stats, margins: list[float]):
        super().__init__(train, val, stats)
        self.margins = margins

    def fingerprint(self) -> str:
        import hashlib

        base = super().fingerprint()
        if not any(self.margins):
            return base
        return hashlib.sha256((base + repr(self.margins)).encode()).hexdigest()[:16]


def _margin_of(rec, index: int) -> float | None:
    meta = getattr(rec, "meta", None) or {}
    value = meta.get("margin")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"margin must be a finite number, got {value!r}", file=meta.get("file"), record=index)
    return float(value)


def encode_scored_pairs(
    records: list, tokenizer, template, *, mask: str, max_length: int, stats: Counter, default_margin: float = 0.0
) -> tuple[list[PairExample], list[float]]:
    """Pairs encoded as for dpo (`encode_preferences`), with each kept pair's margin (its own, else the default)."""
    pairs: list[PairExample] = []
    margins: list[float] = []
    for i, rec in enumerate(records):
        if not isinstance(rec, PreferencePair):
            source = getattr(rec, "meta", {}).get("file")
            raise DataError(
                f"stage rm needs preference pairs (chosen/rejected), got {type(rec).__name__}", file=source, record=i
            )
        # One record at a time, so a pair dropped by max_length cannot shift the margins of the pairs after it.
        got = encode_preferences([rec], tokenizer, template, mask=mask, max_length=max_length, stats=stats)
        if got:
            own = _margin_of(rec, i)
            pairs.append(got[0])
            margins.append(default_margin if own is None else own)
    return pairs, margins


def score_batch(
    pairs: list[PairExample], idx: list[int], pad_id: int, pad_multiple: int, margins: list[float] | None = None
) -> dict:
    """2*len(idx) padded rows: the chosen sequences, then the rejected ones (+ the pairs' margins when given)."""
    rows = [pairs[i].chosen for i in idx] + [pairs[i].rejected for i in idx]
    batch = pad_batch(rows, pad_id, pad_to_multiple_of=pad_multiple)
    if margins is not None:
        batch["margin"] = torch.tensor([margins[i] for i in idx], dtype=torch.float32)
    return batch
