"""`chatforge tokenizer train`: byte-level BPE for Chinese and English with the chat template's markers reserved,
saved as a transformers tokenizer folder, with the held-out characters-per-token report."""

from __future__ import annotations

import json
import random

import pytest
from transformers import AutoTokenizer

from chatforge.cli import main as cli_main
from chatforge.data.shards import ShardDataset, tokenize_to_shards
from chatforge.data.tokenizer_train import EOT, build_tokenizer, script_of, train_tokenizer
from chatforge.errors import ChatforgeError
from chatforge.models.loading import load_tokenizer
from chatforge.templates import get_template

ZH = (
    "我们 在 北京 的 酒店 住 了 三天 天气 很好 他们 明天 去 上海 这个 价格 是 三百 元 你好 谢谢 再见 朋友 学校 老师 "
    "学生 喜欢 中国 历史 文化 吃饭 睡觉 工作 城市 火车 飞机 早上 晚上 时间 问题"
).split()
EN = (
    "the hotel in Beijing was fine we stayed three nights price yuan hello and thank you friend school teacher "
    "student like history culture city train plane morning evening time question"
).split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    # Chinese words run together without spaces, as Chinese is written; English words with spaces and digits.
    zh = "\n\n".join("".join(rng.choice(ZH) for _ in range(rng.randint(5, 30))) + "。" for _ in range(400))
    en = "\n\n".join(
        " ".join(rng.choice(EN) for _ in range(rng.randint(5, 20))) + f" {rng.randint(0, 9999)}." for _ in range(300)
    )
    (folder / "zh.txt").write_text(zh, encoding="utf-8")
    (folder / "en.jsonl").write_text(
        "".join(json.dumps({"text": t}) + "\n" for t in en.split("\n\n")), encoding="utf-8"
    )
    return folder


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory, tiny_tok):
    other = tmp_path_factory.mktemp("other") / "tok"
    tiny_tok.save_pretrained(str(other))
    out = tmp_path_factory.mktemp("tok") / "tok"
    report = train_tokenizer([corpus / "zh.txt", corpus / "en.jsonl"], 600, out, heldout_every=10, compare=[str(other)])
    return out, report, str(other)


def test_saved_folder_loads_with_auto_tokenizer_and_reserves_the_markers(trained):
    out, report, _ = trained
    tok = AutoTokenizer.from_pretrained(str(out))
    assert len(tok) == report["vocab_size"] == 600
    assert tok.eos_token == EOT and tok.pad_token == EOT
    for i, marker in enumerate([EOT, *get_template("chatml").special_tokens]):
        assert tok.convert_tokens_to_ids(marker) == i
        assert tok(marker, add_special_tokens=False).input_ids == [i]  # one special token, not pieces
    text = tok.apply_chat_template([{"role": "user", "content": "你好"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n"
    assert len(load_tokenizer(out)) == 600


def test_chinese_words_merge_without_spaces_and_digits_stay_single(trained):
    tok = AutoTokenizer.from_pretrained(str(trained[0]))
    ids = tok("北京", add_special_tokens=False).input_ids
    assert len(ids) == 1  # a frequent word inside space-free Han text became one token
    digits = tok("300 and 2024", add_special_tokens=False).input_ids
    pieces = [tok.decode([i]) for i in digits]
    assert [p for p in pieces if p.strip().isdigit()] == ["3", "0", "0", "2", "0", "2", "4"]
    for text in ["北京的酒店，价格300元。", "héllo wörld 🙂 \t\n  x", "Ｆｕｌｌ ｗｉｄｔｈ", "<|im_start|> as text"]:
        assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text  # byte level: lossless


def test_report_compares_chars_per_token_on_held_out_text(trained):
    out, report, other = trained
    saved = json.loads((out / "training_report.json").read_text(encoding="utf-8"))
    assert saved["heldout"] == report["heldout"]
    assert set(report["heldout"]) == {"zh", "en"} and report["heldout_documents"] > 0
    zh = report["heldout"]["zh"]
    assert zh["ours"]["chars_per_token"] > 1.5 and zh["ours"]["chars"] > 0
    # The comparison tokenizer saw a different corpus: on this text it needs more tokens.
    assert zh[other]["chars_per_token"] < zh["ours"]["chars_per_token"] and zh[other]["vocab_size"] == 512
    assert report["train_documents"] + report["heldout_documents"] == 700


def test_nfkc_option_and_script_detection():
    plain, folded = build_tokenizer(False), build_tokenizer(True)
    assert folded.normalizer.normalize_str("ＡＢＣ１２３") == "ABC123"
    assert plain.normalizer is None
    assert (script_of("北京的酒店 ok"), script_of("hello there, 2024"), script_of("1234 !!")) == ("zh", "en", "other")


def test_other_template_markers_and_errors(corpus, tmp_path):
    report = train_tokenizer([corpus / "zh.txt"], 400, tmp_path / "l3", template="llama3", compare=[])
    assert list(report["special_tokens"]) == [EOT, *get_template("llama3").special_tokens]
    assert list(report["special_tokens"].values()) == list(range(1 + len(get_template("llama3").special_tokens)))
    with pytest.raises(ChatforgeError, match="at least"):
        train_tokenizer([corpus / "zh.txt"], 100, tmp_path / "x", compare=[])
    with pytest.raises(ChatforgeError, match="not found"):
        train_tokenizer([tmp_path / "nope.txt"], 400, tmp_path / "x", compare=[])
    with pytest.raises(ChatforgeError, match="--overwrite"):
        train_tokenizer([corpus / "zh.txt"], 400, tmp_path / "l3", compare=[])
    assert train_tokenizer([corpus / "zh.txt"], 420, tmp_path / "l3", compare=[], overwrite=True)["vocab_size"] == 420
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l3"]  # no temporary or old folder left behind
    with pytest.raises(ChatforgeError, match="unknown chat template"):
        train_tokenizer([corpus / "zh.txt"], 400, tmp_path / "y", template="nope", compare=[])
    missing = train_tokenizer([corpus / "zh.txt"], 400, tmp_path / "z", compare=[str(tmp_path / "no-such-model")])
    assert "unavailable" in missing["heldout"]["zh"][str(tmp_path / "no-such-model")]


def test_cli_and_shards_with_the_trained_tokenizer(corpus, tmp_path, capsys):
    argv = ["tokenizer", "train", "--input", str(corpus / "zh.txt"), "--vocab-size", "500", "--output",
            str(tmp_path / "tok"), "--compare", "none"]  # fmt: skip
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "vocabulary: 500 tokens" in out and "held-out zh" in out
    tok = load_tokenizer(tmp_path / "tok")
    tokenize_to_shards([corpus / "zh.txt"], tok, tmp_path / "shards", num_proc=1)
    ds = ShardDataset(tmp_path / "shards")
    assert ds.eot_id == 0 and ds.dtype.name == "uint16"
    assert cli_main(["tokenizer", "fit"]) == 2
