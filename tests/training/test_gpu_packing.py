"""On CUDA in bf16: packed loss equals the unpacked mean (SDPA mask and FlexAttention); compile+checkpoint is exact."""

from __future__ import annotations

import pytest
import torch

from chatforge.models.tiny import tiny_llama
from chatforge.training.losses import trained_token_loss
from chatforge.training.packing import attention_inputs, collate, pack
from chatforge.training.speedups import wrap_layers

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def _examples(vocab, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(5, vocab, (n,), generator=g).tolist()
        out.append((ids, [-100] * (n // 3) + ids[n // 3 :]))
    return out


def _model(attn):
    m = tiny_llama(512, hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2)
    m = m.to("cuda", torch.bfloat16).eval()
    m.config._attn_implementation = attn
    return m


@pytest.mark.parametrize("attn", ["mask", "flex"])
def test_packed_equals_unpacked_bf16(attn):
    ex = _examples(512, [37, 90, 5, 200, 64, 128, 17, 250, 3, 99], seed=1)
    model = _model("flex_attention" if attn == "flex" else "sdpa")
    rows = pack(ex, max_length=256)
    batch = attention_inputs(collate(rows, pad_id=0, attention=attn, pad_to=256), "cuda", attention=attn)
    with torch.no_grad():
        loss, n, _ = trained_token_loss(model, batch)
        ref_model = _model("sdpa")
        ref_sum, ref_n = torch.zeros((), device="cuda"), 0
        for ids, labels in ex:
            b = {"input_ids": torch.tensor([ids], device="cuda"), "labels": torch.tensor([labels], device="cuda")}
            s, k, _ = trained_token_loss(ref_model, b)
            ref_sum += s
            ref_n += int(k)
    assert int(n) == ref_n
    torch.testing.assert_close((loss / n).float(), ref_sum / ref_n, rtol=1e-3, atol=1e-3)


def test_compiled_checkpointed_layers_match_eager_bf16():
    x = torch.randint(0, 512, (2, 128), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    batch = {"input_ids": x, "labels": x}
    grads = []
    for wrap in (False, True):
        model = _model("sdpa").train()
        if wrap:
            assert wrap_layers(model, checkpoint_ratio=0.5, compile=True) == (1, True)
        for _ in range(2):  # second step runs the compiled graphs warm
            model.zero_grad(set_to_none=True)
            loss, n, _ = trained_token_loss(model, batch)
            (loss / n).backward()
        grads.append((loss.float() / n, {k: p.grad.float() for k, p in model.named_parameters()}))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=2e-3, atol=2e-3)
    for k, g in grads[0][1].items():
        rel = (grads[1][1][k] - g).norm() / g.norm().clamp_min(1e-12)
        assert rel < 3e-2, (k, rel.item())
