"""Padded, length-grouped batches run one compiled layer graph after warm-up (issue 10), reproduced on CPU.

The plan below contains every case that made padded batches recompile on the H200: a first batch whose width (64)
equals the model's hidden size (duck sizing pinned the length), a batch without padding (transformers then passes no
SDPA mask), a one-row remainder (batch dimension 1 is a constant to dynamo), and widths 64..256 with batch sizes 2
and 3. The fast variant compiles with the `aot_eager` backend (dynamo's guards, which decide recompiles, are the same
as under inductor); the integration variant uses inductor itself.
"""

from __future__ import annotations

import random

import pytest
import torch

from chatforge.models.tiny import tiny_llama
from chatforge.training.batching import lm_batches, padded_width, plan_batches
from chatforge.training.config import TrainConfig
from chatforge.training.losses import trained_token_loss
from chatforge.training.monitor import compile_count
from chatforge.training.speedups import compile_events, explicit_causal_mask, wrap_layers

LENGTHS = [256, 256, 150, 190, 100, 128, 65, 90, 10, 33, 60]  # bs 2 -> widths 256 (no padding), 192, 128, 128, 64


def _examples(lengths: list[int]) -> list[tuple[list[int], list[int]]]:
    rng = random.Random(0)
    out = []
    for n in lengths:
        ids = [rng.randrange(1, 100) for _ in range(n)]
        out.append((ids, ids))
    return out


def _padded_plan():
    tcfg = TrainConfig(batch_size=2, batching="length_grouped", seed=0)
    batches = lm_batches(_examples(LENGTHS), tcfg, max_length=256, pad_id=0, attention="mask", pad_multiple=64)
    plan = batches.plan(0)
    # Warm up on the 64-wide batch: its length equals hidden_size, the case duck sizing turned into a constant.
    plan.sort(key=lambda idx: batches.width(idx) != 64)
    return batches, plan


def test_padded_plan_has_no_single_row_batch_and_bounded_widths():
    batches, plan = _padded_plan()
    assert sorted(len(b) for b in plan) == [2, 2, 2, 2, 3]  # the 11th sample joined a batch instead of riding alone
    assert sorted(i for b in plan for i in b) == list(range(len(LENGTHS)))  # nothing dropped or repeated
    assert batches.batches_per_epoch() == 5
    # Without padding for compiled shapes (CPU default, multiple 1) the plan is the plain one.
    assert max(len(b) for b in plan_batches(LENGTHS, 2, "length_grouped", 0, 0)) == 2
    # batch_size 1 asked for one-row batches: they stay.
    assert plan_batches(LENGTHS, 1, "random", 0, 0, min_rows=2) == plan_batches(LENGTHS, 1, "random", 0, 0)
    assert all(len(b) == 1 for b in plan_batches(LENGTHS, 1, "random", 0, 0, min_rows=2))
    widths = {padded_width(n, 64, 2048) for n in range(1, 2049)}
    assert widths == {64 * k for k in range(1, 9)} | {256 * k for k in range(3, 9)}
    assert padded_width(520, 64, 2048) == 768 and padded_width(520, 64, 600) == 640 and padded_width(7, 1) == 7


def test_explicit_mask_matches_sdpa_is_causal():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 9, 8) for _ in range(3))
    mask = explicit_causal_mask(torch.zeros(2, 9, 16))
    assert mask.shape == (2, 1, 9, 9) and mask.dtype == torch.bool
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    got = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(got, ref)


def _count_recompiles(backend: str) -> tuple[int, list, dict]:
    torch._dynamo.reset()
    model = tiny_llama(100, num_hidden_layers=2)  # hidden 64: a 64-token batch is the duck-sizing hazard
    model.config._attn_implementation = "sdpa"
    assert wrap_layers(model, compile=True, dynamic=True, compile_on_cpu=True, backend=backend) == (0, True)
    batches, plan = _padded_plan()
    shapes, after_warmup = [], 0
    for step, idx in enumerate(plan):
        batch = batches.make(idx)
        before = compile_count()
        loss, n, _ = trained_token_loss(model, batch)
        (loss / n).backward()
        built = compile_count() - before
        shapes.append((tuple(batch["input_ids"].shape), int(batch["attention_mask"].min()) == 1, built))
        if step > 0:
            after_warmup += built
    return after_warmup, shapes, compile_events(model)


def _check(backend: str) -> None:
    recompiles, shapes, events = _count_recompiles(backend)
    # The plan really covers the hazards: a no-padding batch, several widths, two batch sizes.
    assert any(no_pad for _, no_pad, _ in shapes) and len({s[0][1] for s in shapes}) >= 3
    assert len({s[0][0] for s in shapes}) == 2
    assert recompiles == 0, (
        f"{recompiles} recompiles after warm-up; per batch (shape, no padding, graphs built): {shapes}; "
        f"graphs per layer-input shape: {events}"
    )
    assert list(events) == ["3x64"], events  # only the warm-up shape built a graph


def test_padded_batches_do_not_recompile_after_warmup_aot_eager():
    _check("aot_eager")


@pytest.mark.integration
def test_padded_batches_do_not_recompile_after_warmup_inductor():
    _check("inductor")
