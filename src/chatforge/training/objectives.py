"""The step contract between a training stage and the shared loop.

An objective is any object with two methods:

    count(batch) -> int                          the batch's share of the step's normaliser (trained tokens, pairs)
    __call__(model, batch) -> (loss_sum, sums)   the loss summed over those units, plus metric sums (name -> tensor)

The loop adds `count` over the micro-batches of one optimizer step first, divides each micro-batch's `loss_sum` by
that total before `backward()` (so gradient accumulation and padding give the same gradient as one big batch), and
reports every metric as `sum / count`. A new stage (reward model, DPO, ...) is a new objective, not a loop branch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from chatforge.training.losses import IGNORE, trained_token_loss


@dataclass
class TokenObjective:
    """Next-token cross-entropy on the trained tokens (sft, pt); metric: next-token accuracy."""

    chunk_size: int = 4096
    reports_perplexity = True  # class attribute: validation adds val_ppl = exp(val_loss)

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["labels"][:, 1:] != IGNORE).sum())

    def __call__(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss_sum, _, n_correct = trained_token_loss(model, batch, chunk_size=self.chunk_size)
        return loss_sum, {"accuracy": n_correct}
