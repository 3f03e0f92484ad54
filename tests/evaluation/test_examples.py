"""Every example eval config validates, and the choice demo file reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatforge.evaluation.config import load_eval_config
from chatforge.evaluation.tasks import read_choice_file

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("eval_*.yaml")), ids=lambda p: p.name)
def test_example_config_loads(path):
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# chatforge "), "each example starts with the command that runs it"
    cfg = load_eval_config(path)
    from chatforge.evaluation.benchmarks import is_benchmark, load_spec

    data_tasks = [t for t in cfg.eval.tasks if not is_benchmark(t)]
    assert cfg.eval.tasks and (cfg.data.val or not data_tasks)
    for t in cfg.eval.tasks:
        if is_benchmark(t):
            load_spec(t)  # the named benchmarks exist


def test_choice_demo_reads():
    items = read_choice_file(EXAMPLES / "eval_choice_demo.jsonl")
    assert len(items) == 24 and all(0 <= it.reference < len(it.record["choices"]) for it in items)
