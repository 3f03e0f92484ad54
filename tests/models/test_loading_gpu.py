"""Model loading on CUDA: dtype 'auto' picks bfloat16, weights land on the GPU, outputs match the CPU model."""

from __future__ import annotations

import pytest
import torch

from chatforge.models.loading import build_model_from_init, load_model, load_model_and_tokenizer, resolve_dtype
from chatforge.models.tiny import tiny_llama

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _needs_cuda(tmp_path, monkeypatch):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    monkeypatch.setenv("CHATFORGE_HOME", str(tmp_path / "home"))


def test_auto_dtype_and_device(tmp_path, tiny_tok):
    ref = tiny_llama(len(tiny_tok), seed=4)
    ref.save_pretrained(tmp_path / "m")
    tiny_tok.save_pretrained(tmp_path / "m")
    assert resolve_dtype("auto", "cuda") == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32)
    model = load_model(tmp_path / "m", dtype="auto", device="cuda")
    assert model.device.type == "cuda" and model.dtype == resolve_dtype("auto", "cuda")
    model32, tok = load_model_and_tokenizer(tmp_path / "m", dtype="float32", device="auto")
    ids = torch.tensor([tok("Hello world! The quick brown fox")["input_ids"]])
    with torch.no_grad():
        cpu = ref(ids).logits
        gpu = model32(ids.cuda()).logits.cpu()
        low = model(ids.cuda()).logits.float().cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(low, cpu, rtol=0.1, atol=0.1)
    scratch = build_model_from_init({"hidden_size": 32}, tok, dtype="bfloat16", device="cuda")
    assert scratch.device.type == "cuda" and scratch.dtype == torch.bfloat16
