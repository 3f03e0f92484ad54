"""Loss on trained tokens only, without ever materialising the full [tokens x vocab] logits.

`trained_token_loss` runs the model's own forward (so PEFT wrappers apply) up to the final hidden states, keeps
them only at positions whose (shifted) label is trained, and computes the cross-entropy over the output layer in chunks of rows. When the output layer is a plain
linear weight (frozen for LoRA, trained or tied to the embeddings for full fine-tuning) the chunks are fused: each
chunk's logits are turned into its gradients right away (softmax - one-hot), so only [chunk x vocab] floats ever
exist, in the forward and in the backward. Any other output module (e.g. a LoRA-wrapped lm_head) falls back to
per-chunk activation checkpointing, which recomputes the chunk's logits in the backward instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from chatforge.errors import NotSupportedError

IGNORE = -100


def _parts(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(decoder body, output layer) of a causal LM, also when wrapped by peft."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for name in ("final_logit_softcapping", "logit_scale"):
        if getattr(base.config, name, None) not in (None, 1.0):
            raise NotSupportedError(f"trained_token_loss does not apply {name}; use the model's own loss for it")
    return base.get_decoder(), base.get_output_embeddings()


def _ce_grad(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sum CE, n correct, dCE/dlogits = softmax - onehot) of one chunk, in fp32 math, gradient in logits' dtype."""
    x = logits.float()
    lse = torch.logsumexp(x, dim=-1)
    loss = (lse - x.gather(1, y[:, None]).squeeze(1)).sum()
    correct = (x.argmax(-1) == y).sum()
    p = (x - lse[:, None]).exp()
    # softmax - onehot as one elementwise expression, so the compiled kernel never materialises fp32 probabilities.
    hit = torch.arange(x.shape[1], device=x.device)[None, :] == y[:, None]
    return loss, correct, torch.where(hit, p - 1.0, p).to(logits.dtype)


_compiled_ce_grad = None


def _ce_chunk(logits: torch.Tensor, y: torch.Tensor):
    """On CUDA the chunk's softmax, loss, argmax and gradient fuse into two passes over the logits (torch.compile)."""
    global _compiled_ce_grad
    if not logits.is_cuda:
        return _ce_grad(logits, y)
    if _compiled_ce_grad is None:
        _compiled_ce_grad = torch.compile(_ce_grad, dynamic=True)
    return _compiled_ce_grad(logits, y)


class _FusedLinearCE(torch.autograd.Function):
    """sum_i CE(h_i @ W^T, y_i) with the gradients computed chunk by chunk during the forward (as Liger does)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_size):
        needs_w = weight.requires_grad
        grad_h = torch.empty_like(hidden) if hidden.requires_grad else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if needs_w else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if bias is not None and bias.requires_grad else None
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        for s in range(0, hidden.shape[0], chunk_size):
            h, y = hidden[s : s + chunk_size], targets[s : s + chunk_size]
            loss_c, correct_c, g = _ce_chunk(F.linear(h, weight, bias), y)
            loss += loss_c
            correct += correct_c
            if grad_h is not None:
                grad_h[s : s + chunk_size] = g @ weight
            if grad_w is not None:
                grad_w += (g.t() @ h).float()
            if grad_b is not None:
                grad_b += g.float().sum(0)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.param_dtype = weight.dtype
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    def backward(ctx, grad_loss, _grad_correct):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        scale = grad_loss.to(torch.float32)
        out_h = (grad_h * scale.to(grad_h.dtype)) if grad_h is not None else None
        out_w = (grad_w * scale).to(ctx.param_dtype) if grad_w is not None else None
        out_b = (grad_b * scale).to(ctx.param_dtype) if grad_b is not None else None
        return out_h, out_w, out_b, None, None


def _checkpointed_chunk(head: torch.nn.Module, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(h).float(), y, reduction="sum")


def chunked_cross_entropy(
    hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor, chunk_size: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of CE, number of correct argmax predictions) of `head(hidden)` against `targets`, chunk by chunk."""
    fusable = type(head) is torch.nn.Linear
    if fusable and torch.is_grad_enabled() and (hidden.requires_grad or head.weight.requires_grad):
        return _FusedLinearCE.apply(hidden, head.weight, head.bias, targets, chunk_size)
    loss = hidden.new_zeros((), dtype=torch.float32)
    correct = torch.zeros((), dtype=torch.long, device=hidden.device)
    for s in range(0, hidden.shape[0], chunk_size):
        h, y = hidden[s : s + chunk_size], targets[s : s + chunk_size]
        if torch.is_grad_enabled():
            loss = loss + checkpoint(_checkpointed_chunk, head, h, y, use_reentrant=False)
            with torch.no_grad():
                correct += (head(h).argmax(-1) == y).sum()
        else:
            logits = head(h).float()
            loss = loss + F.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(-1) == y).sum()
    return loss, correct


def final_hidden_states(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B, T, H] hidden states after the final norm, from the model's own forward (a PeftModel's included).

    Going through `model(...)` keeps whatever a wrapper adds there: PEFT's virtual tokens (prompt tuning, P-tuning)
    and prefix key/values, DDP's gradient hooks. The decoder's output is captured by a forward hook and the head runs
    on the last position only (`logits_to_keep=1`), so the full logits tensor is never built. Virtual tokens that a
    wrapper prepended are cut off again, so position t of the result belongs to input token t.
    """
    decoder, _ = _parts(model)
    captured: list[torch.Tensor] = []

    def keep_output(_module, _args, output):
        captured.append(output[0] if isinstance(output, tuple) else output.last_hidden_state)

    kwargs = {k: batch[k] for k in ("attention_mask", "position_ids") if batch.get(k) is not None}
    handle = decoder.register_forward_hook(keep_output)
    try:
        model(input_ids=batch["input_ids"], use_cache=False, logits_to_keep=1, **kwargs)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise NotSupportedError(f"expected one decoder pass per forward, saw {len(captured)}")
    hidden = captured[0]
    extra = hidden.shape[1] - batch["input_ids"].shape[1]
    return hidden[:, extra:] if extra > 0 else hidden


def trained_token_loss(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], chunk_size: int = 4096
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss_sum, n_tokens, n_correct) over the trained tokens of `batch` (HF-style unshifted labels, -100 = skip).

    batch holds input_ids and labels, optionally attention_mask (2D padding mask, 4D mask or BlockMask) and
    position_ids. Divide loss_sum by the number of trained tokens of the whole optimizer step (summed over
    micro-batches) to get the per-token mean, which makes packed and unpacked batches give the same gradient.
    """
    _, head = _parts(model)
    hidden = final_hidden_states(model, batch)
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    # Only rows that are trained go to the output layer: prompt and padding positions never get logits.
    h = hidden[:, :-1][keep]
    y = targets[keep]
    n_tokens = keep.sum()
    if y.numel() == 0:
        return hidden.sum() * 0.0, n_tokens, torch.zeros_like(n_tokens)
    loss_sum, n_correct = chunked_cross_entropy(h, head, y, chunk_size)
    return loss_sum, n_tokens, n_correct
