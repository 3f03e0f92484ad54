"""Merge: the saved model reproduces base + adapter, keeps the base's dtype, refuses no-op adapters, normal modes."""

from __future__ import annotations

import json
import stat
import subprocess

import pytest
import torch
from export_helpers import make_adapter, make_base
from transformers import AutoModelForCausalLM

from chatforge.errors import ChatforgeError
from chatforge.export.merge import export_merged, merge_model

X = torch.tensor([[1, 5, 9, 12, 40, 77, 300]])


def test_merged_folder_matches_base_plus_adapter(base_and_adapter, tmp_path):
    base, adapter, peft_model, _ = base_and_adapter
    with torch.no_grad():
        expected = peft_model(X).logits
    out = export_merged(str(base), str(adapter), tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert merged.dtype == torch.float32  # the base's dtype
    with torch.no_grad():
        assert torch.allclose(merged(X).logits, expected, atol=1e-5)
    # The merge changed the weights the adapter targets (and only those).
    base_model = AutoModelForCausalLM.from_pretrained(base)
    q = "model.layers.0.self_attn.q_proj.weight"
    k = "model.layers.0.self_attn.k_proj.weight"
    assert not torch.equal(merged.state_dict()[q], base_model.state_dict()[q])
    assert torch.equal(merged.state_dict()[k], base_model.state_dict()[k])
    info = json.loads((out / "chatforge_export.json").read_text())["merge"]
    assert info["lora_modules"] == info["changed_modules"] == 6 and info["max_diff_float32"] < 1e-4
    assert info["base"] == str(base)
    for path in [out, *out.iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == (0o755 if path.is_dir() else 0o644), path
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=out, capture_output=True, text=True)
    assert check.returncode == 0 and "model.safetensors: OK" in check.stdout, check.stdout + check.stderr


def test_bf16_base_exports_bf16_and_passes_same_dtype_check(tmp_path):
    model, tok = make_base(tmp_path / "base", dtype=torch.bfloat16)
    make_adapter(model.float(), tok, tmp_path / "adapter")
    merged, _, report = merge_model(str(tmp_path / "base"), str(tmp_path / "adapter"))
    assert merged.dtype == torch.bfloat16 and report.dtype == "bfloat16"
    assert report.error_saved_dtype is not None
    assert report.error_saved_dtype <= report.error_unmerged_same_dtype + 1e-2
    # --dtype overrides the base's.
    merged32, _, report32 = merge_model(str(tmp_path / "base"), str(tmp_path / "adapter"), "float32")
    assert merged32.dtype == torch.float32 and report32.error_saved_dtype is None


def test_untrained_adapter_is_refused(tmp_path):
    model, tok = make_base(tmp_path / "base")
    make_adapter(model, tok, tmp_path / "adapter", trained=False)
    with pytest.raises(ChatforgeError, match="unchanged"):
        export_merged(str(tmp_path / "base"), str(tmp_path / "adapter"), tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_update_below_bf16_resolution_is_refused(tmp_path):
    # A bf16 base (its weights are exact bf16 values) kept away from zero, where bf16 would resolve a tiny update.
    model, tok = make_base(tmp_path / "base")
    with torch.no_grad():
        for param in model.parameters():
            param.copy_((param.sign() * (param.abs() + 0.01)).to(torch.bfloat16))
    model.to(torch.bfloat16).save_pretrained(tmp_path / "base")
    model.float()
    peft_model = make_adapter(model, tok, tmp_path / "adapter")
    # Shrink every update to ~1e-6: float32 keeps it (ulp ~1e-9 here), bfloat16 (ulp >= 4e-5 here) cannot.
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            param.data *= 1e-6
    peft_model.save_pretrained(tmp_path / "adapter")
    _, _, report = merge_model(str(tmp_path / "base"), str(tmp_path / "adapter"), "float32")
    assert report.changed_modules == report.lora_modules == 6
    with pytest.raises(ChatforgeError, match="below the dtype's resolution"):
        merge_model(str(tmp_path / "base"), str(tmp_path / "adapter"))  # the base's dtype: bfloat16


def test_output_must_be_new(base_and_adapter, tmp_path):
    base, adapter, _, _ = base_and_adapter
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("keep me")
    with pytest.raises(ChatforgeError, match="not an empty folder"):
        export_merged(str(base), str(adapter), tmp_path / "taken")
    assert (tmp_path / "taken" / "x").read_text() == "keep me"
