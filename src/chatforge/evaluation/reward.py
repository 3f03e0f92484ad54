"""The `reward` eval task: a reward model (trained with `train.stage: rm`) on held-out preference pairs.

Each pair is encoded exactly as training encodes it (`training.dataset.encode_preferences`: the template, the mask,
`data.max_length` with the same truncation) and both sequences are scored by the model's own score head (the last
non-pad token, as `training.reward.sequence_scores`). Metrics: pair accuracy (chosen scored strictly higher; a tie
counts as wrong) with its 95% Wilson interval, and the mean margin (chosen - rejected) with a 95% normal interval.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from chatforge.data.schema import PreferencePair
from chatforge.errors import ChatforgeError, DataError
from chatforge.evaluation import metrics as M


def reward_items(records: Sequence[Any]) -> list:
    from chatforge.evaluation.tasks import Item, _where

    items = []
    for i, rec in enumerate(records):
        if not isinstance(rec, PreferencePair):
            raise DataError(
                f"the reward task needs preference pairs (chosen/rejected), got a {type(rec).__name__}",
                file=_where(rec),
                record=i,
            )
        items.append(Item(_where(rec), prompt=rec.prompt, record=rec))
    return items


def is_score_model(model: torch.nn.Module) -> bool:
    """True for a reward model (a `*ForSequenceClassification` with one label), also under peft."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return type(base).__name__.endswith("ForSequenceClassification") and getattr(base.config, "num_labels", 0) == 1


def mean_with_ci(values: Sequence[float], z: float = 1.959964) -> tuple[float, float, float]:
    """(mean, low, high): the 95% normal interval of the mean (sample standard deviation; (mean, mean) for n < 2)."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    mean = sum(values) / n
    if n < 2:
        return mean, mean, mean
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = z * sd / math.sqrt(n)
    return mean, mean - half, mean + half


@torch.no_grad()
def score_pairs(model, pairs: list, pad_id: int, batch_size: int) -> list[tuple[float, float]]:
    """(chosen score, rejected score) of each encoded pair, in batches of `batch_size` pairs."""
    from chatforge.training.packing import pad_batch
    from chatforge.training.reward import sequence_scores

    device = next(model.parameters()).device
    out: list[tuple[float, float]] = []
    for s in range(0, len(pairs), batch_size):
        chunk = pairs[s : s + batch_size]
        batch = pad_batch([q.chosen for q in chunk] + [q.rejected for q in chunk], pad_id)
        batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        scores = sequence_scores(model, batch).cpu().tolist()
        out.extend(zip(scores[: len(chunk)], scores[len(chunk) :]))
    return out


def run_reward(items: list, ctx) -> Any:
    """Pair accuracy and mean margin of a reward model on held-out preference pairs."""
    from dataclasses import replace

    from chatforge.evaluation.tasks import TaskResult, _with_system
    from chatforge.training.dataset import encode_preferences

    model, tok = ctx.engine.model, ctx.engine.tokenizer
    if not is_score_model(model):
        raise ChatforgeError(
            "the reward task needs a reward model (a score head, trained with train.stage=rm); "
            f"{type(model).__name__} is a causal LM"
        )
    kept, pairs, stats = [], [], Counter()
    for item in items:
        rec = replace(item.record, prompt=_with_system(item.record.prompt, ctx.default_system))
        got = encode_preferences([rec], tok, ctx.engine.template, mask=ctx.mask, max_length=ctx.max_length, stats=stats)
        if got:
            kept.append(item)
            pairs.append(got[0])
    if not pairs:
        raise ChatforgeError(f"the reward task: no pair fits data.max_length={ctx.max_length} ({dict(stats)})")
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    was_training = model.training
    model.eval()
    scores = score_pairs(model, pairs, pad_id, ctx.cfg.batch_size)
    model.train(was_training)
    margins = [c - r for c, r in scores]
    acc = M.accuracy_with_ci([m > 0 for m in margins])
    mean, lo, hi = mean_with_ci(margins)
    metrics = {
        "pair_accuracy": acc["accuracy"],
        "pair_accuracy_ci95_low": acc["ci95"][0],
        "pair_accuracy_ci95_high": acc["ci95"][1],
        "mean_margin": mean,
        "mean_margin_ci95_low": lo,
        "mean_margin_ci95_high": hi,
    }
    preds = [
        {"source": it.source, "chosen_score": c, "rejected_score": r, "margin": c - r, "correct": c - r > 0}
        for it, (c, r) in zip(kept, scores)
    ]
    worst = sorted(preds, key=lambda p: p["margin"])[: ctx.cfg.show_examples]
    details = {"pairs": len(pairs), "correct": acc["correct"], "notes": dict(stats)}
    return TaskResult(metrics, details, preds, {"lowest_margin": worst})
