"""QLoRA on the tiny Llama: the base's linear layers become frozen bitsandbytes 4-bit NF4 layers (double quantisation,
bf16 compute) under LoRA, the loss falls on CPU (bitsandbytes' CPU backend) and on CUDA, the saved adapter is plain
LoRA that reloads onto a re-quantised base to the same logits and merges into a dense one, a resumed run equals an
uninterrupted one, and a missing bitsandbytes is a clear NotSupportedError."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch
from train_helpers import losses, run_config, tiny_model_dir

from chatforge.errors import NotSupportedError
from chatforge.training import session, train

bnb = pytest.importorskip("bitsandbytes")

QLORA = ["peft.finetuning=qlora", "train.learning_rate=3e-2", "train.max_steps=20", "train.save_every=8"]
PROBE = torch.tensor([[5, 17, 33, 2, 9, 41, 12, 7]])


def _logits(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=PROBE, attention_mask=torch.ones_like(PROBE)).logits.float()


def test_base_is_nf4_with_double_quant_and_lora_on_top():
    from chatforge.models.tiny import tiny_llama
    from chatforge.training.adapters import apply_finetuning
    from chatforge.training.config import PeftConfig

    base = tiny_llama(300)
    dense = {n: m.weight.detach().clone() for n, m in base.named_modules() if isinstance(m, torch.nn.Linear)}
    model, summary = apply_finetuning(base, PeftConfig(finetuning="qlora", r=4))
    quantised = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantised) == len(dense) - 1  # every linear layer but the output head
    for m in quantised:
        assert m.weight.quant_type == "nf4" and m.weight.compress_statistics
        assert m.compute_dtype == torch.bfloat16 and not m.weight.requires_grad
    # LoRA wraps each 4-bit layer; only the LoRA matrices train.
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    assert summary.trainable == sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    # 4-bit weights count as the values they hold (not their packed bytes): the same totals as plain LoRA.
    _, plain = apply_finetuning(tiny_llama(300), PeftConfig(finetuning="lora", r=4))
    assert (summary.total, summary.trainable) == (plain.total, plain.trainable)
    # NF4 keeps the weights to within its 16-level grid, scaled per block of 64 by the block's absmax.
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    w = bnb.functional.dequantize_4bit(q_proj.weight.data, q_proj.weight.quant_state).float()
    ref = dense["model.layers.0.self_attn.q_proj"]
    assert (w - ref).abs().max() <= 0.2 * ref.abs().max() and not torch.equal(w, ref)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("qlora")
    seen = {}
    real_save = session.save_final

    def save_and_probe(out, model, *args, **kwargs):
        seen["logits"] = _logits(model)
        model.train()
        return real_save(out, model, *args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(session, "save_final", save_and_probe)
    try:
        out = train(run_config(tmp, *QLORA)).output_dir
    finally:
        mp.undo()
    return tmp, out, seen


def test_loss_falls_on_cpu(trained):
    _, out, _ = trained
    got = losses(out)
    assert sorted(got) == list(range(1, 21))
    assert sum(got[s] for s in (18, 19, 20)) / 3 < sum(got[s] for s in (1, 2, 3)) / 3 - 0.1


def test_adapter_is_plain_lora_that_reloads_and_merges(trained):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from chatforge.training.adapters import quantize_4bit
    from chatforge.training.config import QLoraOptions

    tmp, out, seen = trained
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LORA"
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir(tmp), dtype=torch.float32)
    quantize_4bit(base, QLoraOptions())
    reloaded = PeftModel.from_pretrained(base, str(out))
    torch.testing.assert_close(_logits(reloaded), seen["logits"], rtol=0, atol=1e-5)
    # Merging into the dense base (what export does): the LoRA delta lands on the unquantised weights, so the
    # result differs from the trained model by the NF4 rounding of the base only.
    dense = AutoModelForCausalLM.from_pretrained(tiny_model_dir(tmp), dtype=torch.float32)
    merged = PeftModel.from_pretrained(dense, str(out)).merge_and_unload()
    diff = (_logits(merged) - seen["logits"]).abs().max()
    assert 0 < diff < 0.5 * seen["logits"].abs().max()


def test_resume_equals_the_uninterrupted_run(trained, tmp_path):
    tmp, out, _ = trained
    dest = tmp_path / "resumed"
    shutil.copytree(out, dest)
    for ckpt in (dest / "checkpoints").iterdir():
        if ckpt.name != "step-000008":
            shutil.rmtree(ckpt)
    (dest / "summary.json").unlink()
    result = train(run_config(tmp, *QLORA, "train.resume=auto", f"output.dir={dest}"))
    assert result.summary["resumed_from"].endswith("step-000008")
    want, got = losses(out), losses(dest)
    assert max(abs(want[k] - got[k]) for k in want) < 1e-6


def test_missing_bitsandbytes_says_how_to_get_it(monkeypatch):
    from chatforge.models.tiny import tiny_llama
    from chatforge.training.adapters import apply_finetuning
    from chatforge.training.config import PeftConfig

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(NotSupportedError, match=r"bitsandbytes.*chatforge\[qlora\]"):
        apply_finetuning(tiny_llama(300), PeftConfig(finetuning="qlora"))


@pytest.mark.gpu
def test_loss_falls_on_cuda(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    out = train(run_config(tmp_path, *QLORA, "model.device=cuda", "train.precision=bf16")).output_dir
    got = losses(out)
    assert sum(got[s] for s in (18, 19, 20)) / 3 < sum(got[s] for s in (1, 2, 3)) / 3 - 0.1


def test_the_adapter_serves(trained):
    """`chatforge chat/serve --adapter` on a QLoRA run (a plain LoRA adapter, served on the base as loaded): the
    engine decodes with the KV cache, and its tokens equal greedy decoding of the same loaded model without a cache."""
    from chatforge.data.schema import Conversation, Message
    from chatforge.serving.engine import Engine, SamplingParams

    tmp, out, _ = trained
    engine = Engine.load(str(tiny_model_dir(tmp)), adapter=str(out), template="chatml", dtype="float32", device="cpu")
    conv = Conversation([Message("user", "alpha beta gamma")], [])
    "".join(engine.stream(conv, SamplingParams(max_new_tokens=6)))
    served = list(engine.last_sequence.generated)
    ids = torch.tensor([engine.encode(conv)])
    with torch.no_grad():
        for _ in served:
            ids = torch.cat([ids, engine.model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert served and ids[0, -len(served) :].tolist() == served
