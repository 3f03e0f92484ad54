"""`stage: pt` streaming rows from token shards: trains, validates on held-out rows, and resumes exactly."""

from __future__ import annotations

import shutil

from train_helpers import losses, run_config, tiny_model_dir, write_text_data

from chatforge.data.shards import tokenize_to_shards
from chatforge.models.loading import load_tokenizer
from chatforge.training import train


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
