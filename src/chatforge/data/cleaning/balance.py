"""Class balancing by downsampling: every class of a key keeps at most as many records as the smallest class (or a
fixed cap), chosen with a seeded RNG; kept records stay in their original order."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

MISSING = "<missing>"


@dataclass
class BalanceConfig:
    key: str | None = None  # a meta field (e.g. answerable, source; "meta." prefix optional); None = no balancing
    max_per_class: int | None = field(default=None, metadata={"min": 1})  # None = the size of the smallest class


def key_value(meta: dict[str, Any], key: str) -> str:
    """The class label of a record: meta[key] (dotted paths reach into nested dicts), as a string."""
    value: Any = meta
    for part in key.removeprefix("meta.").split("."):
        if not isinstance(value, dict) or part not in value:
            return MISSING
        value = value[part]
    return str(value)


def downsample(labels: list[str], cfg: BalanceConfig, seed: int) -> tuple[list[int], dict[str, dict[str, int]]]:
    """Indices to keep, and per class {"before", "after"} counts."""
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_class[label].append(i)
    if not by_class:
        return [], {}
    cap = min(len(v) for v in by_class.values())
    if cfg.max_per_class is not None:
        cap = cfg.max_per_class
    rng = random.Random(seed)
    keep: list[int] = []
    stats = {}
    for label in sorted(by_class):
        idx = by_class[label]
        chosen = idx if len(idx) <= cap else rng.sample(idx, cap)
        keep.extend(chosen)
        stats[label] = {"before": len(idx), "after": len(chosen)}
    return sorted(keep), stats
