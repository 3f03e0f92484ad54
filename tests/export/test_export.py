"""Export: a merged LoRA model gives the same logits as base + adapter, with checksums; unsupported asks fail clearly."""

from __future__ import annotations

import subprocess

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from chatforge.errors import NotSupportedError
from chatforge.export.commands import export_merged, main
from chatforge.models.tiny import tiny_llama, tiny_tokenizer


def test_merged_model_matches_base_plus_adapter(tmp_path):
    tok = tiny_tokenizer()
    base = tiny_llama(len(tok))
    base.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    x = torch.tensor([[1, 5, 9, 12, 40]])
    with torch.no_grad():
        expected = peft_model(x).logits
    out = export_merged(str(tmp_path / "base"), str(tmp_path / "adapter"), tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        assert torch.allclose(merged(x).logits, expected, atol=1e-5)
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=out, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "model.safetensors: OK" in check.stdout


def test_quantize_and_gguf_are_reported_not_supported(tmp_path):
    with pytest.raises(NotSupportedError):
        main(["--model", "x", "--output", str(tmp_path / "o"), "--gguf"])
