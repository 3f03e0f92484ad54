"""Batch plans: repeated windows (GRPO's num_iterations) and the rollout reuse that serves them."""

from __future__ import annotations

from chatforge.training.batching import Batches, plan_batches
from chatforge.training.grpo import WindowReuse


def _batches(n: int, **kw) -> Batches:
    return Batches(
        units=list(range(n)),
        lengths=[5] * n,
        doc_lengths=[[5]] * n,
        batch_size=2,
        mode="random",
        seed=3,
        make=lambda idx: {},
        pad_width=lambda w: w,
        **kw,
    )


def test_repeats_each_window_after_filling_up_to_whole_windows():
    base = plan_batches([5] * 10, 2, "random", 3, 1)  # 5 batches
    plan = _batches(10, repeat_window=2, repeats=3).plan(1)
    filled = base + base[:1]  # 5 -> 6 batches: three windows of 2
    want = [b for s in range(0, 6, 2) for b in filled[s : s + 2] * 3]
    assert plan == want
    assert _batches(10).plan(1) == base  # repeats=1: the plain plan


class _CountingRollout:
    def __init__(self):
        self.calls: list[list[int]] = []

    def make(self, idx):
        self.calls.append(idx)
        return {"id": len(self.calls)}


def test_window_reuse_generates_once_per_window_pass():
    rollout = _CountingRollout()
    make = WindowReuse(rollout, window=2, repeats=2)  # type: ignore[arg-type]
    got = [make(i)["id"] for i in ([0], [1], [0], [1], [2], [3], [2], [3])]
    assert got == [1, 2, 1, 2, 3, 4, 3, 4]
    assert rollout.calls == [[0], [1], [2], [3]]
