"""Samples from fixed prompts at each validation (`samples.jsonl`) and perplexity per validation (issue 13)."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import losses, run_config, tiny_model_dir, write_text_data  # noqa: E402

from chatforge.training import train  # noqa: E402
from chatforge.training.monitor import eval_line, perplexity  # noqa: E402

PROMPTS = "train.sample_prompts=['hello world', 'the quick fox']"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _pt(tmp_path: Path, name: str, *extra: str):
    return run_config(
        tmp_path,
        "train.stage=pt",
        f"model.tokenizer={tiny_model_dir(tmp_path)}",
        "model.init={hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2, "
        "num_key_value_heads: 1}",
        "peft.finetuning=full",
        "train.max_steps=6",
        "train.learning_rate=5e-3",
        "train.batching=packed",
        "data.val_size=0.2",
        "train.eval_every=3",
        "train.sample_max_new_tokens=5",
        f"output.dir={tmp_path / name}",
        *extra,
        data=write_text_data(tmp_path / "corpus.txt", n=40),
    )


def test_pretraining_writes_samples_and_perplexity_without_changing_training(tmp_path):
    out = train(_pt(tmp_path, "with", PROMPTS)).output_dir
    samples = _rows(out / "samples.jsonl")
    assert [(r["step"], r["prompt"]) for r in samples] == [
        (s, p) for s in (3, 6) for p in ("hello world", "the quick fox")
    ]
    assert all(isinstance(r["text"], str) and r["kind"] == "sample" for r in samples)
    assert any(r["text"] for r in samples)  # a random model still writes something in 5 tokens
    evals = [r for r in _rows(out / "metrics.jsonl") if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [3, 6]
    for r in evals:
        assert r["val_ppl"] == math.exp(r["val_loss"])
    # Greedy sampling draws no random numbers and leaves the weights alone: training is the same without it.
    plain = train(_pt(tmp_path, "without")).output_dir
    assert losses(out) == losses(plain)
    assert not (plain / "samples.jsonl").exists()


def test_chat_samples_and_resume_drop_later_samples(tmp_path):
    cfg = run_config(
        tmp_path, PROMPTS, "train.max_steps=4", "train.eval_every=2", "data.val_size=0.25", "train.save_every=2"
    )
    out = train(cfg).output_dir
    first = _rows(out / "samples.jsonl")
    assert [r["step"] for r in first] == [2, 2, 4, 4]
    # A resumed run from the step-2 checkpoint rewrites samples from step 3 on, never duplicates them.
    (out / "summary.json").unlink()
    shutil.rmtree(out / "checkpoints" / "step-000004")
    assert (out / "checkpoints" / "step-000002").is_dir()
    cfg2 = run_config(
        tmp_path,
        PROMPTS,
        "train.max_steps=4",
        "train.eval_every=2",
        "data.val_size=0.25",
        "train.save_every=2",
        "train.resume=auto",
    )
    assert train(cfg2).summary["resumed_from"].endswith("step-000002")
    again = _rows(out / "samples.jsonl")
    assert [r["step"] for r in again] == [2, 2, 4, 4]
    assert again == first  # greedy, and the resume is exact


def test_eval_line_and_perplexity():
    assert eval_line(5, {"val_loss": math.log(20.0), "val_ppl": 20.0, "val_accuracy": 0.25}) == (
        "step 5: val_loss 2.9957 ppl 20.00 accuracy 0.2500"
    )
    assert eval_line(5, {"val_loss": 0.5}) == "step 5: val_loss 0.5000"  # DPO: no perplexity
    assert perplexity(1e6) == 1e30 and perplexity(0.0) == 1.0


def test_sampling_runs_compiled_layers_eagerly_and_matches_the_plain_model():
    import torch

    from chatforge.models.tiny import tiny_llama, tiny_tokenizer
    from chatforge.training.monitor import Sampler, compile_count
    from chatforge.training.speedups import wrap_layers

    tok = tiny_tokenizer()
    plain = tiny_llama(len(tok))
    compiled = tiny_llama(len(tok))  # same seed, same weights
    compiled.config._attn_implementation = plain.config._attn_implementation = "sdpa"
    wrap_layers(compiled, compile=True, dynamic=True, compile_on_cpu=True, backend="aot_eager")
    sampler = Sampler(
        Path("unused.jsonl"), tok, "chatml", ["hello world"], chat=False, max_new_tokens=6, device=torch.device("cpu")
    )
    before = compile_count()
    got = sampler.generate(compiled)  # KV-cache decoding: no explicit mask swapped in, no graph built
    assert compile_count() == before
    assert got == sampler.generate(plain) and got[0]
