"""`stage: pt` on token shards (`chatforge data tokenize`): rows of `data.max_length` tokens read from memory-mapped
files, so a corpus larger than memory trains without being loaded.

Each row is a batch unit for `training.batching.Batches`: the epoch's order is the same pure function of
(seed, epoch) as for every other stage, so the checkpointed (epoch, batch index) resumes exactly. With document
masking (`data.document_mask`, the default; packed attention) positions restart at every document inside a row and
no label crosses an end-of-text. Without it a row is one sample, as GPT-2/llm.c pretrain: positions 0..n-1, plain
causal attention with no mask tensor (`attention="causal"`), and every token but the row's first is a target, across
end-of-text too; attention FLOPs then count the whole row.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from chatforge.training.batching import Batches
from chatforge.training.packing import collate


class ShardRows:
    """The training (or validation) rows of a shard folder at one sequence length, TrainData-shaped for the session."""

    def __init__(self, dataset, seq_len: int, *, document_mask: bool = True):
        self.dataset, self.seq_len, self.document_mask = dataset, seq_len, document_mask
        self.train = dataset.train_row_indices(seq_len)
        self.val = dataset.val_row_indices(seq_len)
        self.stats = Counter({"shard tokens": dataset.num_tokens, "shard documents": dataset.num_documents})

    def fingerprint(self) -> str:
        return f"{self.dataset.tokenizer_hash[:12]}-{self.dataset.num_tokens}-{self.seq_len}-{len(self.val)}"

    def packed_row(self, r: int):
        from chatforge.data.shards import as_packed_row

        ids, boundaries = self.dataset.row(int(r), self.seq_len)
        return as_packed_row(ids, boundaries, document_mask=self.document_mask)


class _DocLengths:
    """Document-piece lengths per row, computed from the document index on demand (for attention FLOPs)."""

    def __init__(self, rows: ShardRows):
        self.rows = rows

    def __getitem__(self, unit: int) -> list[int]:
        ds, n = self.rows.dataset, self.rows.seq_len
        if not self.rows.document_mask:
            return [n]  # one causal sample over the whole row
        a = int(self.rows.train[unit]) * n
        lo = int(np.searchsorted(ds.doc_starts, a, side="right"))
        hi = int(np.searchsorted(ds.doc_starts, a + n, side="left"))
        cuts = [0, *(int(x) - a for x in ds.doc_starts[lo:hi]), n]
        return [b - c for c, b in zip(cuts, cuts[1:]) if b > c]


def shard_batches(rows: ShardRows, tcfg, *, pad_id: int, attention: str) -> Batches:
    """Training batches of shard rows; `attention` is `TrainModel.attention`: mask | flex with document masking,
    causal (what `prepare_model` picks for `data.document_mask: false`) without."""
    if (attention == "causal") == rows.document_mask:
        raise ValueError(f"attention={attention!r} does not fit rows with document_mask={rows.document_mask}")
    return Batches(
        units=rows.train,
        lengths=[rows.seq_len] * len(rows.train),
        doc_lengths=_DocLengths(rows),  # type: ignore[arg-type]
        batch_size=tcfg.batch_size,
        mode="random",  # every row has the same length: a plain shuffle per epoch
        seed=tcfg.seed,
        make=lambda idx: collate([rows.packed_row(rows.train[i]) for i in idx], pad_id, attention=attention),
        pad_width=lambda n: n,
    )


def shard_val_batches(rows: ShardRows, batch_size: int, pad_id: int) -> list[dict]:
    """Validation batches, attended as in training (document masks, or plain causal rows)."""
    packed = [rows.packed_row(r) for r in rows.val]
    attention = "mask" if rows.document_mask else "causal"
    return [collate(packed[s : s + batch_size], pad_id, attention=attention) for s in range(0, len(packed), batch_size)]
