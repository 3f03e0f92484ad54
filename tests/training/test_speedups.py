"""Speed switches are exact (checkpointing changes no gradient) and no-ops where they cannot apply (CPU)."""

from __future__ import annotations

import pytest
import torch

from chatforge.errors import ChatforgeError
from chatforge.models.tiny import tiny_llama
from chatforge.training.config import TrainConfig
from chatforge.training.losses import trained_token_loss
from chatforge.training.optim import make_optimizer
from chatforge.training.speedups import SpeedConfig, apply_speedups, wrap_layers


def _grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss, n, _ = trained_token_loss(model, batch)
    (loss / n).backward()
    return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("lora", [False, True])
def test_checkpointing_keeps_loss_and_gradients(lora):
    from peft import LoraConfig, get_peft_model

    def make():
        m = tiny_llama(200, num_hidden_layers=4)
        if lora:
            m = get_peft_model(m, LoraConfig(r=4, target_modules=["q_proj", "up_proj"], init_lora_weights=False))
        return m

    x = torch.randint(0, 200, (2, 24), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": x, "labels": x}
    ref_loss, ref = _grads(make(), batch)
    model = make()
    names = [n for n, _ in model.named_parameters()]
    assert apply_speedups(model, SpeedConfig(checkpoint_ratio=0.5, compile_layers=True, liger=True)) == [
        "checkpoint 2/4 layers"  # compile and liger are CUDA-only: not applied on CPU
    ]
    assert [n for n, _ in model.named_parameters()] == names  # saved adapters keep their names
    loss, got = _grads(model, batch)
    torch.testing.assert_close(loss, ref_loss)
    assert got.keys() == ref.keys() and got
    for k in got:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-7, msg=k)


def test_defaults_change_nothing_and_bad_ratio_is_reported():
    model = tiny_llama(100)
    assert apply_speedups(model, SpeedConfig()) == []
    assert wrap_layers(model) == (0, False)
    tcfg = TrainConfig(learning_rate=1e-3)
    assert not make_optimizer(model, tcfg).defaults.get("fused")  # fused AdamW only on CUDA
    with pytest.raises(ChatforgeError, match="checkpoint_ratio"):
        SpeedConfig(checkpoint_ratio=1.5)
