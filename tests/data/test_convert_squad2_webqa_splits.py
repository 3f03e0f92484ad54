"""Converter options of SQuAD 2.0 / WebQA: --split keeps articles (and shared evidences) whole, hard negatives come
from the same article and split, --evidences, --unanswerable-ratio, and the counts in report.json."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from chatforge.data.convert import main as convert_main
from chatforge.data.convert.webqa import parse_split, split_groups
from chatforge.data.readers import read_records
from chatforge.errors import ChatforgeError

# ../shared/data beside the checkout (CI), or beside the main checkout of a worktree.
_SHARED = [Path(__file__).resolve().parents[3] / "shared", Path(__file__).resolve().parents[4] / "shared"]
REAL_SQUAD = next((d / "data/squad2/dev-v2.0.json" for d in _SHARED if (d / "data/squad2").is_dir()), Path("-"))


def squad(n_articles=6, paras=3):
    data = []
    for a in range(n_articles):
        paragraphs = []
        for p in range(paras):
            ctx = f"Article {a} paragraph {p}: the river Zed{a}x{p} flows past the town of Town{a}y{p}."
            qas = [
                {
                    "id": f"{a}-{p}-ok",
                    "question": f"Which town does the river Zed{a}x{p} flow past?",
                    "is_impossible": False,
                    "answers": [{"text": f"Town{a}y{p}", "answer_start": 0}],
                },
                {
                    "id": f"{a}-{p}-no",
                    "question": f"Which city does the river Zed{a}x{p} start in?",
                    "is_impossible": True,
                    "answers": [],
                    "plausible_answers": [{"text": f"Town{a}y{p}", "answer_start": 0}],
                },
            ]
            paragraphs.append({"context": ctx, "qas": qas})
        data.append({"title": f"Article{a}", "paragraphs": paragraphs})
    return {"version": "v2.0", "data": data}


def run(kind, src, out, *extra):
    assert convert_main([kind, "--input", str(src), "--output", str(out), *extra]) == 0
    report = json.loads((out / "report.json").read_text("utf-8"))
    return report


def records(out, split):
    return read_records(out / f"{split}.jsonl").records


def contexts(conv) -> list[str]:
    user = conv.messages[-2].content
    body = user.split("\n\nQuestion:")[0].removeprefix("Context: ")
    body = body.split("\n\n问题：")[0].removeprefix("参考资料：")
    parts = re.split(r"(?:^|\n+)\[\d+\] ", body)
    return [p.strip() for p in parts if p.strip()]


def test_split_by_article_shares_no_context_and_reports_counts(tmp_path):
    src = tmp_path / "squad.json"
    src.write_text(json.dumps(squad()))
    report = run("squad2", src, tmp_path / "out", "--split", "0.5,0.25,0.25", "--hard-negatives")
    seen: dict[str, str] = {}
    titles: dict[str, set] = {}
    for split in ("train", "val", "test"):
        recs = records(tmp_path / "out", split)
        assert recs, split
        assert report["split"][split]["examples"] == len(recs)
        assert report["split"][split]["answerable"] == sum(r.meta["answerable"] for r in recs)
        titles[split] = {r.meta["title"] for r in recs}
        for r in recs:
            for ctx in contexts(r):
                assert seen.setdefault(ctx, split) == split, f"context in {seen[ctx]} and {split}: {ctx}"
    assert not (titles["train"] & titles["val"]) and not (titles["train"] & titles["test"])
    assert not (titles["val"] & titles["test"])
    assert report["examples"] == sum(report["split"][s]["examples"] for s in ("train", "val", "test"))
    assert report["split"]["by"] == "article"


def test_squad2_hard_negatives_are_other_paragraphs_of_the_same_article(tmp_path):
    src = tmp_path / "squad.json"
    src.write_text(json.dumps(squad(2, 3)))
    report = run("squad2", src, tmp_path / "out", "--hard-negatives", "--unanswerable-ratio", "0.5")
    recs = read_records(tmp_path / "out" / "squad2.jsonl").records
    hard = [r for r in recs if r.meta.get("negative") == "same_article_other_paragraph"]
    assert hard and report["negatives"]["same_article_other_paragraph"] == len(hard)
    for r in hard:
        a, p = r.meta["qid"].split("-")[:2]
        (ctx,) = contexts(r)
        assert ctx.startswith(f"Article {a} paragraph ") and f"Town{a}y{p}" not in ctx
    assert report["answerable"] == report["unanswerable"]


def test_evidences_put_several_passages_with_the_answer_in_one(tmp_path):
    src = tmp_path / "squad.json"
    src.write_text(json.dumps(squad(2, 4)))
    run("squad2", src, tmp_path / "out", "--evidences", "3", "--ratio", "1:0")
    recs = read_records(tmp_path / "out" / "squad2.jsonl").records
    assert recs and all(r.meta["answerable"] for r in recs)
    for r in recs:
        ctxs = contexts(r)
        assert len(ctxs) == 3
        assert sum(r.meta["answers"][0] in c for c in ctxs) == 1  # distractors lack the answer


def test_webqa_split_keeps_negatives_inside_the_split(tmp_path):
    data = {}
    for i in range(40):
        topic = ["北京", "上海", "长江", "黄河"][i % 4]
        data[f"Q{i}"] = {
            "question": f"{topic}的第{i}个问题是什么?",
            "evidences": {f"Q{i}#0": {"answer": [f"答案{i}号"], "evidence": f"{topic}资料{i}：答案{i}号在这里。"}},
        }
    # Two questions sharing one evidence must land in the same split.
    data["Q1"]["evidences"]["Q1#0"]["evidence"] = data["Q0"]["evidences"]["Q0#0"]["evidence"] + "答案1号"
    data["Q0"]["evidences"]["Q0#0"]["evidence"] = data["Q1"]["evidences"]["Q1#0"]["evidence"]
    src = tmp_path / "webqa.json"
    src.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    report = run("webqa", src, tmp_path / "out", "--split", "0.6,0.2,0.2", "--evidences", "2")
    seen: dict[str, str] = {}
    where = {}
    for split in ("train", "val", "test"):
        for r in records(tmp_path / "out", split):
            where.setdefault(r.meta["qid"], split)
            assert len(contexts(r)) == 2
            for ctx in contexts(r):
                assert seen.setdefault(ctx, split) == split
            if not r.meta["answerable"]:
                answers = data[r.meta["qid"]]["evidences"][r.meta["qid"] + "#0"]["answer"]
                assert all(a not in r.messages[-2].content for a in answers)
    assert where["Q0"] == where["Q1"]
    assert report["groups"] == 39 and report["split"]["train"]["examples"] > report["split"]["test"]["examples"] > 0


def test_split_helpers_and_bad_options(tmp_path):
    assert parse_split("80:10:10") == pytest.approx((0.8, 0.1, 0.1))
    assert parse_split("0.9,0.1") == pytest.approx((0.9, 0.0, 0.1))
    for bad in ("a,b", "0,1,1", "1,2,3,4", "-1,1,1"):
        with pytest.raises(ChatforgeError, match="--split"):
            parse_split(bad)
    sizes = {f"g{i}": 10 for i in range(20)}
    got = split_groups(sizes, (0.8, 0.1, 0.1), 0)
    counts = [sum(1 for v in got.values() if v == k) for k in range(3)]
    assert counts == [16, 2, 2]
    src = tmp_path / "squad.json"
    src.write_text(json.dumps(squad(1, 1)))
    with pytest.raises(ChatforgeError, match="--evidences"):
        convert_main(["squad2", "--input", str(src), "--output", str(tmp_path / "o"), "--evidences", "0"])
    with pytest.raises(ChatforgeError, match="--unanswerable-ratio"):
        convert_main(["squad2", "--input", str(src), "--output", str(tmp_path / "o"), "--unanswerable-ratio", "2"])


@pytest.mark.skipif(not REAL_SQUAD.is_file(), reason="../shared/data/squad2 is not here")
def test_real_squad2_split_by_article(tmp_path):
    report = run("squad2", REAL_SQUAD, tmp_path / "out", "--split", "0.75,0.125,0.125", "--hard-negatives")
    titles = {s: {r.meta["title"] for r in records(tmp_path / "out", s)} for s in ("train", "val", "test")}
    assert len(titles["val"]) == len(titles["test"]) == 1 and len(titles["train"]) == 6
    assert not (titles["train"] & (titles["val"] | titles["test"]))
    assert report["answerable"] == report["unanswerable"] > 1000
