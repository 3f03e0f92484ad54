"""`train.stage: pt`: (continued) pretraining on raw text: every token trains.

Documents (`.txt` paragraphs, `{"text": ...}` records; conversations as their plain text) are encoded as text + EOS
and cut into `data.max_length` blocks. Everything else (method, batching, precision, speed switches, validation,
checkpoints and resume) works and is configured as for `sft` (see `recipes.sft`); `model.init` trains from scratch.
"""

from __future__ import annotations

from chatforge.training.batching import lm_batches
from chatforge.training.dataset import encode_data, encode_pt, read_data
from chatforge.training.model_setup import check_single_process, prepare_model
from chatforge.training.objectives import TokenObjective
from chatforge.training.recipes.sft import validation_batches
from chatforge.training.run_folder import open_run_folder
from chatforge.training.session import TrainResult, finished_run, run_session


def run(cfg) -> TrainResult:
    check_single_process()
    folder = open_run_folder(cfg)
    try:
        if folder.finished_summary is not None:
            return finished_run(folder)
        raw = read_data(cfg)  # before the model loads: a bad record fails in seconds, not after minutes
        tm = prepare_model(cfg)
        data = encode_data(
            raw, lambda records, stats: encode_pt(records, tm.tokenizer, max_length=cfg.data.max_length, stats=stats)
        )
        batches = lm_batches(
            data.train,
            cfg.train,
            max_length=cfg.data.max_length,
            pad_id=tm.tokenizer.pad_token_id,
            attention=tm.attention,
            pad_multiple=tm.pad_multiple,
        )
        val_batches = validation_batches(data.val, cfg.train.eval_batch_size, tm.tokenizer.pad_token_id)
        objective = TokenObjective(chunk_size=cfg.train.loss_chunk_size)
        return run_session(cfg, folder, tm, data, batches, val_batches, objective)
    finally:
        folder.close()
