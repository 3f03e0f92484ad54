"""`train.stage: sft`: supervised fine-tuning on conversations; only the tokens the template's mask marks train.

What it does, and the keys that steer each part:
- model, tokenizer, template: `model.*`, `template.name|mask|default_system` (one assembly, `models.assembly`)
- method: `peft.finetuning` (full | freeze | lora; DoRA with `peft.use_dora`)
- data: `data.train|val|val_size|max_length`, tokenized through the cache (re-runs skip tokenizing)
- batches: `train.batching` (length_grouped | packed | random), `train.attention` (mask | flex) for packed rows,
  `train.pad_to_multiple_of` for padded ones
- precision and memory: `train.precision`, `model.dtype`, `train.gradient_checkpointing|checkpoint_ratio`,
  `train.loss_chunk_size`; speed: `train.compile_layers|liger|fused_optimizer`
- validation, early stopping, checkpoints, exact resume: `train.eval_every|early_stopping_*|save_every|resume`
"""

from __future__ import annotations

from chatforge.training.batching import lm_batches
from chatforge.training.dataset import encode_data, encode_sft, read_data
from chatforge.training.model_setup import prepare_model
from chatforge.training.objectives import TokenObjective
from chatforge.training.packing import pad_batch
from chatforge.training.run_folder import open_run_folder
from chatforge.training.session import TrainResult, finished_run, run_session


def run(cfg) -> TrainResult:
    folder = open_run_folder(cfg)
    try:
        if folder.finished_summary is not None:
            return finished_run(folder)
        raw = read_data(cfg)  # before the model loads: a bad record fails in seconds, not after minutes
        tm = prepare_model(cfg)

        def encode(records, stats):
            return encode_sft(
                records,
                tm.tokenizer,
                tm.template,
                mask=cfg.template.mask,
                max_length=cfg.data.max_length,
                stats=stats,
            )

        return train_on_tokens(cfg, folder, tm, encode_data(raw, encode))
    finally:
        folder.close()


def train_on_tokens(cfg, folder, tm, data) -> TrainResult:
    """The token-loss part shared by sft and pt: batches of encoded examples, padded validation, the session."""
    pad_id = tm.tokenizer.pad_token_id
    batches = lm_batches(
        data.train,
        cfg.train,
        max_length=cfg.data.max_length,
        pad_id=pad_id,
        attention=tm.attention,
        pad_multiple=tm.pad_multiple,
    )
    val_batches = validation_batches(data.val, cfg.train.eval_batch_size, pad_id)
    objective = TokenObjective(chunk_size=cfg.train.loss_chunk_size)
    return run_session(cfg, folder, tm, data, batches, val_batches, objective)


def validation_batches(examples: list, batch_size: int, pad_id: int) -> list[dict]:
    """Padded batches of similar lengths (sorted), so validation wastes little on padding."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    return [
        pad_batch([examples[i] for i in order[s : s + batch_size]], pad_id) for s in range(0, len(order), batch_size)
    ]
