"""`chatforge data ...`: dispatches to show (inspect masks), convert (named datasets), clean (pipeline) and augment
(generation through an OpenAI-compatible endpoint)."""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {
    "show": ("chatforge.data.show", "print conversations coloured by trained/untrained tokens"),
    "convert": ("chatforge.data.convert", "convert a named dataset (webqa, squad2, crosswoz, summarization)"),
    "clean": ("chatforge.data.clean", "normalise, filter, deduplicate, mask PII, balance and split"),
    "augment": ("chatforge.data.augment", "rephrase, answer or extend records through an OpenAI-compatible model"),
    "demo": ("chatforge.data.demo_qa", "generate the fictional grounded-QA demo set"),
    "tokenize": ("chatforge.data.shards", "tokenize a pretraining corpus once into memory-mapped token shards"),
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: chatforge data SUBCOMMAND ...\n")
        for name, (_, help_) in SUBCOMMANDS.items():
            print(f"  {name:<9} {help_}")
        return 0
    if argv[0] not in SUBCOMMANDS:
        print(f"chatforge data: unknown subcommand {argv[0]!r}", file=sys.stderr)
        return 2
    return int(importlib.import_module(SUBCOMMANDS[argv[0]][0]).main(argv[1:]) or 0)
