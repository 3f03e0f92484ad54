"""Batch units and their order: padded (length-grouped or random) samples or packed rows, planned per epoch.

`Batches` turns encoded examples into what one micro-batch is built from, and `plan(epoch)` gives the epoch's batches
as lists of unit indices: a pure function of (seed, epoch), so a resumed run continues from (epoch, batch index).
Padded batches round their length up to a bucket (`padded_width`: multiples of `pad_to_multiple_of` up to 8 of them,
then multiples of 4 of them), so a compiled model sees a small, bounded set of shapes, not one per batch, and the
plan never makes a one-row padded batch (a batch dimension of 1 is a constant to torch.compile, so that batch would
compile a graph of its own): a single leftover row joins the batch before it. Packed rows always have the same width.
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
    min_rows: int = 1  # batches smaller than this join the batch before them (2 for padded batches)
    # GRPO's num_iterations: each window of `repeat_window` batches (one optimizer step) runs `repeats` times in a
    # row; the epoch's plan is first filled up to a whole number of windows from its start.
    repeat_window: int = 1
    repeats: int = 1

    def plan(self, epoch: int) -> list[list[int]]:
        base = plan_batches(self.lengths, self.batch_size, self.mode, self.seed, epoch, min_rows=self.min_rows)
        if self.repeats == 1:
            return base
        window = self.repeat_window
        while len(base) % window:
            base = base + base[: window - len(base) % window]
        out: list[list[int]] = []
        for s in range(0, len(base), window):
            out += base[s : s + window] * self.repeats
        return out

    def batches_per_epoch(self) -> int:
        """The same for every epoch: only the order changes, never how the windows are cut."""
        return len(self.plan(0))

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

    def width(n: int) -> int:
        return padded_width(n, pad_multiple, max_length)

    return Batches(
        units=examples,
        lengths=lengths,
        doc_lengths=[[n] for n in lengths],
        batch_size=tcfg.batch_size,
        mode=tcfg.batching,
        seed=tcfg.seed,
        # pad_batch rounds the longest sample up to a multiple of its argument: the bucket itself is one.
        make=lambda idx: pad_batch(
            [examples[i] for i in idx], pad_id, pad_to_multiple_of=width(max(lengths[i] for i in idx))
        ),
        pad_width=width,
        min_rows=2 if pad_multiple > 1 else 1,  # only where batches are shaped for a compiled model (CUDA)
    )


def padded_width(n: int, multiple: int, max_length: int | None = None) -> int:
    """The padded width of a batch whose longest sample has `n` tokens.

    With `multiple` m > 1: the next multiple of m up to 8m (64..512 for m = 64), then the next multiple of 4m (768,
    1024, ...), never beyond `max_length` rounded up to m. That bounds the widths a run can see (14 at max_length 2048)
    while wasting less than powers of two would (a 520-token batch pads to 768, not 1024). m <= 1: no padding.
    """
    if multiple <= 1:
        return n
    width = -(-n // multiple) * multiple
    if width <= 8 * multiple:
        return width
    coarse = -(-n // (4 * multiple)) * 4 * multiple
    cap = -(-max_length // multiple) * multiple if max_length else coarse
    return max(width, min(coarse, cap))


def _cut(indices: list[int], batch_size: int, min_rows: int) -> list[list[int]]:
    batches = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    if len(batches) > 1 and len(batches[-1]) < min(min_rows, batch_size):
        last = batches.pop()
        batches[-1] = batches[-1] + last  # a one-row remainder rides along with the batch before it
    return batches


def plan_batches(
    lengths: list[int], batch_size: int, mode: str, seed: int, epoch: int, *, min_rows: int = 1
) -> list[list[int]]:
    """The batches (lists of unit indices) of one epoch. `length_grouped` sorts by length inside shuffled windows of
    64 batches so similar lengths share a batch (little padding) while the order stays random. A last batch of a
    window smaller than `min_rows` is merged into the one before it (with the next-shortest samples)."""
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(len(lengths)).tolist()
    if mode in ("random", "packed"):
        return _cut(perm, batch_size, min_rows)
    window = batch_size * 64
    batches: list[list[int]] = []
    for start in range(0, len(perm), window):
        chunk = sorted(perm[start : start + window], key=lambda i: -lengths[i])
        batches += _cut(chunk, batch_size, min_rows)
    order = rng.permutation(len(batches)).tolist()
    return [batches[i] for i in order]
