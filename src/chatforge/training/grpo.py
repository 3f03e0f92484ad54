"""GRPO (group relative policy optimisation, Shao et al. 2024): sampling, group advantages and the clipped loss.

One generation batch is `train.batch_size` prompts, each sampled `num_generations` (G) times by the current policy
(`model.generate`: eval mode, no grad, KV cache, left-padded prompts). Every reward function scores every completion;
the weighted sum r is normalised inside each prompt's group: A = (r - mean_g) / max(std_g, std_floor) (unbiased std;
`scale_rewards=false` keeps r - mean_g, as Dr. GRPO). On completion tokens only (prompt and padding masked, a
completion ends at and includes its first stop token):

    ratio = exp(logp - logp_old),  l = -min(ratio * A, clip(ratio, 1 - eps, 1 + eps_high) * A) + beta * KL
    KL (k3 estimator, Schulman 2020) = exp(logp_ref - logp) - (logp_ref - logp) - 1

logp is at the sampling temperature (logits / T). With `num_iterations` = 1 logp_old is logp itself, detached (the
ratio is 1, the gradient is the policy gradient); with more, the samples are reused for that many optimizer steps
and logp_old is computed once when they are drawn. The reference is the model with its adapter disabled (LoRA: no
second copy) or a frozen copy of the starting weights (full / freeze). Loss normalisation (`loss_type`):
grpo = token mean per completion, then mean over completions; bnpo = token mean over the micro-batch;
dr_grpo = token sum / (completions x max_new_tokens).

The loop's step contract holds (`training.objectives`): `count(batch)` is the number of completions, the loss and
every metric are sums that the loop divides by it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch.utils.checkpoint import checkpoint

from chatforge.training.losses import _parts, final_hidden_states
from chatforge.training.rewards import Reward, score

METRIC = "m:"  # batch keys carrying metric sums computed at generation time


def group_advantages(
    rewards: torch.Tensor, group_size: int, *, scale: bool = True, std_floor: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages [N], group std [N // G]) from rewards [N] laid out group by group (G consecutive per prompt)."""
    r = rewards.float().view(-1, group_size)
    mean = r.mean(1, keepdim=True)
    std = r.std(1, keepdim=True)  # unbiased, as in the paper's implementations
    adv = r - mean
    if scale:
        adv = adv / std.clamp(min=std_floor)
    return adv.reshape(-1), std.squeeze(1)


def token_losses(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    ref_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    *,
    beta: float,
    epsilon: float,
    epsilon_high: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Per-token (loss [N, C], KL [N, C] or None, clip-active mask [N, C]) of the clipped surrogate (+ beta * k3)."""
    hi = epsilon if epsilon_high is None else epsilon_high
    ratio = torch.exp(logps - old_logps)
    a = advantages[:, None]
    unclipped, clipped = ratio * a, torch.clamp(ratio, 1 - epsilon, 1 + hi) * a
    loss = -torch.min(unclipped, clipped)
    kl = None
    if beta > 0 and ref_logps is not None:
        d = ref_logps - logps
        kl = torch.exp(d) - d - 1
        loss = loss + beta * kl
    # The clip is active where the clipped term is the smaller one, i.e. the token gives no gradient.
    active = ((ratio < 1 - epsilon) & (a < 0)) | ((ratio > 1 + hi) & (a > 0))
    return loss, kl, active


def reduce_loss(per_token: torch.Tensor, mask: torch.Tensor, loss_type: str, max_new_tokens: int) -> torch.Tensor:
    """The micro-batch's loss as a sum over completions (the loop divides by the number of completions)."""
    m = mask.to(per_token.dtype)
    n_seq = per_token.shape[0]
    if loss_type == "grpo":
        return ((per_token * m).sum(1) / m.sum(1).clamp(min=1)).sum()
    if loss_type == "bnpo":
        return (per_token * m).sum() / m.sum().clamp(min=1) * n_seq
    if loss_type == "dr_grpo":
        return (per_token * m).sum() / max_new_tokens
    raise ValueError(f"grpo.loss_type={loss_type!r}")


def _token_logps(head: torch.nn.Module, h: torch.Tensor, y: torch.Tensor, temperature: float) -> torch.Tensor:
    x = head(h).float() / temperature
    return x.gather(1, y[:, None]).squeeze(1) - torch.logsumexp(x, dim=-1)


def completion_logps(
    model: torch.nn.Module, batch: dict, *, temperature: float = 1.0, chunk_size: int = 4096
) -> torch.Tensor:
    """[N, C] log-probs (fp32) of the completion tokens (positions >= prompt_width), 0 where the mask is 0. The head
    runs in chunks over the kept tokens only, checkpointed under grad, so [N, C, V] logits never exist."""
    _, head = _parts(model)
    hidden = final_hidden_states(model, batch)
    p = int(batch["prompt_width"])
    y = batch["input_ids"][:, p:]
    keep = batch["completion_mask"].bool()
    h, yk = hidden[:, p - 1 : -1][keep], y[keep]
    parts = []
    for s in range(0, h.shape[0], chunk_size):
        hc, yc = h[s : s + chunk_size], yk[s : s + chunk_size]
        if torch.is_grad_enabled():
            parts.append(checkpoint(_token_logps, head, hc, yc, temperature, use_reentrant=False))
        else:
            parts.append(_token_logps(head, hc, yc, temperature))
    out = torch.zeros(keep.shape, dtype=torch.float32, device=hidden.device)
    if parts:
        return out.masked_scatter(keep, torch.cat(parts))
    return out + hidden.sum() * 0.0


@dataclass
class Rollout:
    """Draws and scores the completions of a generation batch and builds the training batch from them."""

    model: torch.nn.Module
    tokenizer: object
    gcfg: object
    rewards: list[Reward]
    prompts: list  # training Prompts
    val_prompts: list
    stop_ids: list[int]
    device: torch.device
    autocast: object  # () -> context manager
    chunk_size: int = 4096
    ref_model: torch.nn.Module | None = None  # full / freeze: a frozen copy; LoRA: None (adapter disabled)

    def reference(self):
        if self.ref_model is not None:
            return contextlib.nullcontext(self.ref_model)
        if hasattr(self.model, "disable_adapter"):
            return _disabled(self.model)
        raise RuntimeError("no reference model")  # guarded by the recipe (beta > 0 needs one)

    def generate(self, prompts: list, *, greedy: bool = False, max_new_tokens: int | None = None) -> dict:
        """Sampled (or greedy) completions: input_ids [N, P + C], attention_mask, position_ids, completion_mask."""
        g = 1 if greedy else self.gcfg.num_generations
        pad = self.tokenizer.pad_token_id
        width = max(len(p.ids) for p in prompts)
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        pmask = torch.zeros((len(prompts), width), dtype=torch.long)
        for b, p in enumerate(prompts):  # left padding: every completion starts at column `width`
            ids[b, width - len(p.ids) :] = torch.tensor(p.ids)
            pmask[b, width - len(p.ids) :] = 1
        sampling = (
            dict(do_sample=False)
            if greedy
            else dict(do_sample=True, temperature=self.gcfg.temperature, top_p=self.gcfg.top_p, top_k=self.gcfg.top_k)
        )
        model = self.model
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), self.autocast():
                out = model.generate(
                    input_ids=ids.to(self.device),
                    attention_mask=pmask.to(self.device),
                    max_new_tokens=max_new_tokens or self.gcfg.max_new_tokens,
                    num_return_sequences=g,
                    pad_token_id=pad,
                    eos_token_id=self.stop_ids,
                    use_cache=True,
                    **sampling,
                )
        finally:
            model.train(was_training)
        comp = out[:, width:]
        is_stop = torch.isin(comp, torch.tensor(self.stop_ids, device=comp.device))
        # Everything after the first stop token is padding; the stop token itself is part of the completion.
        after_stop = (is_stop.long().cumsum(1) - is_stop.long()) > 0
        cmask = (~after_stop).long()
        attention = torch.cat([pmask.to(comp.device).repeat_interleave(g, 0), cmask], 1)
        return dict(
            input_ids=out,
            attention_mask=attention,
            position_ids=(attention.cumsum(1) - 1).clamp(min=0),
            completion_mask=cmask,
            prompt_width=torch.tensor(width),
            stopped=is_stop.any(1),
        )

    def texts(self, batch: dict) -> tuple[list[str], list[list[int]]]:
        p = int(batch["prompt_width"])
        stops = set(self.stop_ids)
        texts, ids = [], []
        for row, m in zip(batch["input_ids"][:, p:].tolist(), batch["completion_mask"].tolist()):
            toks = [t for t, k in zip(row, m) if k]
            if toks and toks[-1] in stops:
                toks = toks[:-1]
            ids.append(toks)
            texts.append(self.tokenizer.decode(toks, skip_special_tokens=True))
        return texts, ids

    def score(self, prompts: list, batch: dict, g: int) -> torch.Tensor:
        """[N, F] rewards of each completion under each reward function."""
        completions, comp_ids = self.texts(batch)
        keys = sorted({k for p in prompts for k in p.columns})
        columns = {k: [p.columns.get(k) for p in prompts for _ in range(g)] for k in keys}
        columns["completion_ids"] = comp_ids
        texts = [p.text for p in prompts for _ in range(g)]
        table = score(self.rewards, texts, completions, columns)
        return torch.tensor(table, dtype=torch.float32).T

    def weights(self) -> torch.Tensor:
        return torch.tensor([r.weight for r in self.rewards], dtype=torch.float32)

    def make(self, idx: list[int]) -> dict:
        """One training micro-batch: G samples for each prompt in `idx`, rewards, advantages, old / reference logps."""
        g, gcfg = self.gcfg.num_generations, self.gcfg
        prompts = [self.prompts[i] for i in idx]
        batch = self.generate(prompts)
        table = self.score(prompts, batch, g)
        total = table @ self.weights()
        adv, group_std = group_advantages(total, g, scale=gcfg.scale_rewards, std_floor=gcfg.std_floor)
        batch["advantages"] = adv.to(self.device)
        stopped = batch.pop("stopped")
        n = total.shape[0]
        with torch.no_grad(), self.autocast():
            was_training = self.model.training
            self.model.eval()
            try:
                if gcfg.num_iterations > 1:
                    batch["old_logps"] = self._logps(self.model, batch)
                if gcfg.beta > 0:
                    with self.reference() as ref:
                        batch["ref_logps"] = self._logps(ref, batch)
            finally:
                self.model.train(was_training)
        metrics = {"reward": total.sum(), "reward_std": group_std.sum() * g, "truncated": (~stopped).float().sum()}
        for f, r in enumerate(self.rewards):
            metrics[f"reward/{r.name}"] = table[:, f].sum()
            metrics[f"reward/{r.name}_std"] = table[:, f].std(unbiased=False) * n
        metrics["completion_length"] = batch["completion_mask"].sum().float()
        for k, v in metrics.items():
            batch[METRIC + k] = v.detach().float().cpu()
        return batch

    def _logps(self, model, batch: dict) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if not k.startswith(METRIC)}
        return completion_logps(model, inputs, temperature=self.gcfg.temperature, chunk_size=self.chunk_size)

    def evaluate(self, idx: list[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Greedy completions of validation prompts: (-reward sum, reward sums per function)."""
        prompts = [self.val_prompts[i] for i in idx]
        batch = self.generate(prompts, greedy=True, max_new_tokens=self.gcfg.eval_max_new_tokens)
        table = self.score(prompts, batch, 1)
        total = table @ self.weights()
        metrics = {"reward": total.sum()}
        for f, r in enumerate(self.rewards):
            metrics[f"reward/{r.name}"] = table[:, f].sum()
        metrics["completion_length"] = batch["completion_mask"].sum().float()
        return -total.sum(), metrics


@contextlib.contextmanager
def _disabled(model):
    with model.disable_adapter():
        yield model


@dataclass
class GrpoObjective:
    """The GRPO loss on rollout batches; validation batches (`val_index`) are scored greedily instead."""

    rollout: Rollout
    beta: float = 0.04
    epsilon: float = 0.2
    epsilon_high: float | None = None
    loss_type: str = "grpo"
    max_new_tokens: int = 128
    temperature: float = 1.0
    chunk_size: int = 4096

    def count(self, batch: dict) -> int:
        if "val_index" in batch:
            return len(batch["val_index"])
        return batch["input_ids"].shape[0]

    def __call__(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if "val_index" in batch:
            return self.rollout.evaluate(batch["val_index"].tolist())
        inputs = {k: v for k, v in batch.items() if not k.startswith(METRIC)}
        logps = completion_logps(model, inputs, temperature=self.temperature, chunk_size=self.chunk_size)
        old = batch.get("old_logps")
        old = logps.detach() if old is None else old
        mask = batch["completion_mask"]
        per_token, kl, active = token_losses(
            logps,
            old,
            batch.get("ref_logps"),
            batch["advantages"].float(),
            beta=self.beta,
            epsilon=self.epsilon,
            epsilon_high=self.epsilon_high,
        )
        loss = reduce_loss(per_token, mask, self.loss_type, self.max_new_tokens)
        m = mask.float()
        n_tok = m.sum(1).clamp(min=1)
        metrics = {k[len(METRIC) :]: v for k, v in batch.items() if k.startswith(METRIC)}
        metrics["clip_fraction"] = ((active.float() * m).sum(1) / n_tok).sum().detach()
        if kl is not None:
            metrics["kl"] = ((kl * m).sum(1) / n_tok).sum().detach()
        return loss, metrics


@dataclass
class WindowReuse:
    """`Batches.make` for num_iterations > 1: the plan repeats each window of `window` batches `repeats` times in a
    row (`Batches.repeat_window` / `repeats`); the first pass of a window generates its rollouts and the repeats
    reuse them, so every iteration optimizes on the same samples."""

    rollout: Rollout
    window: int = 1
    repeats: int = 1
    _calls: int = 0
    _slots: dict = field(default_factory=dict)

    def __call__(self, idx: list[int]) -> dict:
        if self.repeats == 1:
            return self.rollout.make(idx)
        pos = self._calls % (self.window * self.repeats)
        self._calls += 1
        if pos < self.window:
            self._slots[pos] = self.rollout.make(idx)
        return self._slots[pos % self.window]
