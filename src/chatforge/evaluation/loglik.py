"""Log-likelihood of continuations given a shared context, computed with the context encoded once.

A multiple-choice item is one context (instructions, few-shot examples, question) and k option continuations. The
naive way runs k sequences of context + option; here the contexts of a batch of items run once (left-padded, with a
KV cache), the first token of every option is scored from the context's last position, and only the remaining option
tokens run again, on top of the cache rows repeated per option. For one-token options (MMLU's " A".." D") the second
pass disappears: an item costs one forward of its context. Only the scored positions reach the output layer.

Tokenisation follows the harness convention (lm-evaluation-harness's `_encode_pair`): trailing spaces of the context
move to the continuation, the pair is encoded whole, and the continuation is what follows the context's own tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class Request:
    """One context and its continuations, as token ids."""

    context: list[int]
    continuations: list[list[int]]


def _split_spaces(context: str, continuation: str) -> tuple[str, str]:
    """Trailing spaces of the context move to the continuation (the harness convention)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        return context[:-n_spaces], context[-n_spaces:] + continuation
    return context, continuation


def _encode_all(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, no special tokens: one batched call (a fast tokenizer encodes it on all cores)."""
    if not texts:
        return []
    return list(tokenizer(texts, add_special_tokens=False)["input_ids"])


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) such that their concatenation is the encoding of context + continuation."""
    context, continuation = _split_spaces(context, continuation)
    whole = tokenizer.encode(context + continuation, add_special_tokens=False)
    ctx = tokenizer.encode(context, add_special_tokens=False)
    return ctx, whole[len(ctx) :]


def build_request(tokenizer, context: str, continuations: Sequence[str], prefix_id: int | None = None) -> Request:
    """A Request: the context's ids (the same for every option, since trailing spaces always move the same way) and
    each option's continuation ids."""
    return build_requests(tokenizer, [(context, continuations)], prefix_id)[0]


def build_requests(
    tokenizer, items: Sequence[tuple[str, Sequence[str]]], prefix_id: int | None = None
) -> list[Request]:
    """build_request for many (context, continuations) items, with every text encoded in one batched call.

    Same ids as `encode_pair` per option: each context is encoded once (not once per option) and each context +
    option whole; the continuation is what follows the context's own tokens. For 5-shot MMLU the per-text Python
    loop was most of the GPU run's time (about 8 encodes of a 2,500-character prompt per item)."""
    texts: list[str] = []
    plan = []
    for context, continuations in items:
        split = [_split_spaces(context, c) for c in continuations]
        ctx_text = split[0][0] if split else context.rstrip()
        plan.append((len(texts), len(split)))
        texts.append(ctx_text)
        texts.extend(ctx + cont for ctx, cont in split)
    ids = _encode_all(tokenizer, texts)
    out = []
    for start, n in plan:
        ctx_ids = ids[start]
        conts = [ids[start + 1 + j][len(ctx_ids) :] for j in range(n)]
        if not ctx_ids:  # an empty context: condition on the end-of-text token, as harnesses do
            ctx_ids = [prefix_id if prefix_id is not None else (tokenizer.eos_token_id or 0)]
        out.append(Request(list(ctx_ids), [list(k) for k in conts]))
    return out


def _parts(model: torch.nn.Module):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base, base.get_decoder(), base.get_output_embeddings(), getattr(base.config, "final_logit_softcapping", None)


def _cache_kw(decoder) -> str:
    """The forward keyword for a KV cache: `cache` in newer transformers, `past_key_values` before it."""
    import inspect

    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


def _logprobs(head, softcap, hidden: torch.Tensor) -> torch.Tensor:
    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return torch.log_softmax(logits, dim=-1)


@torch.inference_mode()
def score_batch(model: torch.nn.Module, requests: list[Request], pad_id: int, max_length: int) -> list[list[float]]:
    """Sum of log p(continuation | context) for every continuation of every request (one shared context pass)."""
    from transformers import DynamicCache

    base, decoder, head, softcap = _parts(model)
    device = next(model.parameters()).device
    # Left-truncate so context + the longest continuation fit the model (continuation tokens are always kept).
    ctxs = []
    for r in requests:
        longest = max((len(c) for c in r.continuations), default=1)
        keep = max(1, max_length - max(longest - 1, 0))
        ctxs.append(r.context[-keep:])
    width = max(len(c) for c in ctxs)
    ids = torch.full((len(requests), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(requests), width), dtype=torch.long)
    for i, c in enumerate(ctxs):
        ids[i, width - len(c) :] = torch.tensor(c, dtype=torch.long)
        mask[i, width - len(c) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    cache = DynamicCache(config=base.config)
    out = decoder(
        input_ids=ids,
        attention_mask=mask,
        position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
        use_cache=True,
        **{_cache_kw(decoder): cache},
    )
    first = _logprobs(head, softcap, out.last_hidden_state[:, -1])  # [B, V]: predicts each option's first token
    scores = [[float(first[i, c[0]]) if c else 0.0 for c in r.continuations] for i, r in enumerate(requests)]
    # Options longer than one token: feed tokens [:-1] of each on its own copy of the context's cache rows.
    rows = [(i, j) for i, r in enumerate(requests) for j, c in enumerate(r.continuations) if len(c) > 1]
    if not rows:
        return scores
    cache.batch_select_indices(torch.tensor([i for i, _ in rows], device=device))
    length = max(len(requests[i].continuations[j]) for i, j in rows) - 1
    cont = torch.full((len(rows), length), pad_id, dtype=torch.long)
    cmask = torch.zeros((len(rows), length), dtype=torch.long)
    for r, (i, j) in enumerate(rows):
        toks = requests[i].continuations[j][:-1]
        cont[r, : len(toks)] = torch.tensor(toks, dtype=torch.long)
        cmask[r, : len(toks)] = 1
    cont, cmask = cont.to(device), cmask.to(device)
    ctx_len = mask.sum(-1)[torch.tensor([i for i, _ in rows], device=device)]
    full_mask = torch.cat([mask[[i for i, _ in rows]], cmask], dim=1)
    pos = ctx_len[:, None] + torch.arange(length, device=device)[None, :]
    hidden = decoder(
        input_ids=cont, attention_mask=full_mask, position_ids=pos, use_cache=True, **{_cache_kw(decoder): cache}
    ).last_hidden_state
    keep = cmask.bool()
    targets = torch.zeros_like(cont)
    for r, (i, j) in enumerate(rows):
        toks = requests[i].continuations[j][1:]
        targets[r, : len(toks)] = torch.tensor(toks, dtype=torch.long, device=device)
    lp = _logprobs(head, softcap, hidden[keep]).gather(-1, targets[keep][:, None])[:, 0]
    row_of = torch.arange(len(rows), device=device)[:, None].expand_as(keep)[keep]
    sums = torch.zeros(len(rows), device=device, dtype=torch.float32).index_add_(0, row_of, lp)
    for r, (i, j) in enumerate(rows):
        scores[i][j] += float(sums[r])
    return scores


def score_requests(
    model: torch.nn.Module,
    requests: list[Request],
    pad_id: int,
    max_length: int,
    batch_size: int = 16,
    progress=None,
) -> list[list[float]]:
    """score_batch over batches of similar context length (longest first, so memory peaks at the start)."""
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i].context))
    out: list[list[float]] = [[] for _ in requests]
    for s in range(0, len(order), batch_size):
        chunk = order[s : s + batch_size]
        for i, res in zip(chunk, score_batch(model, [requests[i] for i in chunk], pad_id, max_length)):
            out[i] = res
        if progress is not None:
            progress(min(s + batch_size, len(order)), len(order))
    return out


@torch.inference_mode()
def score_naive(model: torch.nn.Module, context: list[int], continuation: list[int]) -> float:
    """Reference: log p(continuation | context) from one plain forward of the whole sequence (tests compare)."""
    ids = torch.tensor([context + continuation], device=next(model.parameters()).device)
    logits = model(input_ids=ids).logits[0].float()
    lp = torch.log_softmax(logits[len(context) - 1 : -1], dim=-1)
    return float(lp.gather(-1, torch.tensor(continuation, device=ids.device)[:, None]).sum())
