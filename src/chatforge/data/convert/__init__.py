"""`chatforge data convert NAME ...`: turn a named public dataset into chatforge JSONL plus a `report.json`.

webqa          Baidu WebQA -> grounded QA (answer from the context or refuse), balanced answerable/unanswerable
squad2         SQuAD 2.0 -> the same grounded-QA shape, with its real unanswerable questions
crosswoz       CrossWOZ hotel dialogues -> search_hotels tool-calling conversations with real DB results
summarization  CSL / LCSTS -> chat-style summarization dialogues from varied templates
"""

from __future__ import annotations

import importlib
import sys

CONVERTERS = {
    "webqa": "chatforge.data.convert.webqa",
    "squad2": "chatforge.data.convert.squad2",
    "crosswoz": "chatforge.data.convert.crosswoz",
    "summarization": "chatforge.data.convert.summarization",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    name = argv[0]
    if name not in CONVERTERS:
        print(f"chatforge data convert: unknown dataset {name!r}; choose from {', '.join(CONVERTERS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(CONVERTERS[name])
    return int(module.main(argv[1:]) or 0)
