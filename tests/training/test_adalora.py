"""AdaLoRA on the tiny Llama: the schedule is bound to the run's optimizer steps, `update_and_allocate` runs once per
optimizer step (also under gradient accumulation) with the step's gradients present, the orthogonality penalty is
part of the step, ranks are cut to the budget, the saved adapter reloads with plain peft to the same logits, and a
run resumed mid-budget equals an uninterrupted one (the allocator's EMAs and rank pattern come back)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from train_helpers import losses, run_config, tiny_model_dir

from chatforge.config import ConfigError
from chatforge.errors import ChatforgeError
from chatforge.training import session, train
from chatforge.training.adapters import AdaLoraHooks

ADALORA = [
    "peft.finetuning=adalora",
    "peft.adalora.init_r=4",
    "peft.adalora.target_r=2",
    "peft.adalora.tinit=3",
    "peft.adalora.tfinal=6",
    "peft.adalora.deltaT=2",
    "train.learning_rate=3e-2",
    "train.max_steps=20",
    "train.save_every=8",
]
PROBE = torch.tensor([[5, 17, 33, 2, 9, 41, 12, 7]])


def _logits(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=PROBE, attention_mask=torch.ones_like(PROBE)).logits.float()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One 20-step AdaLoRA run; records every update_and_allocate call and the logits right before the final save."""
    tmp = tmp_path_factory.mktemp("adalora")
    calls, seen = [], {}
    real_after, real_save = AdaLoraHooks.after_optimizer_step, session.save_final

    def spy(self, model, step):
        has_grads = any(p.grad is not None for p in model.parameters() if p.requires_grad)
        calls.append((step, has_grads))
        return real_after(self, model, step)

    def save_and_probe(out, model, *args, **kwargs):
        seen["logits"] = _logits(model)
        seen["rank_pattern"] = dict(model.peft_config["default"].rank_pattern)
        seen["total_step"] = model.peft_config["default"].total_step
        model.train()
        return real_save(out, model, *args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(AdaLoraHooks, "after_optimizer_step", spy)
    mp.setattr(session, "save_final", save_and_probe)
    try:
        out = train(run_config(tmp, *ADALORA)).output_dir
    finally:
        mp.undo()
    return tmp, out, calls, seen


def test_allocation_once_per_optimizer_step_with_gradients(trained):
    _, out, calls, seen = trained
    assert calls == [(s, True) for s in range(1, 21)]
    assert seen["total_step"] == 20  # the run's optimizer steps, not the placeholder


def test_loss_falls_and_ranks_are_cut_to_the_budget(trained):
    _, out, _, seen = trained
    got = losses(out)
    assert sum(got[s] for s in (18, 19, 20)) / 3 < sum(got[s] for s in (1, 2, 3)) / 3 - 0.02
    kept = sum(sum(mask) for mask in seen["rank_pattern"].values())
    assert kept == 2 * len(seen["rank_pattern"])  # target_r x adapted matrices
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["extra_loss"] > 0 for r in rows if r["kind"] == "train")  # orthogonality penalty in every step


def test_saved_adapter_reloads_with_plain_peft(trained):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tmp, out, _, seen = trained
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "ADALORA" and config["rank_pattern"]
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir(tmp), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(out))
    torch.testing.assert_close(_logits(model), seen["logits"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("at", [8, 16])  # mid budget phase (EMAs live), final phase (rank pattern fixed)
def test_resume_equals_the_uninterrupted_run(trained, tmp_path, at):
    tmp, out, _, seen = trained
    dest = tmp_path / "resumed"
    shutil.copytree(out, dest)
    for ckpt in (dest / "checkpoints").iterdir():
        if ckpt.name != f"step-{at:06d}":
            shutil.rmtree(ckpt)
    (dest / "summary.json").unlink()
    result = train(run_config(tmp, *ADALORA, "train.resume=auto", f"output.dir={dest}"))
    assert result.summary["resumed_from"].endswith(f"step-{at:06d}")
    want, got = losses(out), losses(dest)
    assert sorted(got) == list(range(1, 21))
    assert max(abs(want[k] - got[k]) for k in want) < 1e-6
    assert json.loads((dest / "adapter_config.json").read_text())["rank_pattern"] == {
        k.replace(".default", ""): v for k, v in seen["rank_pattern"].items()
    }


def test_gradient_accumulation_allocates_per_optimizer_step(tmp_path):
    steps = []
    real = AdaLoraHooks.after_optimizer_step

    def spy(self, model, step):
        steps.append(step)
        return real(self, model, step)

    mp = pytest.MonkeyPatch()
    mp.setattr(AdaLoraHooks, "after_optimizer_step", spy)
    try:
        result = train(run_config(tmp_path, *ADALORA, "train.max_steps=12", "train.grad_accum=3", "train.batch_size=2"))
    finally:
        mp.undo()
    assert steps == list(range(1, 13))
    assert result.summary["steps"] == 12


def test_schedule_without_a_budget_phase_is_refused(tmp_path):
    with pytest.raises(ChatforgeError, match="no budget phase"):
        train(run_config(tmp_path, *ADALORA, "train.max_steps=9"))


def test_target_rank_above_initial_rank_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="target_r"):
        run_config(tmp_path, *ADALORA, "peft.adalora.target_r=8")


def test_the_adapter_serves(trained):
    """`chatforge chat/serve` load the AdaLoRA adapter through the one assembly and decode with the KV cache: the
    tokens equal greedy decoding of the same loaded model without a cache."""
    from chatforge.data.schema import Conversation, Message
    from chatforge.serving.engine import Engine, SamplingParams

    tmp, out, _, _ = trained
    engine = Engine.load(str(tiny_model_dir(tmp)), adapter=str(out), template="chatml", dtype="float32", device="cpu")
    conv = Conversation([Message("user", "alpha beta gamma")], [])
    "".join(engine.stream(conv, SamplingParams(max_new_tokens=6)))
    served = list(engine.last_sequence.generated)
    ids = torch.tensor([engine.encode(conv)])
    with torch.no_grad():
        for _ in served:
            ids = torch.cat([ids, engine.model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert served and ids[0, -len(served) :].tolist() == served
