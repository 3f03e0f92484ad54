"""Preference objectives (stage dpo): the DPO family on chosen/rejected pairs, per the step contract of `objectives`.

A batch holds 2P rows: the P chosen sequences, then the P rejected ones (labels -100 outside the reply). The policy's
log-probability of each reply is summed over its trained tokens from the final hidden states, the output head run in
chunks over trained positions only (never the full [B, T, V] logits). `count(batch)` is P, so the loop reports every
metric as a per-pair mean.

Losses (h_w, h_r: summed reply log-probs of chosen / rejected; r_w, r_r: the reference's; a_w, a_r: per-token means):
- sigmoid (DPO, Rafailov et al. 2023; label smoothing as in cDPO): z = beta*((h_w - r_w) - (h_r - r_r)),
  loss = -(1 - ls) log s(z) - ls log s(-z)
- ipo (Azar et al. 2023): loss = ((h_w - r_w) - (h_r - r_r) - 1/(2 beta))^2, on summed log-probs as in the paper
- hinge (SLiC, Zhao et al. 2023): loss = max(0, 1 - z)
- orpo (Hong et al. 2024, no reference): loss = -a_w + beta * -log s(log odds(a_w) - log odds(a_r)),
  odds(a) = e^a / (1 - e^a)
- simpo (Meng et al. 2024, no reference): z = beta*(a_w - a_r) - gamma, loss = -(1 - ls) log s(z) - ls log s(-z)

The reference: for LoRA the same model with its adapter disabled (no second copy); for full / freeze fine-tuning the
log-probs precomputed once before training (`ref_logps` in the batch, see `precompute_reference`).
Reported rewards: beta*(h - r) for the reference losses, beta*a for orpo and simpo.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from chatforge.errors import NotSupportedError
from chatforge.training.losses import IGNORE, _parts, final_hidden_states

LOSSES = ("sigmoid", "ipo", "hinge", "orpo", "simpo")
NEEDS_REFERENCE = {"sigmoid", "ipo", "hinge"}


def _chunk_logps(head: torch.nn.Module, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = head(h).float()
    return x.gather(1, y[:, None]).squeeze(1) - torch.logsumexp(x, dim=-1)


def sequence_logps(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], chunk_size: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-prob of the trained tokens per row [B] in fp32, trained tokens per row [B])."""
    _, head = _parts(model)
    hidden = final_hidden_states(model, batch)
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    rows = keep.nonzero()[:, 0]
    h, y = hidden[:, :-1][keep], targets[keep]
    out = hidden.new_zeros(targets.shape[0], dtype=torch.float32)
    parts = []
    for s in range(0, h.shape[0], chunk_size):
        hc, yc = h[s : s + chunk_size], y[s : s + chunk_size]
        # Checkpointed under grad, so each chunk's [chunk x vocab] logits are recomputed in the backward, not kept.
        parts.append(
            checkpoint(_chunk_logps, head, hc, yc, use_reentrant=False)
            if torch.is_grad_enabled()
            else _chunk_logps(head, hc, yc)
        )
    if parts:
        out = out.index_add(0, rows, torch.cat(parts))
    else:
        out = out + hidden.sum() * 0.0
    return out, keep.sum(1)


def reference_logps(model: torch.nn.Module, batch: dict, chunk_size: int = 4096) -> torch.Tensor:
    """The reference's summed reply log-probs: the model with its (peft) adapter disabled, without gradients."""
    if not hasattr(model, "disable_adapter"):
        raise NotSupportedError("the adapter-disabled reference needs a peft (LoRA) model")
    with torch.no_grad(), model.disable_adapter():
        return sequence_logps(model, batch, chunk_size)[0]


def pair_losses(
    loss: str,
    pc: torch.Tensor,
    pr: torch.Tensor,
    nc: torch.Tensor,
    nr: torch.Tensor,
    rc: torch.Tensor | None,
    rr: torch.Tensor | None,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    gamma: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-pair loss [P], chosen reward [P], rejected reward [P]) from summed log-probs and token counts."""
    if loss in NEEDS_REFERENCE:
        d_c, d_r = pc - rc, pr - rr
        h = d_c - d_r
        z = beta * h
        if loss == "sigmoid":
            out = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
        elif loss == "ipo":
            out = (h - 1 / (2 * beta)) ** 2
        else:
            out = torch.relu(1 - z)
        return out, (beta * d_c).detach(), (beta * d_r).detach()
    ac, ar = pc / nc.clamp(min=1), pr / nr.clamp(min=1)
    if loss == "orpo":
        # log odds(a) = a - log(1 - e^a); log1p(-exp) is accurate for a close to 0
        log_odds = (ac - ar) - (torch.log1p(-torch.exp(ac)) - torch.log1p(-torch.exp(ar)))
        out = -ac - beta * F.logsigmoid(log_odds)
    elif loss == "simpo":
        z = beta * (ac - ar) - gamma
        out = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    else:
        raise NotSupportedError(f"dpo.loss={loss!r}: choose one of {', '.join(LOSSES)}")
    return out, (beta * ac).detach(), (beta * ar).detach()


@dataclass
class PreferenceObjective:
    """The DPO family on pair batches (chosen rows, then rejected rows); metrics: rewards, accuracy, margin."""

    loss: str = "sigmoid"
    beta: float = 0.1
    label_smoothing: float = 0.0
    gamma: float = 0.5
    chunk_size: int = 4096

    @property
    def needs_reference(self) -> bool:
        return self.loss in NEEDS_REFERENCE

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["input_ids"].shape[0] // 2

    def __call__(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        p = self.count(batch)
        logps, n = sequence_logps(model, batch, self.chunk_size)
        ref = None
        if self.needs_reference:
            ref = batch["ref_logps"] if "ref_logps" in batch else reference_logps(model, batch, self.chunk_size)
            ref = ref.float()
        loss, rw_c, rw_r = pair_losses(
            self.loss,
            logps[:p],
            logps[p:],
            n[:p],
            n[p:],
            None if ref is None else ref[:p],
            None if ref is None else ref[p:],
            beta=self.beta,
            label_smoothing=self.label_smoothing,
            gamma=self.gamma,
        )
        metrics = {
            "rewards/chosen": rw_c.sum(),
            "rewards/rejected": rw_r.sum(),
            "accuracy": (rw_c > rw_r).float().sum(),
            "margin": (rw_c - rw_r).sum(),
        }
        return loss.sum(), metrics


@torch.no_grad()
def precompute_reference(
    model: torch.nn.Module, pairs: list, pad_id: int, device, autocast, batch_size: int, chunk_size: int = 4096
) -> list[tuple[float, float]]:
    """(chosen, rejected) summed reply log-probs of the model as it is now, for every pair (full / freeze FT)."""
    from chatforge.training.packing import pad_batch

    was_training = model.training
    model.eval()
    out: list[tuple[float, float]] = []
    for s in range(0, len(pairs), batch_size):
        chunk = pairs[s : s + batch_size]
        batch = pad_batch([q.chosen for q in chunk] + [q.rejected for q in chunk], pad_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast():
            lp = sequence_logps(model, batch, chunk_size)[0].float().cpu().tolist()
        out.extend(zip(lp[: len(chunk)], lp[len(chunk) :]))
    model.train(was_training)
    return out
