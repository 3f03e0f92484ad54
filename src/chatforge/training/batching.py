"""Batch units and their order: padded (length-grouped or random) samples or packed rows, planned per epoch.

`Batches` turns encoded examples into what one micro-batch is built from, and `plan(epoch)` gives the epoch's batches
as lists of unit indices: a pure function of (seed, epoch), so a resumed run continues from (epoch, batch index).
Padded batches round their length up to `pad_to_multiple_of`, so a compiled model sees a few shapes, not one per
batch; packed rows always have the same width.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from chatforge.training.packing import collate, pack, pad_batch, padding_fraction


@dataclass
class Batches:
    units: list  # examples (input_ids, labels) or PackedRow
    lengths: list[int]  # real tokens per unit
    doc_lengths: list[list[int]]  # sample lengths inside each unit (one per unit unless packed), for attention FLOPs
    batch_size: int
    mode: str  # length_grouped | random | packed
    seed: int
    make: Callable[[list[int]], dict[str, torch.Tensor]]  # unit indices -> collated CPU batch
    pad_width: Callable[[int], int]  # longest unit in a batch -> the batch's width

    def plan(self, epoch: int) -> list[list[int]]:
        return plan_batches(self.lengths, self.batch_size, self.mode, self.seed, epoch)

    def padding_fraction(self, epoch: int = 0) -> float:
        plan = self.plan(epoch)
        return padding_fraction([[self.lengths[i] for i in b] for b in plan], [self.width(b) for b in plan])

    def width(self, idx: list[int]) -> int:
        return self.pad_width(max(self.lengths[i] for i in idx))


def lm_batches(examples: list, tcfg, *, max_length: int, pad_id: int, attention: str, pad_multiple: int) -> Batches:
    """Batch units for token-level training (sft, pt): packed rows or padded samples."""
    if tcfg.batching == "packed":
        # Packed rows (block-diagonal attention, positions restarting per sample) are the batch units.
        rows = pack(examples, max_length)
        fixed_width = max_length if pad_multiple > 1 else None
        return Batches(
            units=rows,
            lengths=[len(r) for r in rows],
            doc_lengths=[list(r.lengths) for r in rows],
            batch_size=tcfg.batch_size,
            mode="packed",
            seed=tcfg.seed,
            # On CUDA every row is max_length wide, so compiled kernels see one shape; on CPU padding only costs.
            make=lambda idx: collate([rows[i] for i in idx], pad_id, attention=attention, pad_to=fixed_width),
            pad_width=lambda n: fixed_width or n,
        )
    lengths = [len(ids) for ids, _ in examples]
    return Batches(
        units=examples,
        lengths=lengths,
        doc_lengths=[[n] for n in lengths],
        batch_size=tcfg.batch_size,
        mode=tcfg.batching,
        seed=tcfg.seed,
        make=lambda idx: pad_batch([examples[i] for i in idx], pad_id, pad_to_multiple_of=pad_multiple),
        pad_width=lambda n: -(-n // pad_multiple) * pad_multiple,
    )


def plan_batches(lengths: list[int], batch_size: int, mode: str, seed: int, epoch: int) -> list[list[int]]:
    """The batches (lists of unit indices) of one epoch. `length_grouped` sorts by length inside shuffled windows of
    64 batches so similar lengths share a batch (little padding) while the order stays random."""
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(len(lengths)).tolist()
    if mode in ("random", "packed"):
        return [perm[i : i + batch_size] for i in range(0, len(perm), batch_size)]
    window = batch_size * 64
    batches: list[list[int]] = []
    for start in range(0, len(perm), window):
        chunk = sorted(perm[start : start + window], key=lambda i: -lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    order = rng.permutation(len(batches)).tolist()
    return [batches[i] for i in order]
