"""Stratified train/val/test split (default 8:1:1): each class of the key is shuffled with the seed and cut by the
ratios (largest remainder rounding), so every split has the class mix of the whole."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field


@dataclass
class SplitConfig:
    enabled: bool = True
    names: list[str] = field(default_factory=lambda: ["train", "val", "test"])
    ratios: list[float] = field(default_factory=lambda: [8.0, 1.0, 1.0])
    key: str | None = None  # a meta field to stratify by; None = one stratum


def allocate(n: int, ratios: list[float]) -> list[int]:
    """Split n items by ratios with largest-remainder rounding (the counts sum to n)."""
    total = sum(ratios)
    exact = [n * r / total for r in ratios]
    counts = [int(x) for x in exact]
    order = sorted(range(len(ratios)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def stratified_split(labels: list[str], ratios: list[float], seed: int) -> list[list[int]]:
    """For each split, the sorted indices assigned to it."""
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_class[label].append(i)
    rng = random.Random(seed)
    parts: list[list[int]] = [[] for _ in ratios]
    for label in sorted(by_class):
        idx = list(by_class[label])
        rng.shuffle(idx)
        start = 0
        for p, count in enumerate(allocate(len(idx), ratios)):
            parts[p].extend(idx[start : start + count])
            start += count
    return [sorted(p) for p in parts]
