"""`train.stage: pt`: (continued) pretraining on raw text: every token trains.

With `data.shards` (a folder from `chatforge data tokenize`) rows of `data.max_length` tokens stream from memory-
mapped shards (`training.shard_data`; `data.val_rows` holds a fraction out for validation; `data.document_mask: false`
trains each row as one causal sample). Otherwise documents (`.txt` paragraphs, `{"text": ...}` records; conversations
as their plain text) are encoded as text + EOS and cut into `data.max_length` blocks. Everything else (method,
batching, precision, speed switches, validation, checkpoints and resume) works and is configured as for `sft` (see
`recipes.sft`); `model.init` trains from scratch.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from chatforge.training.dataset import encode_data, encode_pt, read_data
from chatforge.training.model_setup import prepare_model
from chatforge.training.objectives import TokenObjective
from chatforge.training.recipes.sft import train_on_tokens
from chatforge.training.run_folder import open_run_folder
from chatforge.training.session import TrainResult, finished_run, run_session


def run(cfg) -> TrainResult:
    if cfg.data.shards and cfg.model.tokenizer is None:
        # The shards carry the tokenizer they were written with; recorded in config.yaml, so a resume sees the same.
        cfg = replace(cfg, model=replace(cfg.model, tokenizer=str(Path(cfg.data.shards) / "tokenizer")))
    folder = open_run_folder(cfg)
    try:
        if folder.finished_summary is not None:
            return finished_run(folder)
        if cfg.data.shards:
            return _run_on_shards(cfg, folder)
        raw = read_data(cfg)  # before the model loads: a bad record fails in seconds, not after minutes
        tm = prepare_model(cfg)
        data = encode_data(
            raw, lambda records, stats: encode_pt(records, tm.tokenizer, max_length=cfg.data.max_length, stats=stats)
        )
        return train_on_tokens(cfg, folder, tm, data)
    finally:
        folder.close()


def _run_on_shards(cfg, folder) -> TrainResult:
    from chatforge.data.shards import ShardDataset
    from chatforge.models.loading import load_tokenizer
    from chatforge.training.shard_data import ShardRows, shard_batches, shard_val_batches

    dataset = ShardDataset(cfg.data.shards, val_rows=cfg.data.val_rows)
    dataset.check_tokenizer(load_tokenizer(cfg.model.tokenizer))  # before the model loads and markers are added
    rows = ShardRows(dataset, cfg.data.max_length, document_mask=cfg.data.document_mask)
    tm = prepare_model(cfg)
    pad_id = tm.tokenizer.pad_token_id
    batches = shard_batches(rows, cfg.train, pad_id=pad_id, attention=tm.attention)
    val_batches = shard_val_batches(rows, cfg.train.eval_batch_size, pad_id)
    objective = TokenObjective(chunk_size=cfg.train.loss_chunk_size)
    return run_session(cfg, folder, tm, rows, batches, val_batches, objective)
