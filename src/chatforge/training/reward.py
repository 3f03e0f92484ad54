"""Reward-model objective (stage rm): the pairwise Bradley-Terry loss on scalar scores, per the step contract of
`objectives`.

A batch holds 2P rows: the P chosen sequences (prompt + chosen reply), then the P rejected ones, as in stage dpo.
The model is a sequence-classification model with one label (`models.assembly`, `head="score"`); its own forward
reads the score at the rightmost non-pad token, so training, `chatforge eval` and `/v1/score` all score exactly as
a plain transformers load of the saved model does.

Loss per pair (s_w, s_r: scores of chosen / rejected; m: the margin, `rm.margin` or the pair's own `margin`):

    loss = -log sigmoid(s_w - s_r - m)

(Bradley-Terry; the margin variant as in Llama 2's reward model). `count(batch)` is P, so every metric is a per-pair
mean: accuracy (s_w > s_r), margin (s_w - s_r), score/chosen, score/rejected.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def sequence_scores(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B] fp32 scores of a padded batch (a score-head model; the head is read at the last non-pad token)."""
    kwargs = {k: batch[k] for k in ("attention_mask",) if batch.get(k) is not None}
    out = model(input_ids=batch["input_ids"], use_cache=False, **kwargs)
    return out.logits[:, 0].float()


def pair_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | float = 0.0) -> torch.Tensor:
    """[P] Bradley-Terry losses -log s(chosen - rejected - margin)."""
    return -F.logsigmoid(chosen - rejected - margin)


@dataclass
class RewardObjective:
    """Bradley-Terry on pair batches (chosen rows, then rejected rows); `margin` unless the batch carries its own."""

    margin: float = 0.0

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["input_ids"].shape[0] // 2

    def __call__(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        p = self.count(batch)
        scores = sequence_scores(model, batch)
        chosen, rejected = scores[:p], scores[p:]
        margin = batch["margin"].float() if "margin" in batch else self.margin
        loss = pair_loss(chosen, rejected, margin)
        diff = (chosen - rejected).detach()
        metrics = {
            "accuracy": (diff > 0).float().sum(),
            "margin": diff.sum(),
            "score/chosen": chosen.detach().sum(),
            "score/rejected": rejected.detach().sum(),
        }
        return loss.sum(), metrics
