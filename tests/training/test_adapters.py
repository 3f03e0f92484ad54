"""Which parameters train under full, freeze and LoRA/DoRA, and clear errors for methods chatforge lacks."""

from __future__ import annotations

import pytest
from peft import PeftModel

from chatforge.errors import ChatforgeError, NotSupportedError
from chatforge.models.tiny import tiny_llama
from chatforge.training.adapters import apply_finetuning
from chatforge.training.config import PeftConfig


def trainable_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_full_trains_everything(tiny_tok):
    model = tiny_llama(len(tiny_tok))
    for p in model.parameters():
        p.requires_grad_(False)
    model, summary = apply_finetuning(model, PeftConfig(finetuning="full"))
    assert summary.trainable == summary.total == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("side,layer", [("last", "layers.1."), ("first", "layers.0.")])
def test_freeze_keeps_only_chosen_layers(tiny_tok, side, layer):
    model, summary = apply_finetuning(
        tiny_llama(len(tiny_tok)), PeftConfig(finetuning="freeze", freeze_layers=1, freeze_side=side)
    )
    names = trainable_names(model)
    assert names and all(layer in n for n in names)
    assert 0 < summary.trainable < summary.total


def test_freeze_named_modules_and_bad_name(tiny_tok):
    cfg = PeftConfig(finetuning="freeze", freeze_layers=0, trainable_modules=["lm_head", "model.norm"])
    model, _ = apply_finetuning(tiny_llama(len(tiny_tok)), cfg)
    assert trainable_names(model) == {"lm_head.weight", "model.norm.weight"}
    with pytest.raises(ChatforgeError, match="no_such_module"):
        apply_finetuning(
            tiny_llama(len(tiny_tok)), PeftConfig(finetuning="freeze", trainable_modules=["no_such_module"])
        )
    with pytest.raises(ChatforgeError, match="nothing trainable"):
        apply_finetuning(tiny_llama(len(tiny_tok)), PeftConfig(finetuning="freeze", freeze_layers=0))


def test_lora_all_linear_targets_every_linear_but_the_head(tiny_tok):
    model, summary = apply_finetuning(tiny_llama(len(tiny_tok)), PeftConfig(r=4, alpha=8, dropout=0.0))
    assert isinstance(model, PeftModel)
    names = trainable_names(model)
    assert all("lora_" in n for n in names)
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in names}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    lora_cfg = model.peft_config["default"]
    assert lora_cfg.r == 4 and lora_cfg.lora_alpha == 8
    assert summary.trainable < summary.total


def test_lora_named_targets_and_dora(tiny_tok):
    model, _ = apply_finetuning(tiny_llama(len(tiny_tok)), PeftConfig(target_modules=["q_proj", "v_proj"]))
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable_names(model)}
    assert adapted == {"q_proj", "v_proj"}
    dora, _ = apply_finetuning(tiny_llama(len(tiny_tok)), PeftConfig(target_modules=["q_proj"], use_dora=True))
    assert dora.peft_config["default"].use_dora
    assert any("lora_magnitude_vector" in n for n in trainable_names(dora))


def test_lora_unknown_target_is_a_user_error(tiny_tok):
    with pytest.raises(ChatforgeError, match="target_modules"):
        apply_finetuning(tiny_llama(len(tiny_tok)), PeftConfig(target_modules=["nope_proj"]))


@pytest.mark.parametrize("method", ["ia3", "dora"])
def test_unsupported_methods_name_the_supported_ones(tiny_tok, method):
    with pytest.raises(NotSupportedError, match="lora") as err:
        apply_finetuning(tiny_llama(len(tiny_tok)), PeftConfig(finetuning=method))
    assert "supported" in str(err.value) or "use_dora" in str(err.value)


def test_unknown_method(tiny_tok):
    with pytest.raises(ChatforgeError, match="full, freeze, lora"):
        apply_finetuning(tiny_llama(len(tiny_tok)), PeftConfig(finetuning="magic"))
