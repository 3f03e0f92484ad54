"""WebQA / SQuAD 2.0 -> grounded QA: balance, hard negatives, refusal phrasings, both WebQA formats, errors."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from chatforge.data.convert import main as convert_main
from chatforge.data.convert.webqa import REFUSALS_EN, REFUSALS_ZH, balance
from chatforge.data.readers import read_records
from chatforge.errors import ChatforgeError, DataError
from chatforge.evaluation.metrics import is_refusal

WEBQA = {
    "Q1": {
        "question": "法国的首都是哪里?",
        "evidences": {"Q1#0": {"answer": ["巴黎"], "evidence": "法国的首都是巴黎，位于塞纳河畔。"}},
    },
    "Q2": {
        "question": "德国的首都是哪里?",
        "evidences": {"Q2#0": {"answer": ["柏林"], "evidence": "德国的首都是柏林，人口三百多万。"}},
    },
    "Q3": {
        "question": "长江有多长?",
        "evidences": {"Q3#0": {"answer": ["6300公里"], "evidence": "长江全长约6300公里。"}},
    },
    "Q4": {
        "question": "黄河流经几个省?",
        "evidences": {"Q4#0": {"answer": ["九个"], "evidence": "黄河流经九个省区。"}},
    },
}


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def convert(kind, src, out, *extra):
    assert convert_main([kind, "--input", str(src), "--output", str(out), *extra]) == 0
    report = json.loads((out / "report.json").read_text("utf-8"))
    records = read_records(out / f"{kind}.jsonl").records
    return report, records


def test_balanced_by_default_with_hard_negatives(tmp_path):
    report, recs = convert("webqa", write(tmp_path, "t.json", WEBQA), tmp_path / "out")
    assert report["answerable"] == report["unanswerable"] == 4 and report["examples"] == 8
    by_q = {}
    for conv in recs:
        assert [m.role for m in conv.messages] == ["system", "user", "assistant"]
        by_q.setdefault(conv.meta["qid"], {})[conv.meta["answerable"]] = conv
    q1 = by_q["Q1"]
    assert q1[True].messages[-1].content == "巴黎" and "法国的首都是巴黎" in q1[True].messages[1].content
    # The hard negative for "the capital of France" is the evidence about Germany's capital (shares 首都), not rivers.
    assert "柏林" in q1[False].messages[1].content and q1[False].meta["answers"] == []
    assert is_refusal(q1[False].messages[-1].content)


def test_ratio_parameter_and_report(tmp_path):
    report, recs = convert("webqa", write(tmp_path, "t.json", WEBQA), tmp_path / "out", "--ratio", "2:1")
    assert (report["answerable"], report["unanswerable"]) == (4, 2)
    assert report["ratio_measured"] == "4:2" and report["removed_by_balancing"]["unanswerable"] == 2
    assert Counter(c.meta["answerable"] for c in recs) == {True: 4, False: 2}


def test_train_format_uses_own_no_answer_evidence(tmp_path):
    data = json.loads(json.dumps(WEBQA))
    data["Q3"]["evidences"]["Q3#1"] = {"answer": ["no_answer"], "evidence": "长江是中国第一大河。"}
    data["Q3"]["evidences"]["Q3#2"] = {"answer": ["no_answer"], "evidence": "长江长6300公里。"}  # mislabelled
    report, recs = convert("webqa", write(tmp_path, "train.json", data), tmp_path / "out")
    neg = next(c for c in recs if c.meta["qid"] == "Q3" and not c.meta["answerable"])
    assert neg.meta["negative"] == "own_no_answer" and "第一大河" in neg.messages[1].content
    assert report["counts"]["no_answer evidences containing the answer, skipped"] == 1


def test_instruction_configurable_and_deterministic(tmp_path):
    src = write(tmp_path, "t.json", WEBQA)
    _, a = convert("webqa", src, tmp_path / "a", "--instruction", "只用资料回答。", "--instruction-position", "user")
    _, b = convert("webqa", src, tmp_path / "b", "--instruction", "只用资料回答。", "--instruction-position", "user")
    assert (tmp_path / "a" / "webqa.jsonl").read_bytes() == (tmp_path / "b" / "webqa.jsonl").read_bytes()
    assert a[0].messages[0].role == "user" and a[0].messages[0].content.startswith("只用资料回答。")


def test_refusal_phrasings_are_many_distinct_and_detected():
    for phrasings in (REFUSALS_ZH, REFUSALS_EN):
        assert len(set(phrasings)) >= 10
        assert all(is_refusal(p) for p in phrasings), [p for p in phrasings if not is_refusal(p)]


def test_balance_helper_downsamples_the_larger_side():
    import random

    a, u = list(range(10)), list(range(100, 103))
    ka, ku = balance(a, u, (1.0, 1.0), random.Random(0))
    assert len(ka) == len(ku) == 3
    ka, ku = balance(a, u, (1.0, 0.0), random.Random(0))
    assert len(ka) == 10 and ku == []


def test_squad2_real_unanswerables(tmp_path):
    squad = {
        "version": "v2.0",
        "data": [
            {
                "title": "T",
                "paragraphs": [
                    {
                        "context": "Paris is the capital of France.",
                        "qas": [
                            {
                                "id": "a",
                                "question": "What is the capital of France?",
                                "is_impossible": False,
                                "answers": [{"text": "Paris", "answer_start": 0}, {"text": "Paris", "answer_start": 0}],
                            },
                            {
                                "id": "b",
                                "question": "What is the capital of Spain?",
                                "is_impossible": True,
                                "answers": [],
                                "plausible_answers": [{"text": "Paris", "answer_start": 0}],
                            },
                            {
                                "id": "c",
                                "question": "Which country has Paris?",
                                "is_impossible": False,
                                "answers": [{"text": "France", "answer_start": 24}],
                            },
                        ],
                    }
                ],
            }
        ],
    }
    report, recs = convert("squad2", write(tmp_path, "dev.json", squad), tmp_path / "out")
    assert report["answerable"] == report["unanswerable"] == 1  # 2 answerable downsampled to 1 (balanced)
    neg = next(c for c in recs if not c.meta["answerable"])
    assert neg.meta["qid"] == "b" and is_refusal(neg.messages[-1].content)
    assert "Context: Paris is the capital" in neg.messages[1].content


def test_bad_inputs_name_the_place(tmp_path):
    bad = write(tmp_path, "bad.json", {"Q1": {"question": "x", "evidences": {"e": {"answer": "巴黎"}}}})
    with pytest.raises(DataError, match="record e"):
        convert_main(["webqa", "--input", str(bad), "--output", str(tmp_path / "o")])
    with pytest.raises(ChatforgeError, match="--ratio"):
        convert_main(
            [
                "webqa",
                "--input",
                str(write(tmp_path, "t.json", WEBQA)),
                "--output",
                str(tmp_path / "o"),
                "--ratio",
                "half",
            ]
        )
    with pytest.raises(ChatforgeError, match="not found"):
        convert_main(["webqa", "--input", str(tmp_path / "missing.json"), "--output", str(tmp_path / "o")])
