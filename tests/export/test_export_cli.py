"""`chatforge export` end to end on a tiny LoRA run: merged folder + GGUF + Modelfile, verified; int8/int4 HF."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from chatforge import cli
from chatforge.export.verify import verify_folder


def test_export_gguf_and_modelfile(base_and_adapter, tmp_path, capsys):
    base, adapter, peft_model, _ = base_and_adapter
    out = tmp_path / "demo"
    argv = ["export", "--model", str(base), "--adapter", str(adapter), "--output", str(out), "--gguf", "q8_0"]
    assert cli.main([*argv, "--ollama"]) == 0
    printed = capsys.readouterr().out
    assert "6/6 LoRA modules change the base" in printed and "chatforge verify" in printed
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "model-q8_0.gguf", "Modelfile", "SHA256SUMS", "chatforge_export.json"} <= names
    assert verify_folder(out).ok_files == sorted(names - {"SHA256SUMS"})
    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model-q8_0.gguf") and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert "PARAMETER num_ctx 2048" in modelfile
    # The GGUF holds the merged model (base + adapter), not the base.
    gguf_model = AutoModelForCausalLM.from_pretrained(str(out), gguf_file="model-q8_0.gguf").eval()
    x = torch.tensor([[1, 5, 9, 12, 40, 77, 300]])
    with torch.no_grad():
        assert (gguf_model(x).logits - peft_model(x).logits).abs().max() < 0.05
    assert cli.main(["verify", str(out)]) == 0


def test_ollama_needs_gguf_and_bad_adapter_is_clear(base_and_adapter, tmp_path, capsys):
    base, _, _, _ = base_and_adapter
    assert cli.main(["export", "--model", str(base), "--output", str(tmp_path / "o"), "--ollama"]) == 2
    assert "--ollama needs --gguf" in capsys.readouterr().err
    bad = ["export", "--model", str(base), "--adapter", str(tmp_path), "--output", str(tmp_path / "o")]
    assert cli.main(bad) == 2
    assert "adapter_config.json" in capsys.readouterr().err


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_quantized_hf_folder_loads_back(base_and_adapter, tmp_path, scheme):
    pytest.importorskip("torchao")
    base, adapter, peft_model, _ = base_and_adapter
    out = tmp_path / scheme
    argv = ["export", "--model", str(base), "--adapter", str(adapter), "--output", str(out), "--quantize", scheme]
    assert cli.main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "torchao"
    assert verify_folder(out).ok and not (out / ".unquantized").exists()
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("The quick brown fox jumps over the lazy dog. Hello world!", return_tensors="pt").input_ids
    with torch.no_grad():
        got, want = model(ids).logits.float(), peft_model(ids).logits
    assert (got - want).abs().mean() < (0.05 if scheme == "int8" else 0.2) * want.abs().mean()


def test_quantize_without_torchao_says_how_to_install(base_and_adapter, tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("torchao") is not None:
        pytest.skip("torchao is installed")
    base, _, _, _ = base_and_adapter
    assert cli.main(["export", "--model", str(base), "--output", str(tmp_path / "o"), "--quantize", "int8"]) == 2
    assert "pip install" in capsys.readouterr().err and not (tmp_path / "o").exists()
