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


def _decoder_direct_loss(model, batch):
    """The loss as chatforge computed it before it went through PeftModel.forward: the decoder called directly."""
    base = model.get_base_model()
    hidden = base.get_decoder()(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    return chunked_cross_entropy(hidden[:, :-1][keep], base.get_output_embeddings(), targets[keep])[0]


def test_lora_loss_through_peft_forward_equals_the_decoder_direct_loss():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(tiny_llama(300), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # non-zero B so the adapter really changes the output
            torch.nn.init.normal_(p, std=0.2)
    batch = _batch(300)
    ours = trained_token_loss(model, batch)[0]
    ref = _decoder_direct_loss(model, batch)
    assert abs(float(ours) - float(ref)) <= 1e-6 * max(1.0, abs(float(ref)))


@pytest.mark.parametrize("method", ["prompt", "p_tuning", "prefix"])
def test_virtual_token_methods_equal_the_loss_from_peft_logits(method):
    """Prompt tuning / P-tuning add virtual tokens inside PeftModel.forward, prefix tuning adds key/values: the
    fused trained-token loss must equal the cross-entropy of the PeftModel's own logits on the same labels."""
    from peft import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, get_peft_model

    torch.manual_seed(0)
    base = tiny_llama(300)
    config = {
        "prompt": PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5),
        "p_tuning": PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=5, encoder_hidden_size=32),
        "prefix": PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5),
    }[method]
    model = get_peft_model(base, config)
    model.eval()  # no dropout: both computations see the same network
    batch = _batch(300)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits = logits[:, logits.shape[1] - batch["input_ids"].shape[1] :]  # drop the virtual positions
    targets = batch["labels"][:, 1:]
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, 300).float(), targets.reshape(-1), reduction="sum")
    with torch.no_grad():
        ours, n, _ = trained_token_loss(model, batch)
    assert int(n) == int((targets != -100).sum())
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-4)
    # and gradients reach the virtual-token parameters
    model.train()
    trained_token_loss(model, batch)[0].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)
