"""Report formatting: fractions as percentages by metric name, BLEU/ROUGE and throughput as plain numbers."""

from __future__ import annotations

from chatforge.evaluation.report import _fmt, render_markdown


def test_fmt_by_metric_name():
    assert _fmt("slot_f1", 0.5) == "50.0%" and _fmt("false_refusal_rate", 0.125) == "12.5%"
    assert _fmt("tokens_per_second", 0.426) == "0.426"  # a slow rate is not a percentage
    assert _fmt("bleu4", 4.8) == "4.80" and _fmt("perplexity", 6.9) == "6.900"
    assert _fmt("loss", float("nan")) == "n/a"


def test_markdown_lists_metrics_and_examples():
    report = {
        "run": {
            "model": "m",
            "adapter": None,
            "template": "chatml",
            "data": ["d.jsonl"],
            "started": "now",
            "seconds": 1.0,
            "version": "0",
            "label": "x",
        },
        "tasks": {
            "grounded_qa": {
                "items": 2,
                "seconds": 0.5,
                "metrics": {"f1": 0.25, "false_refusal_rate": 0.5},
                "details": {},
                "examples": {"false_refusal": [{"question": "Q|1", "prediction": "I cannot tell."}]},
            }
        },
    }
    md = render_markdown(report)
    assert "| f1 | 25.0% |" in md and "| false_refusal_rate | 50.0% |" in md
    assert "### false refusal (showing 1)" in md and "Q\\|1" in md  # table pipes escaped
