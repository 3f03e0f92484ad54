"""`chatforge data clean`: every rule on small synthetic inputs, the pipeline report, and the CLI on every format."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from chatforge.config import ConfigError
from chatforge.data.clean import CleanConfig, clean_records, main
from chatforge.data.cleaning.balance import BalanceConfig, downsample, key_value
from chatforge.data.cleaning.dedup import DedupConfig, estimate_jaccard, exact_duplicates, near_duplicates, signatures
from chatforge.data.cleaning.filters import (
    BlocklistConfig,
    LengthConfig,
    blocklist_reason,
    compile_blocklist,
    detect_language,
    length_reason,
)
from chatforge.data.cleaning.normalize import NormalizeConfig, normalize_text
from chatforge.data.cleaning.split import allocate, stratified_split
from chatforge.data.readers import read_records
from chatforge.data.schema import Conversation, Message, PreferencePair, TextDoc

# ------------------------------------------------------------------------------------------------------ normalisation


def norm(text, **kw):
    return normalize_text(text, NormalizeConfig(**kw))


def test_whitespace_keeps_indentation_and_paragraphs():
    assert norm("  a   b \t c  \n\n\n\nd  ") == "a b c\n\nd"
    assert norm("def f():\n    return  1   # x") == "def f():\n    return 1 # x"
    assert norm("a\r\nb\u00a0c") == "a\nb c"


def test_full_half_width():
    assert norm("ＡＢＣ１２３　ｘ，你好！") == "ABC123 x，你好！"  # Chinese punctuation kept by default
    assert norm("ＡＢＣ，！？", punctuation_to_half=True) == "ABC,!?"
    assert norm("ＡＢＣ", width="keep") == "ＡＢＣ"


def test_html_tags_entities_and_code_blocks():
    assert norm("<p>Hello <b>world</b></p>&nbsp;&amp; more") == "Hello world & more"
    assert norm("<script>alert(1)</script>ok<!-- c -->") == "ok"
    assert norm("a < b > c and <tool_call>x</tool_call>") == "a < b > c and <tool_call>x</tool_call>"
    code = "See:\n```html\n<div>keep</div>\n```\n<i>drop</i>"
    assert norm(code) == "See:\n```html\n<div>keep</div>\n```\ndrop"


def test_urls_and_control_chars():
    assert norm("see https://example.com/x?a=1 and www.foo.cn/p。") == "see and 。"
    assert norm("see https://example.com/x now", urls="mask") == "see <URL> now"
    assert norm("keep http://x.y", urls="keep") == "keep http://x.y"
    assert norm("a\x00b\u200bc\x1fd\ufeff") == "abcd"
    counts = Counter()
    normalize_text("<b>x</b>  y", NormalizeConfig(), counts)
    assert counts["html"] == 1 and counts["whitespace"] == 1 and counts["urls"] == 0


# ------------------------------------------------------------------------------------------------------------ filters


def test_language_detection():
    assert detect_language("今天天气很好，我们去公园散步吧。") == "zh"
    assert detect_language("The weather is nice today, let's go for a walk.") == "en"
    assert detect_language("用 Python 写一个 quicksort 函数：def quicksort(arr): return arr") == "zh"
    assert detect_language("12345 !!!") == "other"


def test_length_and_blocklist(tmp_path):
    cfg = LengthConfig(min=3, max=5)
    assert length_reason(2, cfg).startswith("too short") and length_reason(6, cfg).startswith("too long")
    assert length_reason(4, cfg) is None
    f = tmp_path / "block.txt"
    f.write_text("# comment\n赌博\n", encoding="utf-8")
    pattern = compile_blocklist(BlocklistConfig(words=["Casino"], file=str(f)))
    assert blocklist_reason("网上赌博网站", pattern) == "blocklist: 赌博"
    assert blocklist_reason("best CASINO here", pattern) == "blocklist: casino"
    assert blocklist_reason("clean text", pattern) is None
    rx = compile_blocklist(BlocklistConfig(words=[r"\bkill(ing)?\b"], regex=True))
    assert blocklist_reason("no skill", rx) is None and blocklist_reason("killing", rx)


# -------------------------------------------------------------------------------------------------------------- dedup


def _random_text(rng, n, alphabet):
    return "".join(rng.choice(alphabet) for _ in range(n))


def _mutate(text, k, rng, alphabet):
    chars = list(text)
    for pos in range(0, len(chars), max(1, len(chars) // k))[:k]:
        chars[pos] = rng.choice(alphabet)
    return "".join(chars)


def _jaccard(a, b, n):
    sa = {a[i : i + n] for i in range(len(a) - n + 1)}
    sb = {b[i : i + n] for i in range(len(b) - n + 1)}
    return len(sa & sb) / len(sa | sb)


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_near_dup_threshold(lang):
    rng = random.Random(0)
    alphabet = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)] if lang == "zh" else list("abcdefghijklmnopqrstuvwxyz ")
    n = 3 if lang == "zh" else 5
    base = _random_text(rng, 600, alphabet)
    close, far = _mutate(base, 6, rng, alphabet), _mutate(base, 40, rng, alphabet)
    j_close, j_far = _jaccard(base, close, n), _jaccard(base, far, n)
    assert j_close > 0.9 and 0.4 < j_far < 0.7  # the synthetic pairs bracket the thresholds used below
    other = _random_text(rng, 600, alphabet)
    texts = [base, close, far, other]
    sig = signatures(texts, DedupConfig())
    assert (
        abs(estimate_jaccard(sig[0], sig[1]) - j_close) < 0.1 and abs(estimate_jaccard(sig[0], sig[2]) - j_far) < 0.12
    )
    assert set(near_duplicates(texts, DedupConfig(threshold=0.8))) == {1}
    loose = near_duplicates(texts, DedupConfig(threshold=0.3))
    assert set(loose) == {1, 2} and loose[1][0] == 0 and loose[2][0] == 0


def test_near_dup_short_texts_and_first_kept():
    texts = ["你好", "你好", "再见", "hello world", "hello world!", ""]
    removed = near_duplicates(texts, DedupConfig(threshold=0.7))
    assert 1 in removed and removed[1][0] == 0 and 0 not in removed and 2 not in removed and 5 not in removed


def test_exact_duplicates():
    assert exact_duplicates(["a", "b", "a", "b", "c"]) == {2: 0, 3: 1}


# ----------------------------------------------------------------------------------------------------- balance, split


def test_balance_downsamples_to_smallest_class_deterministically():
    labels = ["yes"] * 10 + ["no"] * 3
    keep, stats = downsample(labels, BalanceConfig(key="x"), seed=1)
    assert stats == {"no": {"before": 3, "after": 3}, "yes": {"before": 10, "after": 3}}
    assert keep == downsample(labels, BalanceConfig(key="x"), seed=1)[0] and keep == sorted(keep)
    keep, _ = downsample(labels, BalanceConfig(key="x", max_per_class=5), seed=1)
    assert Counter(labels[i] for i in keep) == {"yes": 5, "no": 3}
    assert key_value({"a": {"b": True}}, "meta.a.b") == "True" and key_value({}, "a") == "<missing>"


def test_stratified_split_ratios():
    assert allocate(10, [8, 1, 1]) == [8, 1, 1] and sum(allocate(7, [8, 1, 1])) == 7
    labels = ["a"] * 80 + ["b"] * 20
    parts = stratified_split(labels, [8, 1, 1], seed=0)
    assert [len(p) for p in parts] == [80, 10, 10]
    assert [Counter(labels[i] for i in p) for p in parts] == [{"a": 64, "b": 16}, {"a": 8, "b": 2}, {"a": 8, "b": 2}]
    assert sorted(i for p in parts for i in p) == list(range(100))
    assert parts == stratified_split(labels, [8, 1, 1], seed=0) and parts != stratified_split(labels, [8, 1, 1], 1)


# ----------------------------------------------------------------------------------------------------------- pipeline


def conv(user, answer, **meta):
    return Conversation([Message("user", user), Message("assistant", answer)], meta=meta)


def test_pipeline_report_and_removed_reasons():
    long_zh = (
        "长城是中国古代的军事防御工程，东起山海关，西至嘉峪关，全长两万多公里。它始建于春秋战国时期，"
        "秦始皇统一六国后把各国的城墙连接起来，明朝又大规模重修，今天看到的多是明长城。"
    )
    records = [
        conv("<b>你好</b>，请问长城有多长？", long_zh, label="a"),
        conv("你好，请问长城有多长？", long_zh, label="a"),  # exact duplicate after normalisation
        conv("请问长城有多长呢？", long_zh + "对。", label="a"),  # near duplicate
        conv("What is the Great Wall?", "A wall in China. Call 13812345678.", label="b"),
        conv("网上赌博怎么玩", "不能帮你。", label="a"),
        conv("https://only.a.url", "ok", label="b"),
        conv("短", "好", label="b"),
    ]
    cfg = CleanConfig()
    cfg.blocklist.words = ["赌博"]
    cfg.length.min = 5
    cfg.language.keep = ["zh", "en"]
    cfg.split.enabled = False
    result = clean_records(records, cfg)
    steps = {s["step"]: s for s in result.report["steps"]}
    assert steps["normalize"]["rules"]["html"] == 1 and steps["normalize"]["rules"]["urls"] == 1
    assert steps["pii"]["masked"] == {"mobile": 1}
    assert steps["empty"]["reasons"] == {"empty message after normalisation": 1}
    assert steps["blocklist"]["reasons"] == {"blocklist: 赌博": 1}
    assert steps["length"]["reasons"] == {"too short (< 5 chars)": 1}
    assert steps["exact_dedup"]["removed"] == 1 and steps["near_dedup"]["removed"] == 1
    kept = result.splits["clean"]
    assert len(kept) == 2 and result.report["records_out"] == 2
    assert kept[0].messages[0].content == "你好，请问长城有多长？" and "[mobile]" in kept[1].messages[1].content
    by_index = {r["index"]: r for r in result.removed}
    assert by_index[1]["duplicate_of"] == 0 and by_index[2]["duplicate_of"] == 0 and by_index[2]["jaccard"] >= 0.8
    assert set(by_index) == {1, 2, 4, 5, 6}


def test_pipeline_balance_then_split_by_key():
    records = [conv(f"问题{i}：长城在哪里{i * 7919}？", f"在中国{i}。", answerable=i % 4 != 0) for i in range(40)]
    cfg = CleanConfig()
    cfg.dedup.near = False
    cfg.balance.key = "answerable"
    cfg.split.key = "answerable"
    result = clean_records(records, cfg)
    assert result.report["steps"][-1]["classes"] == {
        "False": {"before": 10, "after": 10},
        "True": {"before": 30, "after": 10},
    }
    assert result.report["split"]["classes"]["train"] == {"False": 8, "True": 8}
    assert {k: len(v) for k, v in result.splits.items()} == {"train": 16, "val": 2, "test": 2}


def test_token_length_unit(tiny_tok):
    records = [conv("hi", "ok"), conv("hello " * 50, "world " * 50)]
    cfg = CleanConfig()
    cfg.length.unit = "tokens"
    cfg.length.max = 40
    cfg.length.tokenizer = "unused-because-passed"
    cfg.split.enabled = False
    result = clean_records(records, cfg, tokenizer=tiny_tok)
    assert len(result.splits["clean"]) == 1 and "tokens" in result.report["steps"][-3]["reasons"].popitem()[0]


# --------------------------------------------------------------------------------------------------------------- CLI


def _write_formats(tmp_path):
    files = {}
    alpaca = [{"instruction": f"问题{i}", "input": "", "output": f"回答{i}，联系 a{i}@b.com"} for i in range(20)]
    alpaca.append(dict(alpaca[0]))
    files["alpaca"] = tmp_path / "alpaca.json"
    files["alpaca"].write_text(json.dumps(alpaca, ensure_ascii=False), "utf-8")
    share = [
        {"conversations": [{"from": "human", "value": f"Hi {i}"}, {"from": "gpt", "value": f"Hello {i}!"}]}
        for i in range(10)
    ]
    files["sharegpt"] = tmp_path / "share.jsonl"
    files["sharegpt"].write_text("\n".join(json.dumps(r) for r in share), "utf-8")
    pref = [
        {
            "conversations": [{"from": "human", "value": f"Q{i}"}],
            "chosen": {"from": "gpt", "value": f"good {i}"},
            "rejected": {"from": "gpt", "value": f"bad {i}"},
        }
        for i in range(10)
    ]
    files["preference"] = tmp_path / "pref.json"
    files["preference"].write_text(json.dumps(pref), "utf-8")
    files["text"] = tmp_path / "corpus.txt"
    files["text"].write_text("\n\n".join(f"Paragraph {i} about topic {i * 31}." for i in range(10)), "utf-8")
    return files


def test_cli_every_format_roundtrips(tmp_path, capsys):
    for fmt, path in _write_formats(tmp_path).items():
        out = tmp_path / f"out_{fmt}"
        assert main(["--input", str(path), "--output", str(out), "dedup.near=false"]) == 0
        report = json.loads((out / "report.json").read_text("utf-8"))
        total = sum(report["split"]["counts"].values())
        back = [
            r
            for name in ("train", "val", "test")
            for r in read_records(out / f"{name}.jsonl").records
            if (out / f"{name}.jsonl").stat().st_size
        ]
        assert len(back) == total == report["records_out"]
        kind = {"alpaca": Conversation, "sharegpt": Conversation, "preference": PreferencePair, "text": TextDoc}[fmt]
        assert all(isinstance(r, kind) for r in back)
        if fmt == "alpaca":
            assert report["steps"][1]["masked"] == {"email": 21} and report["removed_total"] == 1
            assert json.loads((out / "removed.jsonl").read_text("utf-8").splitlines()[0])["duplicate_of"] == 0
        assert (out / "clean_config.yaml").exists()


def test_cli_deterministic_and_config_errors(tmp_path):
    path = _write_formats(tmp_path)["alpaca"]
    main(["--input", str(path), "--output", str(tmp_path / "a"), "seed=5"])
    main(["--input", str(path), "--output", str(tmp_path / "b"), "seed=5"])
    assert (tmp_path / "a" / "train.jsonl").read_bytes() == (tmp_path / "b" / "train.jsonl").read_bytes()
    with pytest.raises(ConfigError) as err:
        main(
            [
                "--input",
                str(path),
                "--output",
                str(tmp_path / "c"),
                "dedup.num_perm=100",
                "language.keep=[fr]",
                "length.unit=tokens",
            ]
        )
    msg = str(err.value)
    assert "dedup.num_perm" in msg and "language.keep" in msg and "length.tokenizer" in msg


def test_exact_dedup_looks_at_whole_records():
    prompt = Conversation([Message("user", "Which is better?")])
    pairs = [
        PreferencePair(prompt, Message("assistant", "A is better."), Message("assistant", "B is better.")),
        PreferencePair(prompt, Message("assistant", "A is better."), Message("assistant", "No idea at all.")),
        PreferencePair(prompt, Message("assistant", "A is better."), Message("assistant", "B is better.")),
    ]
    swapped = [conv("hello there", "general kenobi"), Conversation([Message("user", "general kenobi")])]
    cfg = CleanConfig()
    cfg.split.enabled = False
    cfg.dedup.near = False
    result = clean_records(pairs + swapped, cfg)
    assert [r["index"] for r in result.removed] == [2]


def test_near_dup_needs_same_reply_by_default():
    context = (
        "黄河是中国第二长河，发源于青海省巴颜喀拉山脉，流经九个省区，最后注入渤海，全长约五千四百六十四公里，"
        "流域面积约七十五万平方公里，是中华文明最主要的发源地之一，被称为母亲河。"
    )
    records = [
        conv(f"{context}\n问题：黄河有多长？", "约五千四百六十四公里"),
        conv(f"{context}\n问题：黄河注入哪里？", "渤海"),  # same context, other question and answer: kept
        conv(f"{context}\n问题：黄河有多长呢？", "约五千四百六十四公里"),  # a near copy of the first: removed
    ]
    cfg = CleanConfig()
    cfg.split.enabled = False
    result = clean_records(records, cfg)
    assert [(r["index"], r["duplicate_of"]) for r in result.removed] == [(2, 0)]
    cfg.dedup.require_same_reply = False
    assert {r["index"] for r in clean_records(records, cfg).removed} == {1, 2}
