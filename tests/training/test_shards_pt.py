"""`stage: pt` streaming rows from token shards: trains, validates on held-out rows, and resumes exactly; with
`data.document_mask: false` every row is one plain causal sample (GPT-2/llm.c style)."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest
import torch
from train_helpers import assert_resume_is_exact, losses, run_config, tiny_model_dir, write_text_data

from chatforge.config import ConfigError
from chatforge.data.shards import ShardDataset, tokenize_to_shards
from chatforge.models.loading import load_tokenizer
from chatforge.training import train
from chatforge.training.config import load_train_config
from chatforge.training.monitor import FlopModel
from chatforge.training.packing import IGNORE, attention_inputs
from chatforge.training.shard_data import ShardRows, shard_batches, shard_val_batches


def _shards(tmp_path):
    text = write_text_data(tmp_path / "corpus.txt", n=120)
    tok = load_tokenizer(tiny_model_dir(tmp_path))
    out = tmp_path / "shards"
    tokenize_to_shards([text], tok, out, num_proc=1, progress=False)
    return out


def _cfg(tmp_path, shards, *extra):
    return run_config(
        tmp_path,
        "train.stage=pt",
        "peft.finetuning=full",
        "train.batching=packed",
        f"data.shards={shards}",
        "data.val_rows=0.1",
        "data.train=[]",
        "train.max_steps=6",
        "train.save_every=3",
        "train.save_total_limit=5",
        *extra,
    )


def test_shard_rows_train_validate_and_resume_exactly(tmp_path):
    shards = _shards(tmp_path)
    result = train(_cfg(tmp_path, shards))
    s = result.summary
    assert s["steps"] == 6 and s["final_val_loss"] is not None and s["val_examples"] > 0
    want = losses(result.output_dir)
    first, last = want[1], sum(list(want.values())[-2:]) / 2
    assert last < first  # it learns from the rows

    cut = tmp_path / "cut"
    shutil.copytree(result.output_dir, cut)
    shutil.rmtree(cut / "checkpoints" / "step-000006")
    (cut / "summary.json").unlink()
    again = train(_cfg(tmp_path, shards, "train.resume=auto", f"output.dir={cut}"))
    assert again.summary["resumed_from"].endswith("step-000003")
    got = losses(cut)
    assert got.keys() == want.keys() and max(abs(got[k] - want[k]) for k in want) < 1e-6


def _rows(tmp_path, document_mask: bool) -> ShardRows:
    return ShardRows(ShardDataset(_shards(tmp_path), val_rows=0.1), 64, document_mask=document_mask)


def test_rows_without_document_mask_are_one_causal_sample(tmp_path):
    rows = _rows(tmp_path, document_mask=False)
    tcfg = SimpleNamespace(batch_size=4, seed=0)
    batches = shard_batches(rows, tcfg, pad_id=0, attention="causal")
    idx = batches.plan(0)[0]
    batch = batches.make(idx)
    assert "attention_mask" not in batch  # no mask tensor: SDPA's is_causal kernel
    assert torch.equal(batch["position_ids"], torch.arange(64).expand(len(idx), 64))
    ids, labels = batch["input_ids"], batch["labels"]
    assert (labels[:, 0] == IGNORE).all() and torch.equal(labels[:, 1:], ids[:, 1:])
    crossed = 0
    for b, i in enumerate(idx):
        _, starts = rows.dataset.row(int(rows.train[i]), 64)
        for t in starts[1:]:  # the first token of a document is the target of the end-of-text before it
            assert labels[b, t] == ids[b, t] != IGNORE
            crossed += 1
    assert crossed > 0  # the corpus has documents shorter than a row
    assert all(batches.doc_lengths[i] == [64] for i in idx)  # attention FLOPs: full-row causal
    inputs = attention_inputs(batch, "cpu", attention="causal")
    assert "attention_mask" not in inputs and "position_ids" not in inputs and "document_ids" not in inputs
    val = shard_val_batches(rows, 8, pad_id=0)
    assert val and all("attention_mask" not in v and (v["labels"][:, 1:] != IGNORE).all() for v in val)


def test_document_masked_rows_are_unchanged(tmp_path):
    rows = _rows(tmp_path, document_mask=True)
    batches = shard_batches(rows, SimpleNamespace(batch_size=4, seed=0), pad_id=0, attention="mask")
    idx = batches.plan(0)[0]
    batch = batches.make(idx)
    assert batch["attention_mask"].shape == (len(idx), 1, 64, 64)
    pieces = [batches.doc_lengths[i] for i in idx]
    assert all(sum(p) == 64 for p in pieces) and any(len(p) > 1 for p in pieces)
    # The FLOPs model counts attention per document with masking, over the whole row without.
    flops = FlopModel(matmul_params=0, trained_matmul_params=0, layers=2, attention_width=8)
    many = next(p for p in pieces if len(p) > 1)
    assert flops.step_flops(64, many) < flops.step_flops(64, [64])
    with pytest.raises(ValueError, match="document_mask"):
        shard_batches(rows, SimpleNamespace(batch_size=4, seed=0), pad_id=0, attention="causal")


def test_no_document_mask_trains_and_resumes_exactly(tmp_path):
    shards = _shards(tmp_path)
    masked = losses(train(_cfg(tmp_path / "masked", shards)).output_dir)

    def make(tmp, *overrides):
        return _cfg(tmp, shards, "data.document_mask=false", *overrides)

    result = train(make(tmp_path / "plain"))
    assert "flex_attention" not in result.summary["speedups"]
    plain = losses(result.output_dir)
    assert plain.keys() == masked.keys() and plain != masked  # the switch changes what is trained
    assert_resume_is_exact(make, tmp_path / "resume", steps=6, resume_at=3)


def test_document_mask_false_is_refused_outside_pt_shards(tmp_path):
    for overrides, where in (
        (["train.stage=sft"], "train.stage=sft"),
        (["train.stage=pt"], "no data.shards"),
    ):
        with pytest.raises(ConfigError, match=where) as err:
            load_train_config(None, ["data.document_mask=false", *overrides])
        assert "data.document_mask" in str(err.value)
    with pytest.raises(ConfigError, match="train.attention"):
        load_train_config(
            None, ["data.document_mask=false", "train.stage=pt", f"data.shards={tmp_path}", "train.attention=flex"]
        )
    cfg = load_train_config(None, ["data.document_mask=false", "train.stage=pt", f"data.shards={tmp_path}"])
    assert cfg.data.document_mask is False
    assert load_train_config(None, []).data.document_mask is True


def test_causal_rows_reach_sdpa_without_a_mask(tmp_path, monkeypatch):
    # With no mask tensor transformers hands SDPA is_causal=True: the flash kernel on CUDA.
    from transformers import LlamaForCausalLM

    from chatforge.models.tiny import tiny_llama_config

    rows = _rows(tmp_path, document_mask=False)
    batches = shard_batches(rows, SimpleNamespace(batch_size=2, seed=0), pad_id=0, attention="causal")
    inputs = attention_inputs(batches.make(batches.plan(0)[0]), "cpu", attention="causal")
    model = LlamaForCausalLM(tiny_llama_config(vocab_size=len(load_tokenizer(tiny_model_dir(tmp_path)))))
    model.config._attn_implementation = "sdpa"
    seen, sdpa = [], torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append((kwargs.get("attn_mask"), kwargs.get("is_causal")))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    model(input_ids=inputs["input_ids"])
    assert seen and all(mask is None and causal for mask, causal in seen)
