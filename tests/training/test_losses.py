"""trained_token_loss equals the standard HF cross-entropy, with and without peft, tied and untied embeddings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from chatforge.models.tiny import tiny_llama
from chatforge.training.losses import chunked_cross_entropy, trained_token_loss


def _batch(vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (3, 20), generator=g)
    labels = ids.clone()
    labels[:, :7] = -100  # a prompt
    labels[2, 15:] = -100  # padding
    mask = torch.ones_like(ids)
    mask[2, 15:] = 0
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("chunk", [5, 4096])
def test_matches_standard_cross_entropy_and_grads(tied, chunk):
    model = tiny_llama(300, tie_word_embeddings=tied)
    batch = _batch(300)
    out = model(**batch)
    n = (batch["labels"][:, 1:] != -100).sum()
    (out.loss * n).backward()
    ref_loss, ref_grads = out.loss.detach() * n, _grads(model)
    model.zero_grad(set_to_none=True)

    loss_sum, n_tokens, n_correct = trained_token_loss(model, batch, chunk_size=chunk)
    loss_sum.backward()
    assert n_tokens.item() == n.item()
    torch.testing.assert_close(loss_sum.detach(), ref_loss, rtol=1e-5, atol=1e-5)
    grads = _grads(model)
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    logits = out.logits[:, :-1][batch["labels"][:, 1:] != -100]
    assert n_correct.item() == (logits.argmax(-1) == batch["labels"][:, 1:][batch["labels"][:, 1:] != -100]).sum()


def test_peft_lora_model_including_lora_on_lm_head():
    from peft import LoraConfig, get_peft_model

    batch = _batch(300, seed=1)
    for targets in (["q_proj", "v_proj"], ["q_proj", "lm_head"]):
        model = get_peft_model(
            tiny_llama(300), LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
        )
        out = model(**batch)
        n = (batch["labels"][:, 1:] != -100).sum()
        (out.loss * n).backward()
        ref = _grads(model)
        model.zero_grad(set_to_none=True)
        loss_sum, _, _ = trained_token_loss(model, batch, chunk_size=7)
        loss_sum.backward()
        torch.testing.assert_close(loss_sum.detach(), out.loss.detach() * n, rtol=1e-5, atol=1e-5)
        got = _grads(model)
        assert got.keys() == ref.keys() and got
        for name, g in got.items():
            torch.testing.assert_close(g, ref[name], rtol=1e-4, atol=1e-6, msg=name)


def test_chunked_cross_entropy_no_grad_and_all_ignored():
    head = torch.nn.Linear(16, 50)
    h, y = torch.randn(33, 16), torch.randint(0, 50, (33,))
    with torch.no_grad():
        loss, correct = chunked_cross_entropy(h, head, y, chunk_size=8)
        logits = head(h)
    torch.testing.assert_close(loss, F.cross_entropy(logits, y, reduction="sum"))
    assert correct.item() == (logits.argmax(-1) == y).sum().item()
    model = tiny_llama(300)
    batch = _batch(300)
    batch["labels"][:] = -100
    loss_sum, n, _ = trained_token_loss(model, batch)
    assert n.item() == 0 and loss_sum.item() == 0.0
    loss_sum.backward()  # still differentiable, contributes zero
