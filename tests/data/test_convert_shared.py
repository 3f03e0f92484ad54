"""Each converter on the real files in ../shared/data: outputs read back and render with a template (as `chatforge
data show` does), and the reported counts are consistent with the files."""

from __future__ import annotations

import json

import pytest

from chatforge.data.clean import main as clean_main
from chatforge.data.convert import main as convert_main
from chatforge.data.readers import read_records
from chatforge.templates import encode_conversation

pytestmark = [pytest.mark.shared_data, pytest.mark.integration]


def _check(path, tiny_tok, n_expected):
    recs = read_records(path).records
    assert len(recs) == n_expected
    for conv in recs[:: max(1, len(recs) // 50)]:
        enc = encode_conversation(conv, tiny_tok, "chatml")
        assert any(enc.trained), conv.meta
    return recs


def test_webqa_and_squad2(shared_data, tmp_path, tiny_tok):
    assert (
        convert_main(["webqa", "--input", str(shared_data / "webqa/me_test.ann.json"), "--output", str(tmp_path / "w")])
        == 0
    )
    report = json.loads((tmp_path / "w/report.json").read_text("utf-8"))
    assert report["answerable"] == report["unanswerable"] == report["questions"] > 2000
    assert report["refusal_phrasings_used"] >= 10
    recs = _check(tmp_path / "w/webqa.jsonl", tiny_tok, report["examples"])
    for conv in recs[:200]:  # answers really are in answerable contexts and absent from unanswerable ones
        context = conv.messages[1].content
        if conv.meta["answerable"]:
            assert conv.messages[-1].content in context
    assert (
        convert_main(["squad2", "--input", str(shared_data / "squad2/dev-v2.0.json"), "--output", str(tmp_path / "s")])
        == 0
    )
    report = json.loads((tmp_path / "s/report.json").read_text("utf-8"))
    assert report["answerable"] == report["unanswerable"] > 1000
    _check(tmp_path / "s/squad2.jsonl", tiny_tok, report["examples"])


def test_crosswoz(shared_data, tmp_path, tiny_tok):
    cw = shared_data / "crosswoz"
    assert (
        convert_main(
            [
                "crosswoz",
                "--input",
                str(cw / "val.json.zip"),
                "--db",
                str(cw / "hotel_db.json"),
                "--domain",
                "hotel",
                "--output",
                str(tmp_path / "c"),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "c/report.json").read_text("utf-8"))
    assert report["dialogues_written"] > 350 and report["dialogues_with_tool_calls"] == report["dialogues_written"]
    recs = _check(tmp_path / "c/dialogues.jsonl", tiny_tok, report["dialogues_written"])
    _check(tmp_path / "c/rounds.jsonl", tiny_tok, report["rounds_written"])
    calls = [m for c in recs for m in c.messages if m.tool_calls]
    assert len(calls) == report["counts"]["tool calls"]


def test_summarization(shared_data, tmp_path, tiny_tok):
    for fmt, path in (("csl", "csl/ts_dev.tsv"), ("lcsts", "lcsts/PART_III.txt")):
        out = tmp_path / fmt
        assert (
            convert_main(["summarization", "--format", fmt, "--input", str(shared_data / path), "--output", str(out)])
            == 0
        )
        report = json.loads((out / "report.json").read_text("utf-8"))
        assert len(report["template_use"]) >= 10
        _check(out / f"{fmt}.jsonl", tiny_tok, report["examples"])


def test_clean_on_llamafactory_files(shared_data, tmp_path):
    demo = shared_data / "llamafactory_demo"
    for name in ("alpaca_zh_demo.json", "dpo_en_demo.json", "c4_demo.jsonl"):
        out = tmp_path / name
        assert clean_main(["--input", str(demo / name), "--output", str(out)]) == 0
        report = json.loads((out / "report.json").read_text("utf-8"))
        assert report["records_out"] == sum(report["split"]["counts"].values()) > 0
