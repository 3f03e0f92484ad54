"""KTO (stage kto; Ethayarajh et al. 2024): unpaired desirable / undesirable replies, per the step contract of
`objectives`.

An example is a prompt and one reply with a boolean label (desirable or not). A batch of P examples holds 2P padded
rows: the P matched sequences (prompt_i + reply_i), then P mismatched ones (prompt_i + reply_{i+1 mod P}), whose
policy-vs-reference log-ratio estimates the KL term as the paper does (the batch's mismatched pairs stand in for
samples of y' ~ pi(.|x)). With h = log pi(y|x) - log ref(y|x) summed over the reply's trained tokens:

    z0   = max(0, mean over the mismatched rows of h), no gradient
    loss = lambda_D * (1 - s(beta * (h - z0)))   for a desirable reply
           lambda_U * (1 - s(beta * (z0 - h)))   for an undesirable one

`count(batch)` is P, so the reported loss is the per-example mean. Metrics: kl (z0), reward (beta*h), margin
(beta*(h - z0) signed by the label: positive = the loss's own sense of "right way"), accuracy (share of replies whose
reward has the label's sign: desirable ones made likelier than under the reference, undesirable ones less likely). The reference: LoRA -> the same model with the adapter disabled; full / freeze -> a frozen
copy of the starting weights (`ref_model`). A batch of one example has no other reply to mismatch with: its KL row
is its own reply (the estimate is then the example's own log-ratio); `train.batch_size` must be >= 2.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch

from chatforge.training.losses import IGNORE
from chatforge.training.packing import pad_batch
from chatforge.training.preference import reference_logps, sequence_logps


@dataclass
class KtoExample:
    """A prompt's tokens (never trained) and one reply's tokens + labels, with its desirable / undesirable label."""

    prompt: list[int]
    reply: list[int]
    reply_labels: list[int]
    desirable: bool

    def __len__(self) -> int:
        return len(self.prompt) + len(self.reply)


def kto_losses(
    policy: torch.Tensor,
    reference: torch.Tensor,
    kl: torch.Tensor,
    desirable: torch.Tensor,
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-example loss [P], signed margin [P]) from summed reply log-probs and the KL estimate z0 (a scalar)."""
    h = policy - reference
    z = beta * (h - kl)
    signed = torch.where(desirable, z, -z)
    weight = torch.where(
        desirable, torch.as_tensor(desirable_weight, dtype=h.dtype), torch.as_tensor(undesirable_weight, dtype=h.dtype)
    )
    return weight * (1 - torch.sigmoid(signed)), signed.detach()


def kl_estimate(policy_kl: torch.Tensor, reference_kl: torch.Tensor) -> torch.Tensor:
    """z0: the mean log-ratio over the mismatched rows, clamped at 0 and detached (no gradient flows through it)."""
    return (policy_kl - reference_kl).mean().clamp(min=0).detach()


def _fit(prompt: list[int], reply: list[int], labels: list[int], max_length: int):
    """Fit prompt + reply into max_length: the reply keeps at least half of it (or all of itself), the prompt its end."""
    if len(prompt) + len(reply) <= max_length:
        return prompt, reply, labels
    keep = min(len(reply), max(max_length - len(prompt), max_length // 2))
    reply, labels = reply[:keep], labels[:keep]
    return prompt[len(prompt) - (max_length - keep) :] if max_length > keep else [], reply, labels


def kto_batch(examples: list[KtoExample], idx: list[int], pad_id: int, max_length: int, pad_multiple: int = 1) -> dict:
    """2*len(idx) padded rows: matched prompt+reply, then prompt_i + reply_{i+1} (the KL rows); plus the labels."""
    chosen = [examples[i] for i in idx]
    rows = []
    for k, ex in enumerate(chosen + chosen):
        reply_ex = ex if k < len(chosen) else chosen[(k + 1) % len(chosen)]
        p, r, lab = _fit(ex.prompt, reply_ex.reply, reply_ex.reply_labels, max_length)
        rows.append((p + r, [IGNORE] * len(p) + lab))
    batch = pad_batch(rows, pad_id, pad_to_multiple_of=pad_multiple)
    batch["kto_desirable"] = torch.tensor([ex.desirable for ex in chosen], dtype=torch.bool)
    return batch


@dataclass
class KtoObjective:
    """KTO on batches from `kto_batch`; `ref_model` (a frozen copy) for full / freeze, else the adapter is disabled."""

    beta: float = 0.1
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    chunk_size: int = 4096
    ref_model: torch.nn.Module | None = field(default=None, repr=False)

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["input_ids"].shape[0] // 2

    def _reference(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        if self.ref_model is None:
            return reference_logps(model, batch, self.chunk_size).float()
        with torch.no_grad():
            return sequence_logps(self.ref_model, batch, self.chunk_size)[0].float()

    def __call__(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        p = self.count(batch)
        rows = {k: v for k, v in batch.items() if k != "kto_desirable"}
        matched = {k: v[:p] for k, v in rows.items()}
        mismatched = {k: v[p:] for k, v in rows.items()}
        policy, _ = sequence_logps(model, matched, self.chunk_size)
        with torch.no_grad():
            policy_kl, _ = sequence_logps(model, mismatched, self.chunk_size)
        ref, ref_kl = self._reference(model, matched), self._reference(model, mismatched)
        kl = kl_estimate(policy_kl.float(), ref_kl)
        loss, signed = kto_losses(
            policy.float(),
            ref,
            kl,
            batch["kto_desirable"],
            beta=self.beta,
            desirable_weight=self.desirable_weight,
            undesirable_weight=self.undesirable_weight,
        )
        reward = (self.beta * (policy.float() - ref)).detach()
        right_way = torch.where(batch["kto_desirable"], reward > 0, reward < 0)
        metrics = {
            "kl": kl * p,
            "reward": reward.sum(),
            "margin": signed.sum(),
            "accuracy": right_way.float().sum(),
        }
        return loss.sum(), metrics


def kto_examples(records: list, tokenizer, template, *, mask: str, max_length: int, stats: Counter) -> list[KtoExample]:
    """Encode KTO examples: a conversation whose last message is the reply and whose `meta["kto_label"]` says
    desirable (true) or not (false); a preference pair gives two examples (chosen desirable, rejected undesirable).
    Prompt messages never train; only the reply's tokens count."""
    from dataclasses import replace

    from chatforge.data.schema import Conversation, PreferencePair
    from chatforge.errors import DataError
    from chatforge.templates import encode_conversation

    out: list[KtoExample] = []
    for i, rec in enumerate(records):
        meta = getattr(rec, "meta", None) or {}
        if isinstance(rec, PreferencePair):
            stats["preference pairs split into a desirable and an undesirable example"] += 1
            items = [(rec.prompt, rec.chosen, True), (rec.prompt, rec.rejected, False)]
        elif isinstance(rec, Conversation):
            label = meta.get("kto_label")
            if not isinstance(label, bool):
                raise DataError(
                    "stage kto needs a true/false label per example (`label` / LLaMA-Factory `kto_tag`) or "
                    "preference pairs (chosen/rejected)",
                    file=meta.get("file"),
                    record=i,
                )
            if not rec.messages or rec.messages[-1].role != "assistant":
                raise DataError(
                    "stage kto: the last message must be the assistant's reply", file=meta.get("file"), record=i
                )
            items = [(Conversation(rec.messages[:-1], tools=rec.tools, meta=rec.meta), rec.messages[-1], label)]
        else:
            raise DataError(
                f"stage kto needs labelled conversations or preference pairs, got {type(rec).__name__}",
                file=meta.get("file"),
                record=i,
            )
        for prompt_conv, reply, label in items:
            prompt = [replace(m, train=False) for m in prompt_conv.messages]
            conv = Conversation([*prompt, replace(reply, train=None)], tools=prompt_conv.tools, meta=prompt_conv.meta)
            enc = encode_conversation(conv, tokenizer, template, mask)
            ids, labels = list(enc.input_ids), list(enc.labels())
            k = next((j for j, t in enumerate(labels) if t != IGNORE), len(labels))
            if k >= len(labels):
                stats["examples dropped: the reply has no trained tokens"] += 1
                continue
            ex = KtoExample(ids[:k], ids[k:], labels[k:], label)
            if len(ex) > max_length:
                stats["examples truncated to max_length (prompt cut from the left, reply from the right)"] += 1
                p, r, lab = _fit(ex.prompt, ex.reply, ex.reply_labels, max_length)
                ex = KtoExample(p, r, lab, label)
            out.append(ex)
    return out
