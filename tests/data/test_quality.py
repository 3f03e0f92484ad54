"""Quality filters of `chatforge data clean`: each rule on small synthetic replies, the shipped lists as package data,
and the pipeline's per-rule counts and scores in report.json / removed.jsonl."""

from __future__ import annotations

import json

import pytest

from chatforge.config import ConfigError
from chatforge.data.clean import CleanConfig, clean_records, main
from chatforge.data.cleaning.quality import (
    QualityConfig,
    cjk_share,
    quality_reason,
    refusal_pattern,
    repeat_ratio,
    shipped_list,
    symbol_ratio,
)
from chatforge.data.schema import Conversation, Message


def judge(reply, **kw):
    cfg = QualityConfig(enabled=True, **kw)
    return quality_reason(reply, cfg, refusal_pattern(cfg))


def test_repeat_ratio_words_and_cjk():
    assert repeat_ratio("the cat sat on the mat today")[0] == 0.0
    looped = " ".join(["buy now cheap"] * 10)
    ratio, units = repeat_ratio(looped)
    assert units == 30 and ratio > 0.85
    zh_ratio, zh_units = repeat_ratio("好的好的好的好的好的好的好的好的好的好的")
    assert zh_units == 20 and zh_ratio > 0.8
    assert judge(looped)[0].startswith("repetition")
    assert judge("buy now cheap " * 3) is None  # 9 units: too short to judge


def test_symbols_and_replacement_chars():
    assert symbol_ratio("Hello, world!")[0] == 0.0
    assert judge("★☆♥♦♣♠•◘○◙♂♀♪♫☼►◄↕‼¶§▬↨↑↓→←∟↔▲▼")[0].startswith("symbols")
    code = "def area(r):\n    return {'pi': 3.14, 'r': [r * r, r + 1]}  # compute\n\nprint(area(2)['r'][0])\n"
    assert judge(code) is None  # code is mostly letters and punctuation
    assert judge("caf\ufffd au lait")[0] == "replacement characters (U+FFFD)"
    assert judge("caf\ufffd", max_replacement_chars=1) is None


def test_reply_language():
    assert cjk_share("北京 hotel") == pytest.approx(2 / 7)
    assert judge("This answer is in English.", reply_language="zh")[0].startswith("reply not Chinese")
    assert judge("北京是中国的首都。", reply_language="zh") is None
    assert judge("42", reply_language="zh") is None  # no letters at all: nothing to judge
    assert judge("这是中文回答。", reply_language="en")[0].startswith("reply not English")


def test_refusal_lists_ship_as_package_data_and_match():
    assert "as an ai language model" in shipped_list("refusal_en")
    assert "作为一个人工智能" in shipped_list("refusal_zh")
    assert judge("As an AI language model, I cannot have opinions.") == (
        "refusal boilerplate",
        "as an ai language model",
    )
    assert judge("作为一个人工智能，我没有个人观点。")[0] == "refusal boilerplate"
    assert judge("As an AI language model, I cannot.", refusal_lists=[]) is None
    assert judge("Paris is the capital of France.") is None


def test_refusal_file_and_length_bounds(tmp_path):
    f = tmp_path / "mine.txt"
    f.write_text("# mine\nI will not say\n", encoding="utf-8")
    assert judge("Well, I will not say.", refusal_file=str(f)) == ("refusal boilerplate", "i will not say")
    assert judge("", min_reply_chars=1) == ("reply too short", 0)
    assert judge("x" * 11, max_reply_chars=10) == ("reply too long", 11)


def conv(user, reply):
    return Conversation([Message("user", user), Message("assistant", reply)])


def test_pipeline_counts_rules_and_records_scores():
    recs = [
        conv("What is the capital of France?", "Paris."),
        conv("Tell me about yourself.", "As an AI language model, I do not have feelings."),
        conv("Say something.", " ".join(["spam spam eggs"] * 12)),
        conv("Long prompt " * 50, "Yes."),  # a long prompt with a short reply is fine
    ]
    cfg = CleanConfig()
    cfg.quality.enabled = True
    cfg.split.enabled = False
    res = clean_records(recs, cfg)
    step = next(s for s in res.report["steps"] if s["step"] == "quality")
    assert step["removed"] == 2
    assert step["reasons"] == {"refusal boilerplate": 1, "repetition (3-gram repeat ratio > 0.5)": 1}
    by_index = {e["index"]: e for e in res.removed}
    assert by_index[1]["score"] == "as an ai language model"
    assert by_index[2]["score"] > 0.5
    assert len(res.splits["clean"]) == 2


def test_quality_off_by_default_and_bad_config_reported(tmp_path):
    recs = [conv("q", "As an AI language model, no.")]
    cfg = CleanConfig()
    cfg.split.enabled = False
    assert len(clean_records(recs, cfg).splits["clean"]) == 1
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"instruction": "q", "output": "a"}) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        main(
            [
                "--input",
                str(data),
                "--output",
                str(tmp_path / "o"),
                "quality.reply_language=fr",
                "quality.refusal_lists=[de]",
            ]
        )
    assert "quality.reply_language" in str(e.value) and "quality.refusal_lists" in str(e.value)
