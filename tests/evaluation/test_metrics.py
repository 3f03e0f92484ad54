"""Metric tests: hand-computed values, and agreement with sacrebleu / rouge-score where those apply."""

from __future__ import annotations

import math
import random

import pytest

from chatforge.data.schema import ToolCall
from chatforge.evaluation import metrics as M


def test_tokenize_english_words_and_chinese_chars():
    assert M.tokenize("Hello, World! It's 2024.") == ["hello", "world", "it", "s", "2024"]
    assert M.tokenize("北京是中国的首都。Beijing!") == ["北", "京", "是", "中", "国", "的", "首", "都", "beijing"]
    words = M.tokenize("北京是中国的首都。", zh="jieba")
    assert "".join(words) == "北京是中国的首都" and "北京" in words and len(words) < 8


def test_bleu_hand_computed():
    hyp, ref = "the cat sat on the mat".split(), "the cat sat on a mat".split()
    # precisions 5/6, 3/5, 2/4, 1/3; equal lengths so BP = 1
    expected = 100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert M.corpus_bleu([hyp], [ref]) == pytest.approx(expected, abs=1e-9)
    # brevity penalty: a 3-token hypothesis of a 6-token reference
    short = "the cat sat".split()
    bp = math.exp(1 - 6 / 3)
    # 3 unigrams and 2 bigrams, 1 trigram all matched; no 4-grams at all -> corpus BLEU with 'exp' smoothing breaks
    # at total == 0 and keeps precision 0 for n=4, so the score is 0; sentence BLEU uses effective order 3.
    assert M.corpus_bleu([short], [ref]) == 0.0
    assert M.sentence_bleu(short, ref) == pytest.approx(100 * bp, abs=1e-9)
    assert M.corpus_bleu([[]], [ref]) == 0.0


def _sacrebleu():
    return pytest.importorskip("sacrebleu")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bleu_agrees_with_sacrebleu(seed):
    sacrebleu = _sacrebleu()
    rng = random.Random(seed)
    vocab = "a b c d e f g h 北 京 上 海".split()
    hyps, refs = [], []
    for _ in range(30):
        ref = [rng.choice(vocab) for _ in range(rng.randint(1, 15))]
        hyp = [t if rng.random() < 0.7 else rng.choice(vocab) for t in ref[: rng.randint(0, len(ref) + 3)]]
        hyp += [rng.choice(vocab) for _ in range(rng.randint(0, 3))]
        hyps.append(hyp)
        refs.append(ref)
    ours = M.corpus_bleu(hyps, refs)
    theirs = sacrebleu.corpus_bleu([" ".join(h) for h in hyps], [[" ".join(r) for r in refs]], tokenize="none")
    assert ours == pytest.approx(theirs.score, abs=1e-6)
    assert ours > 0
    for h, r in zip(hyps, refs):
        s = sacrebleu.sentence_bleu(" ".join(h), [" ".join(r)], tokenize="none").score
        assert M.sentence_bleu(h, r) == pytest.approx(s, abs=1e-6)


def test_bleu_agrees_with_sacrebleu_on_text():
    sacrebleu = _sacrebleu()
    preds = ["北京是中国的首都。", "The hotel has free wifi and parking.", "酒店价格是五百元"]
    refs = ["中国的首都是北京。", "Free wifi and parking are available at the hotel.", "酒店的价格为五百元"]
    ours = M.text_generation_scores(preds, refs)["bleu4"]
    tok = [" ".join(M.tokenize(t)) for t in preds], [" ".join(M.tokenize(t)) for t in refs]
    assert ours == pytest.approx(sacrebleu.corpus_bleu(tok[0], [tok[1]], tokenize="none").score, abs=1e-6)


def test_rouge_hand_computed_english_and_chinese():
    hyp, ref = "the cat sat on the mat".split(), "the cat sat on a mat".split()
    s = M.rouge_scores([hyp], [ref])
    assert s["rouge1"] == pytest.approx(5 / 6) and s["rouge2"] == pytest.approx(3 / 5)
    assert s["rougeL"] == pytest.approx(5 / 6)  # LCS "the cat sat on mat"
    # Chinese by characters: bigrams 北京 and 首都 shared out of 4; LCS length 2 of 5
    s = M.rouge_scores([M.tokenize("北京是首都")], [M.tokenize("首都是北京")])
    assert s == {"rouge1": pytest.approx(1.0), "rouge2": pytest.approx(0.5), "rougeL": pytest.approx(0.4)}
    assert M.rouge_scores([[]], [["a"]])["rougeL"] == 0.0


def test_rouge_agrees_with_rouge_score_on_english():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    rng = random.Random(0)
    words = "The hotel near the station has free Wi-Fi, parking and a gym; prices start at 300 yuan.".split()
    preds, refs = [], []
    for _ in range(25):
        preds.append(" ".join(rng.sample(words, rng.randint(0, len(words)))))
        refs.append(" ".join(rng.sample(words, rng.randint(1, len(words)))))
    ours = M.rouge_scores([M.tokenize(p) for p in preds], [M.tokenize(r) for r in refs])
    theirs = {k: 0.0 for k in ours}
    for p, r in zip(preds, refs):
        sc = scorer.score(r, p)
        for k in theirs:
            theirs[k] += sc[k].fmeasure / len(preds)
    for k in ours:
        assert ours[k] == pytest.approx(theirs[k], abs=1e-6), k
    # ...and rouge-score itself cannot score Chinese (it drops non-ASCII), which is why we tokenise ourselves.
    assert scorer.score("北京是首都", "北京是首都")["rouge1"].fmeasure == 0.0


def test_slot_prf_rules():
    ref = [ToolCall("search_hotels", {"city": "Beijing", "price_max": 500, "facilities": ["wifi", "parking"]})]
    pred = [
        {
            "name": "search_hotels",
            "arguments": {"city": " beijing", "price_max": "500", "facilities": ["WiFi"], "rating_min": 4},
        }
    ]
    s = M.slot_prf(pred, ref)
    assert (s["precision"], s["recall"], s["f1"]) == (0.75, 0.75, 0.75)
    # a text reply where a call was due scores 0 on everything
    assert M.slot_prf([], ref) == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "hit": 0, "n_pred": 0, "n_ref": 4}
    # the wrong tool with the same arguments matches nothing
    assert M.slot_prf([ToolCall("book_hotel", ref[0].arguments)], ref)["f1"] == 0.0
    # argument-free calls: right tool = full credit
    assert M.slot_prf([ToolCall("list_cities", {})], [ToolCall("list_cities", {})])["f1"] == 1.0
    # one of two slots, nothing extra: P = 1, R = 1/2, F1 = 2/3
    s = M.slot_prf([ToolCall("s", {"a": 1})], [ToolCall("s", {"a": 1, "b": 2})])
    assert (s["precision"], s["recall"]) == (1.0, 0.5) and s["f1"] == pytest.approx(2 / 3)


REFUSALS = [
    "I'm sorry, but the context does not say.",
    "I’M SORRY — THE CONTEXT DOESN’T SAY!",
    "The passage doesn't mention who won.",
    "I cannot answer this question based on the given context.",
    "Unfortunately I can't determine that from the text provided.",
    "That information is not mentioned in the context.",
    "There is no information about his birthday in the passage.",
    "I don't know.",
    "根据上下文，我无法回答这个问题。",
    "抱歉，文中没有提到相关信息。",
    "资料中并未提及他的出生日期。",
    "上下文没有给出答案",
    "无法从给定的材料中确定答案。",
    "对不起，我不知道。",
]
ANSWERS = [
    "Paris is the capital of France.",
    "The answer is 42.",
    "北京",
    "他出生于1990年。",
    "The hotel does not allow pets, and breakfast is included.",
    "Water does not contain carbon.",
    "酒店提供免费停车和无线网络。",
    "No.",
    "",
]


@pytest.mark.parametrize("text", REFUSALS)
def test_is_refusal_detects_refusals(text):
    assert M.is_refusal(text)


@pytest.mark.parametrize("text", ANSWERS)
def test_is_refusal_passes_answers(text):
    assert not M.is_refusal(text)


def test_is_refusal_extra_patterns():
    assert not M.is_refusal("Beats me, mate.")
    assert M.is_refusal("Beats me, mate.", extra_patterns=[r"beats me"])


def test_grounded_qa_scores_hand_computed():
    preds = [
        "北京",
        "我无法从上下文中找到答案。",
        "The answer is Paris.",
        "I'm sorry, but the context does not say.",
        "北京市",
    ]
    refs = [["北京"], ["上海"], [], [], ["北京", "首都北京"]]
    s = M.grounded_qa_scores(preds, refs)
    assert (s["n_answerable"], s["n_unanswerable"]) == (3, 2)
    # answerable: EM 1, 0 (refused), 0 ("北京市" != "北京"); char F1 1, 0, 0.8 (2 common chars: P 2/3, R 1)
    assert s["answerable"]["exact_match"] == pytest.approx(1 / 3)
    assert s["answerable"]["f1"] == pytest.approx((1 + 0 + 0.8) / 3)
    assert s["answerable"]["contains"] == pytest.approx(2 / 3)
    assert s["answerable"]["false_refusal_rate"] == pytest.approx(1 / 3)
    # refusal as positive: TP 1 (item 4), FP 1 (item 2), FN 1 (item 3)
    assert s["unanswerable"] == {"refusal_precision": 0.5, "refusal_recall": 0.5, "refusal_f1": 0.5}
    assert [p["error"] for p in s["per_example"]] == [None, "false_refusal", "hallucination", None, None]


def test_answer_f1_english_words():
    # SQuAD: "the" dropped; pred {eiffel, tower, in, paris}, gold {eiffel, tower}: P 1/2, R 1 -> 2/3
    assert M.answer_f1("The Eiffel Tower in Paris", ["the Eiffel Tower"]) == pytest.approx(2 / 3)
    assert M.exact_match("  The Eiffel tower. ", ["Eiffel Tower"]) == 1.0


def test_wilson_and_accuracy():
    lo, hi = M.wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    acc = M.accuracy_with_ci([True, False, True, True])
    assert acc["accuracy"] == 0.75 and acc["n"] == 4 and acc["ci95"][0] < 0.75 < acc["ci95"][1]
    assert M.wilson_interval(0, 0) == (0.0, 1.0)


def test_lm_scores():
    s = M.lm_scores(2 * math.log(4), 2, 1)
    assert (
        s["perplexity"] == pytest.approx(4.0) and s["token_accuracy"] == 0.5 and s["loss"] == pytest.approx(math.log(4))
    )
    assert math.isnan(M.lm_scores(0.0, 0, 0)["perplexity"])


def test_is_refusal_catches_every_converter_refusal():
    webqa = pytest.importorskip("chatforge.data.convert.webqa")
    for text in webqa.REFUSALS_ZH + webqa.REFUSALS_EN:
        assert M.is_refusal(text), text
