"""Packing several samples into one row without cross-contamination, and padded batches for the unpacked case.

A packed row holds whole samples back to back. Three things keep the samples independent, exactly as if each had been
run alone: position ids restart at 0 for every sample; attention is block-diagonal (causal inside a sample, nothing
across); and the first token of every sample carries no label, so the last token of the previous sample is never
trained to predict it (HF causal-LM losses shift labels by one, so `labels[t]` is what position `t-1` predicts).

Attention is expressed either as a 4D boolean mask (`attention="mask"`: works with SDPA and eager-free paths on CPU and
GPU, O(T^2) memory per row) or as a FlexAttention `BlockMask` (`attention="flex"`: the model must use
`attn_implementation="flex_attention"`; fully masked blocks are skipped, which is what makes short samples cheap on
GPU). Transformers passes any 4D mask or BlockMask through unchanged, so the stock model code applies it. A row that
is one sample (pretraining shards with `data.document_mask: false`) takes `attention="causal"`: no mask at all, so
SDPA runs its `is_causal` (flash) kernel.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from functools import cache

import torch

from chatforge.errors import DataError

IGNORE = -100


@dataclass
class PackedRow:
    """One row of the batch: concatenated samples. `lengths` are the samples' lengths in order."""

    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)


def _check(examples: list[tuple[list[int], list[int]]], max_length: int, overlong: str) -> list[tuple[int, int]]:
    """Validates examples; returns (length, index) of each usable one. Overlong samples are an error or truncated."""
    if overlong not in ("error", "truncate"):
        raise ValueError(f"overlong must be 'error' or 'truncate', not {overlong!r}")
    sized = []
    for i, (ids, labels) in enumerate(examples):
        if len(ids) != len(labels):
            raise DataError(f"input_ids has {len(ids)} tokens but labels has {len(labels)}", record=i, field="labels")
        if not ids:
            raise DataError("empty sample (no tokens)", record=i, field="input_ids")
        if len(ids) > max_length and overlong == "error":
            raise DataError(
                f"sample has {len(ids)} tokens, more than max_length={max_length}; raise max_length or truncate",
                record=i,
                field="input_ids",
            )
        sized.append((min(len(ids), max_length), i))
    return sized


def pack(examples: list[tuple[list[int], list[int]]], max_length: int, *, overlong: str = "error") -> list[PackedRow]:
    """Best-fit-decreasing bin packing of (input_ids, labels) samples into rows of at most `max_length` tokens.

    Deterministic: samples are taken longest first (ties by original order) and each goes into the fullest row that
    still has room, which wastes less than first-fit for the same O(n log n). Labels are HF-style (unshifted, -100 =
    untrained). `overlong="truncate"` cuts samples longer than max_length instead of raising.
    """
    sized = _check(examples, max_length, overlong)
    sized.sort(key=lambda s: (-s[0], s[1]))
    rows: list[PackedRow] = []
    # (free space, row index), kept sorted: bisect finds the row with the least free space that still fits.
    free: list[tuple[int, int]] = []
    for n, i in sized:
        j = bisect.bisect_left(free, (n, -1))
        if j == len(free):
            rows.append(PackedRow())
            slot = (max_length, len(rows) - 1)
        else:
            slot = free.pop(j)
        row = rows[slot[1]]
        ids, labels = examples[i]
        row.input_ids.extend(ids[:n])
        row.labels.extend(labels[:n])
        row.lengths.append(n)
        left = slot[0] - n
        if left > 0:
            bisect.insort(free, (left, slot[1]))
    return rows


def _row_tensors(row: PackedRow, width: int, pad_id: int, doc_offset: int):
    """ids, labels, positions, document ids of one row padded to `width`; padding is its own document."""
    n = len(row)
    ids = torch.full((width,), pad_id, dtype=torch.long)
    labels = torch.full((width,), IGNORE, dtype=torch.long)
    pos = torch.zeros(width, dtype=torch.long)
    doc = torch.full((width,), doc_offset + len(row.lengths), dtype=torch.long)
    ids[:n] = torch.tensor(row.input_ids, dtype=torch.long)
    labels[:n] = torch.tensor(row.labels, dtype=torch.long)
    start = 0
    for k, length in enumerate(row.lengths):
        pos[start : start + length] = torch.arange(length)
        doc[start : start + length] = doc_offset + k
        # The first token of a sample is never a target: predicting it would train across the boundary.
        labels[start] = IGNORE
        start += length
    if width > n:
        pos[n:] = torch.arange(width - n)
    return ids, labels, pos, doc


def document_mask(document_ids: torch.Tensor) -> torch.Tensor:
    """[B, 1, T, T] boolean mask, True = may attend: causal and only inside the same document."""
    t = document_ids.shape[-1]
    causal = torch.ones(t, t, dtype=torch.bool, device=document_ids.device).tril()
    same = document_ids[:, :, None] == document_ids[:, None, :]
    return (same & causal)[:, None]


@cache
def _compiled_create_block_mask():
    """`create_block_mask` under torch.compile, built once per process.

    Eager, it materialises the whole (B, T, T) boolean mask every step and then reduces it to blocks; compiled,
    inductor fuses the mask_mod into that reduction, so the full mask never exists. torch's own `_compile=True` flag
    does the same (torch 2.13 deprecates it in favour of this), but builds a new wrapper and warns on every call.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    return torch.compile(create_block_mask)


def flex_block_mask(document_ids: torch.Tensor):
    """A FlexAttention BlockMask for causal attention inside each document (build it on the device that trains).

    On CUDA it is built by a compiled `create_block_mask`; elsewhere (tests, CPU) eagerly, which needs no compiler."""
    from torch.nn.attention.flex_attention import create_block_mask

    docs = document_ids

    def mask_mod(b, h, q, kv):
        return (docs[b, q] == docs[b, kv]) & (q >= kv)

    b, t = docs.shape
    make = _compiled_create_block_mask() if docs.device.type == "cuda" else create_block_mask
    return make(mask_mod, B=b, H=None, Q_LEN=t, KV_LEN=t, device=docs.device)


def collate(
    rows: list[PackedRow], pad_id: int, *, attention: str = "mask", pad_to: int | None = None
) -> dict[str, torch.Tensor]:
    """Packed rows -> model inputs: input_ids, labels, position_ids, document_ids and attention_mask.

    attention="mask": a 4D boolean block-diagonal causal mask (CPU, SDPA). attention="flex": no mask here; call
    `flex_block_mask(batch["document_ids"].to(device))` on the training device (see `attention_inputs`).
    attention="causal": rows of one full-width sample each (no padding), no mask: plain causal attention.
    `pad_to` fixes the row width (e.g. max_length, or a multiple of 64) so compiled kernels see one shape.
    """
    if attention not in ("mask", "flex", "causal"):
        raise ValueError(f"attention must be 'mask', 'flex' or 'causal', not {attention!r}")
    if not rows:
        raise ValueError("collate needs at least one row")
    width = max(len(r) for r in rows)
    if pad_to is not None:
        width = max(width, pad_to)
    if attention == "causal" and any(len(r.lengths) != 1 or len(r) != width for r in rows):
        # Without a mask every token attends to all before it: a second sample or padding would leak into it.
        raise ValueError("attention='causal' needs rows of one sample each, all of the same width (no padding)")
    parts = [_row_tensors(r, width, pad_id, 0) for r in rows]
    batch = {
        "input_ids": torch.stack([p[0] for p in parts]),
        "labels": torch.stack([p[1] for p in parts]),
        "position_ids": torch.stack([p[2] for p in parts]),
        "document_ids": torch.stack([p[3] for p in parts]),
    }
    if attention == "mask":
        batch["attention_mask"] = document_mask(batch["document_ids"])
    return batch


def attention_inputs(batch: dict[str, torch.Tensor], device: torch.device | str, *, attention: str = "mask") -> dict:
    """Moves a collated batch to `device` and returns the kwargs for the model / `trained_token_loss`."""
    # "causal" rows also drop position_ids: they are 0..T-1, the model's default, and given explicitly transformers
    # scans them for packed sequences every step (a device-to-host sync, and a mask under whole-model compile).
    drop = ("document_ids", "position_ids") if attention == "causal" else ("document_ids",)
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k not in drop}
    if attention == "flex":
        out["attention_mask"] = flex_block_mask(batch["document_ids"].to(device, non_blocking=True))
    return out


def pad_batch(
    examples: list[tuple[list[int], list[int]]], pad_id: int, *, pad_to_multiple_of: int = 1
) -> dict[str, torch.Tensor]:
    """Unpacked samples right-padded to the longest one: input_ids, labels (-100 on padding), attention_mask [B, T]."""
    if not examples:
        raise ValueError("pad_batch needs at least one example")
    _check(examples, max(len(e[0]) for e in examples), "error")
    width = max(len(e[0]) for e in examples)
    width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for b, (i, lab) in enumerate(examples):
        ids[b, : len(i)] = torch.tensor(i, dtype=torch.long)
        labels[b, : len(i)] = torch.tensor(lab, dtype=torch.long)
        mask[b, : len(i)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def length_grouped_batches(lengths: list[int], batch_size: int, *, seed: int = 0, group: int = 50) -> list[list[int]]:
    """Indices in batches of similar length (shuffled megabatches of `group` batches, sorted inside): less padding."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(lengths), generator=g).tolist()
    mega = batch_size * group
    batches = []
    for s in range(0, len(order), mega):
        chunk = sorted(order[s : s + mega], key=lambda i: -lengths[i])
        batches.extend(chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size))
    return batches


def padding_fraction(lengths_per_batch: list[list[int]], widths: list[int] | None = None) -> float:
    """Share of computed token slots that are padding: 1 - real tokens / (rows x width) summed over batches."""
    real = sum(sum(b) for b in lengths_per_batch)
    if widths is None:
        widths = [max(b) for b in lengths_per_batch]
    slots = sum(len(b) * w for b, w in zip(lengths_per_batch, widths))
    return 1.0 - real / slots if slots else 0.0
