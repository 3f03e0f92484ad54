"""CSL / LCSTS -> templated summarization dialogues."""

from __future__ import annotations

import json

import pytest

from chatforge.data.convert import main as convert_main
from chatforge.data.convert.summarization import TEMPLATES
from chatforge.data.readers import read_records
from chatforge.errors import DataError


def test_csl_many_templates_reference_last(tmp_path):
    lines = [f"to title\t摘要内容第{i}条，研究了某种方法的性能。\t标题{i}" for i in range(60)]
    src = tmp_path / "ts_dev.tsv"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    assert convert_main(["summarization", "--format", "csl", "--input", str(src), "--output", str(out)]) == 0
    recs = read_records(out / "csl.jsonl").records
    report = json.loads((out / "report.json").read_text("utf-8"))
    assert len(TEMPLATES) >= 10 and report["templates"] == len(TEMPLATES)
    assert len(recs) == 60 and len(report["template_use"]) >= 10  # 60 examples spread over the templates
    for i, conv in enumerate(recs):
        assert conv.meta["reference"] == f"标题{i}"
        assert f"摘要内容第{i}条" in "".join(m.content for m in conv.messages if m.role == "user")
        # The reference is the answer right after the turn that carries the text (a "thanks" turn may follow).
        assert f"标题{i}" in [m.content for m in conv.messages if m.role == "assistant"]
    assert len({c.messages[0].content.replace(c.meta["reference"], "") for c in recs}) > 30  # varied wording


def test_lcsts_min_score_and_determinism(tmp_path):
    docs = "".join(
        f"<doc id={i}>\n<human_label>{1 + i % 5}</human_label>\n<summary>\n摘要{i}\n</summary>\n"
        f"<short_text>\n新闻正文{i}。\n</short_text>\n</doc>\n"
        for i in range(10)
    )
    src = tmp_path / "PART_III.txt"
    src.write_text(docs, encoding="utf-8")
    for name in ("a", "b"):
        assert (
            convert_main(
                [
                    "summarization",
                    "--format",
                    "lcsts",
                    "--input",
                    str(src),
                    "--output",
                    str(tmp_path / name),
                    "--seed",
                    "3",
                ]
            )
            == 0
        )
    report = json.loads((tmp_path / "a" / "report.json").read_text("utf-8"))
    assert report["examples"] == 6 and report["removed"] == {"human_label below 3": 4}
    assert (tmp_path / "a" / "lcsts.jsonl").read_bytes() == (tmp_path / "b" / "lcsts.jsonl").read_bytes()


def test_csl_bad_line_is_located(tmp_path):
    src = tmp_path / "bad.tsv"
    src.write_text("to title\tabstract\ttitle\nonly one column\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 2"):
        convert_main(["summarization", "--format", "csl", "--input", str(src), "--output", str(tmp_path / "o")])
