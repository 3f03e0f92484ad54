"""The training loop end to end on a tiny model: outputs, accumulation, precision, stages, validation, stopping."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from train_helpers import losses, run_config, tiny_model_dir, write_chat_data, write_text_data
from transformers import AutoModelForCausalLM, AutoTokenizer

from chatforge.config import load_config
from chatforge.errors import ChatforgeError
from chatforge.training import train
from chatforge.training.config import TrainRunConfig


def test_lora_sft_run_writes_every_output(tmp_path):
    cfg = run_config(tmp_path, "train.max_steps=8", "data.val_size=0.2", "train.eval_every=4", "train.save_every=4")
    result = train(cfg)
    out = result.output_dir
    s = json.loads((out / "summary.json").read_text())
    assert s == result.summary
    assert s["steps"] == 8 and s["tokens"] > 0 and s["time_s"] > 0
    assert s["final_train_loss"] > 0 and s["final_val_loss"] > 0 and 0 <= s["final_val_accuracy"] <= 1
    assert 0 <= s["padding_fraction"] < 0.5
    assert s["train_examples"] + s["val_examples"] == 48 and s["val_examples"] == 10
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == list(range(1, 9))
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [4, 8]
    assert {"loss", "lr", "tok_per_s", "grad_norm", "accuracy"} <= set(rows[0])
    assert (out / "curves.png").stat().st_size > 1000
    # The resolved config is re-loadable as is.
    assert load_config(out / "config.yaml", [], TrainRunConfig) == cfg
    # A PEFT adapter on the base model, and the tokenizer carries the chat template it was trained with.
    tok = AutoTokenizer.from_pretrained(out)
    assert "<|im_start|>" in tok.chat_template
    base = AutoModelForCausalLM.from_pretrained(cfg.model.name_or_path)
    model = PeftModel.from_pretrained(base, out)
    assert any("lora_A" in n for n, _ in model.named_parameters())


def test_full_sft_loss_falls_and_saves_a_plain_model(tmp_path):
    cfg = run_config(tmp_path, "peft.finetuning=full", "train.max_steps=24", "train.learning_rate=3e-3")
    out = train(cfg).output_dir
    loss = losses(out)
    assert sum(list(loss.values())[-4:]) / 4 < loss[1] - 0.5
    model = AutoModelForCausalLM.from_pretrained(out)
    assert sum(p.numel() for p in model.parameters()) > 0 and not (out / "adapter_config.json").exists()


def test_freeze_only_changes_the_trained_layers(tmp_path):
    cfg = run_config(tmp_path, "peft.finetuning=freeze", "peft.freeze_layers=1", "train.max_steps=2")
    out = train(cfg).output_dir
    before = AutoModelForCausalLM.from_pretrained(cfg.model.name_or_path).state_dict()
    after = AutoModelForCausalLM.from_pretrained(out).state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("model.layers.1.") for k in changed)


def test_grad_accumulation_equals_the_big_batch(tmp_path):
    """batch 2 x accum 2 must give the same steps as batch 4: the loss is a mean over the window's trained tokens."""
    common = ["peft.finetuning=full", "train.batching=random", "train.max_steps=5", "train.max_grad_norm=0.5"]
    big = train(run_config(tmp_path, *common, "train.batch_size=4", f"output.dir={tmp_path / 'a'}")).output_dir
    acc = train(
        run_config(tmp_path, *common, "train.batch_size=2", "train.grad_accum=2", f"output.dir={tmp_path / 'b'}")
    ).output_dir
    a, b = losses(big), losses(acc)
    assert a.keys() == b.keys()
    assert all(abs(a[k] - b[k]) < 1e-5 for k in a), (a, b)


def test_gradient_checkpointing_gives_the_same_losses(tmp_path):
    common = ["peft.dropout=0", "train.max_steps=3"]
    plain = losses(train(run_config(tmp_path, *common, f"output.dir={tmp_path / 'a'}")).output_dir)
    ckpt = losses(
        train(
            run_config(tmp_path, *common, "train.gradient_checkpointing=true", f"output.dir={tmp_path / 'b'}")
        ).output_dir
    )
    assert all(abs(plain[k] - ckpt[k]) < 1e-5 for k in plain)


def test_bf16_autocast_runs_close_to_fp32(tmp_path):
    common = ["peft.dropout=0", "train.max_steps=2", "train.batch_size=2"]
    fp32 = losses(train(run_config(tmp_path, *common, f"output.dir={tmp_path / 'a'}")).output_dir)
    bf16 = losses(
        train(run_config(tmp_path, *common, "train.precision=bf16", f"output.dir={tmp_path / 'b'}")).output_dir
    )
    assert abs(fp32[1] - bf16[1]) < 0.05 and fp32[1] != bf16[1]


def test_packed_batching_reports_less_padding(tmp_path):
    common = ["train.max_steps=3", "peft.finetuning=full"]
    random_ = train(run_config(tmp_path, *common, "train.batching=random", f"output.dir={tmp_path / 'a'}")).summary
    packed = train(run_config(tmp_path, *common, "train.batching=packed", f"output.dir={tmp_path / 'b'}")).summary
    assert packed["batch_units"] < random_["batch_units"]
    assert packed["padding_fraction"] < random_["padding_fraction"]
    assert packed["final_train_loss"] > 0


def test_pretraining_from_scratch_with_init(tmp_path):
    text = write_text_data(tmp_path / "corpus.txt")
    cfg = run_config(
        tmp_path,
        "train.stage=pt",
        f"model.tokenizer={tiny_model_dir(tmp_path)}",
        "model.init={hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 1}",
        "peft.finetuning=full",
        "train.max_steps=20",
        "train.learning_rate=5e-3",
        "train.batching=packed",
        data=text,
    )
    out = train(cfg).output_dir
    loss = losses(out)
    assert loss[20] < loss[1] - 1.0
    assert AutoModelForCausalLM.from_pretrained(out).config.hidden_size == 32


def test_early_stopping_stops_when_validation_stalls(tmp_path):
    # lr 0: validation loss can never improve, so patience 2 stops after the third evaluation.
    cfg = run_config(
        tmp_path,
        "train.learning_rate=0",
        "train.max_steps=50",
        "train.eval_every=2",
        "train.early_stopping_patience=2",
        "data.val_size=0.2",
    )
    s = train(cfg).summary
    assert s["stopped_early"] and s["steps"] == 6 and s["best_step"] == 2


def test_separate_validation_file_and_data_notes(tmp_path):
    val = write_chat_data(tmp_path / "val.jsonl", n=5, seed=1)
    cfg = run_config(tmp_path, f"data.val=[{val}]", "train.max_steps=1", "data.max_length=30")
    s = train(cfg).summary
    assert 1 <= s["val_examples"] <= 5 and s["train_examples"] < 48
    # Over-long examples are truncated, and ones left with nothing to train are dropped, both counted.
    assert s["data_notes"]["truncated to max_length"] > 0
    assert (
        s["data_notes"]["dropped: no trained tokens within max_length"]
        == 48 + 5 - s["train_examples"] - s["val_examples"]
    )


def test_refuses_to_overwrite_an_existing_run(tmp_path):
    train(run_config(tmp_path, "train.max_steps=1"))
    with pytest.raises(ChatforgeError, match="already holds a run"):
        train(run_config(tmp_path, "train.max_steps=1"))
    assert train(run_config(tmp_path, "train.max_steps=2", "output.overwrite=true")).summary["steps"] == 2


def test_continue_training_an_adapter(tmp_path):
    first = train(run_config(tmp_path, "train.max_steps=2", f"output.dir={tmp_path / 'a'}")).output_dir
    cfg = run_config(tmp_path, "train.max_steps=2", f"model.adapter={first}", f"output.dir={tmp_path / 'b'}")
    s = train(cfg).summary
    assert s["trainable_parameters"] == json.loads((first / "summary.json").read_text())["trainable_parameters"]
    before = load_file(first / "adapter_model.safetensors")
    after = load_file(tmp_path / "b" / "adapter_model.safetensors")
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ChatforgeError, match="lora only"):
        train(run_config(tmp_path, f"model.adapter={first}", "peft.finetuning=full", f"output.dir={tmp_path / 'c'}"))


@pytest.mark.real_model
@pytest.mark.integration
def test_one_lora_step_on_the_embedded_model(smollm2_available, tmp_path):
    """The default config path: SmolLM2 by name, its own template, and an adapter the loader puts back on top."""
    from chatforge.models.loading import load_model_and_tokenizer

    data = write_chat_data(tmp_path / "chat.jsonl", n=4)
    cfg = run_config(
        tmp_path,
        "model.name_or_path=smollm2-135m-instruct",
        "template.name=null",
        "train.max_steps=1",
        "train.batch_size=2",
        "train.num_threads=2",
        data=data,
    )
    result = train(cfg)
    assert result.summary["steps"] == 1 and 0 < result.summary["final_train_loss"] < 20
    tok = AutoTokenizer.from_pretrained(result.output_dir)
    assert "<|im_start|>" in tok.chat_template
    model, _ = load_model_and_tokenizer("smollm2-135m-instruct", adapter=result.output_dir)
    assert any("lora_A" in n for n, _ in model.named_parameters())
