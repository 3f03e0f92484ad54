"""Evaluation metrics as pure functions: BLEU-4, ROUGE-1/2/L, tool-call slot F1, refusal detection, grounded-QA
scores, multiple-choice accuracy with a confidence interval, and perplexity from summed token losses.

Conventions (so runs are comparable):
- BLEU is on sacrebleu's 0-100 scale and equals `sacrebleu` with `tokenize="none"` on our tokens joined by spaces.
- ROUGE F1 follows rouge-score's maths (n-gram overlap / LCS, mean of per-example F1) but runs on our tokens, because
  rouge-score's tokenizer silently deletes every non-ASCII character (Chinese text would score 0 or garbage).
- Tokenisation (`tokenize`): lower-cased words of letters/digits for English (punctuation dropped, as rouge-score
  does); Chinese by characters (`zh="char"`, default) or jieba words (`zh="jieba"`).
- Rates, accuracies, precision/recall/F1 are fractions in [0, 1].
Nothing here imports torch: the functions are cheap to reuse (the demo imports `is_refusal` and `grounded_qa_scores`).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

ZhMode = Literal["char", "jieba"]

# CJK ideographs (incl. extension A and compatibility), kana and hangul: scored one character at a time.
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af"
_CJK_RE = re.compile(f"[{_CJK}]")
# Either one CJK character, or a run of other letters/digits (underscore excluded, as rouge-score splits on it).
_TOKEN_RE = re.compile(f"[{_CJK}]|[^\\W_{_CJK}]+")


def has_cjk(text: str) -> bool:
    """True when the text contains any Chinese/Japanese/Korean character."""
    return bool(_CJK_RE.search(text))


def tokenize(text: str, zh: ZhMode = "char", lowercase: bool = True) -> list[str]:
    """Split text into scoring tokens: English words, and Chinese characters (or jieba words). Punctuation is dropped."""
    if lowercase:
        text = text.lower()
    if zh == "jieba" and has_cjk(text):
        import jieba  # imported lazily: loading its dictionary takes about a second

        jieba.setLogLevel(60)  # silence the "Building prefix dict" chatter on stderr
        out: list[str] = []
        for word in jieba.lcut(text):
            # jieba keeps punctuation and spaces as words; drop them the same way the char mode does.
            if _CJK_RE.search(word):
                out.append(word)
            else:
                out.extend(_TOKEN_RE.findall(word))
        return out
    if zh not in ("char", "jieba"):
        raise ValueError(f"unknown Chinese tokenisation {zh!r}; use 'char' or 'jieba'")
    return _TOKEN_RE.findall(text)


# --------------------------------------------------------------------------------------------------------------- BLEU


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


@dataclass
class BleuStats:
    """Sufficient statistics of BLEU (summable over a corpus)."""

    correct: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    total: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    sys_len: int = 0
    ref_len: int = 0

    def add(self, hyp: Sequence[str], ref: Sequence[str], max_order: int = 4) -> BleuStats:
        self.sys_len += len(hyp)
        self.ref_len += len(ref)
        for n in range(1, max_order + 1):
            h, r = _ngrams(hyp, n), _ngrams(ref, n)
            self.correct[n - 1] += sum(min(c, r[g]) for g, c in h.items())
            self.total[n - 1] += max(len(hyp) - n + 1, 0)
        return self


def bleu_from_stats(
    stats: BleuStats,
    smooth: Literal["none", "exp", "floor", "add-k"] = "exp",
    smooth_value: float | None = None,
    effective_order: bool = False,
) -> float:
    """BLEU (0-100) from statistics; the same arithmetic as sacrebleu's `BLEU.compute_bleu` (so results agree)."""
    smooth_value = {"floor": 0.1, "add-k": 1.0}.get(smooth, 0.0) if smooth_value is None else smooth_value
    correct, total = list(stats.correct), list(stats.total)
    max_order = len(correct)
    if stats.sys_len < stats.ref_len:
        bp = math.exp(1 - stats.ref_len / stats.sys_len) if stats.sys_len > 0 else 0.0
    else:
        bp = 1.0
    if not any(correct):
        return 0.0
    precisions = [0.0] * max_order
    smooth_mteval, eff_order = 1.0, max_order
    for n in range(1, max_order + 1):
        if smooth == "add-k" and n > 1:
            correct[n - 1] += smooth_value
            total[n - 1] += smooth_value
        if total[n - 1] == 0:
            break
        if effective_order:
            eff_order = n
        if correct[n - 1] == 0:
            if smooth == "exp":
                smooth_mteval *= 2
                precisions[n - 1] = 100.0 / (smooth_mteval * total[n - 1])
            elif smooth == "floor":
                precisions[n - 1] = 100.0 * smooth_value / total[n - 1]
        else:
            precisions[n - 1] = 100.0 * correct[n - 1] / total[n - 1]
    # A zero precision makes BLEU 0; sacrebleu floors log(0) to -9999999999 with the same effect.
    logs = [math.log(p) if p > 0 else -9999999999 for p in precisions[:eff_order]]
    return bp * math.exp(sum(logs) / eff_order)


def corpus_bleu(hyps: Sequence[Sequence[str]], refs: Sequence[Sequence[str]], smooth: str = "exp") -> float:
    """Corpus BLEU-4 (0-100) over tokenised hypotheses and references (one reference each); sacrebleu's default."""
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    stats = BleuStats()
    for h, r in zip(hyps, refs):
        stats.add(h, r)
    return bleu_from_stats(stats, smooth=smooth)  # type: ignore[arg-type]


def sentence_bleu(hyp: Sequence[str], ref: Sequence[str]) -> float:
    """Sentence BLEU-4 (0-100) as sacrebleu's `sentence_bleu`: exp smoothing with effective order."""
    return bleu_from_stats(BleuStats().add(hyp, ref), smooth="exp", effective_order=True)


# -------------------------------------------------------------------------------------------------------------- ROUGE


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def rouge_n(hyp: Sequence[str], ref: Sequence[str], n: int) -> float:
    """ROUGE-N F1 of one pair (rouge-score's `_score_ngrams`)."""
    h, r = _ngrams(hyp, n), _ngrams(ref, n)
    overlap = sum(min(c, h[g]) for g, c in r.items())
    return _f1(overlap / max(sum(h.values()), 1), overlap / max(sum(r.values()), 1))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (O(len(a) * len(b)) time, O(len(b)) memory)."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(hyp: Sequence[str], ref: Sequence[str]) -> float:
    """ROUGE-L F1 of one pair (sentence-level LCS, rouge-score's `rougeL`)."""
    if not hyp or not ref:
        return 0.0
    lcs = lcs_length(ref, hyp)
    return _f1(lcs / len(hyp), lcs / len(ref))


def rouge_scores(hyps: Sequence[Sequence[str]], refs: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean per-example ROUGE-1/2/L F1 (fractions) over tokenised pairs."""
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    n = max(len(hyps), 1)
    return {
        "rouge1": sum(rouge_n(h, r, 1) for h, r in zip(hyps, refs)) / n,
        "rouge2": sum(rouge_n(h, r, 2) for h, r in zip(hyps, refs)) / n,
        "rougeL": sum(rouge_l(h, r) for h, r in zip(hyps, refs)) / n,
    }


def text_generation_scores(predictions: Sequence[str], references: Sequence[str], zh: ZhMode = "char") -> dict:
    """BLEU-4 (0-100, corpus) and ROUGE-1/2/L F1 (0-1, mean) of predictions against references."""
    hyps = [tokenize(p, zh) for p in predictions]
    refs = [tokenize(r, zh) for r in references]
    return {"bleu4": corpus_bleu(hyps, refs), **rouge_scores(hyps, refs), "n": len(hyps)}


# --------------------------------------------------------------------------------------------------- tool-call slots


def _norm_value(value: Any) -> Any:
    """Compare slot values loosely: numbers by value (500 == "500" == 500.0), text case/width/space-insensitively."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = unicodedata.normalize("NFKC", value).strip().lower()
        try:
            return float(text)
        except ValueError:
            return re.sub(r"\s+", " ", text)
    return repr(value)


def call_slots(calls: Iterable[Any]) -> Counter:
    """The slots of tool calls: one (tool, argument, value) per argument; list values give one slot per element.

    A call with no arguments still counts as one (tool, None, None) slot, so calling the right argument-free tool
    earns credit and calling a wrong one costs precision. Accepts `ToolCall`s or {"name", "arguments"} dicts.
    """
    slots: Counter = Counter()
    for call in calls:
        name = call["name"] if isinstance(call, dict) else call.name
        args = (call.get("arguments") if isinstance(call, dict) else call.arguments) or {}
        if not args:
            slots[(name, None, None)] += 1
        for key, value in args.items():
            values = value if isinstance(value, (list, tuple)) else [value]
            for v in values:
                slots[(name, key, _norm_value(v))] += 1
    return slots


def slot_prf(predicted: Iterable[Any], reference: Iterable[Any]) -> dict[str, float]:
    """Slot precision/recall/F1 of one turn's predicted tool calls against the reference calls.

    No predicted call where one was due scores 0 on all three (the hotel-bot rule: a text reply instead of a call).
    """
    pred, ref = call_slots(predicted), call_slots(reference)
    hit = sum((pred & ref).values())
    p = hit / sum(pred.values()) if pred else 0.0
    r = hit / sum(ref.values()) if ref else 0.0
    return {
        "precision": p,
        "recall": r,
        "f1": _f1(p, r),
        "hit": hit,
        "n_pred": sum(pred.values()),
        "n_ref": sum(ref.values()),
    }


# ------------------------------------------------------------------------------------------------------------ refusal

# Plain phrases (matched after normalisation: lower case, curly quotes straightened, spaces collapsed).
REFUSAL_PHRASES: tuple[str, ...] = (
    # English
    "i cannot answer",
    "i can't answer",
    "i can not answer",
    "i am unable to",
    "i'm unable to",
    "i don't know",
    "i do not know",
    "i'm not sure",
    "i am not sure",
    "cannot be determined",
    "can't be determined",
    "cannot be answered",
    "can't be answered",
    "not enough information",
    "insufficient information",
    "no information about",
    "no information on",
    "no relevant information",
    "there is no information",
    "there's no information",
    "unanswerable",
    "no answer",
    "not possible to determine",
    "impossible to determine",
    "i cannot tell",
    "i can't tell",
    "i cannot find",
    "i can't find",
    "i could not find",
    "i couldn't find",
    "is not mentioned",
    "isn't mentioned",
    "not mentioned in",
    "not stated in",
    "not specified in",
    "not provided in",
    "not given in",
    "not found in the context",
    "not covered in",
    "not included in the",
    # Chinese
    "无法回答",
    "无法确定",
    "无法判断",
    "无法得知",
    "无从得知",
    "无法从",
    "不能从",
    "不能回答",
    "不能确定",
    "没法回答",
    "不知道",
    "不清楚",
    "没有提到",
    "没有提及",
    "未提及",
    "未提到",
    "并未提及",
    "没有说明",
    "未说明",
    "没有给出",
    "未给出",
    "没有提供",
    "未提供",
    "没有相关信息",
    "没有相关内容",
    "没有找到",
    "找不到",
    "未找到",
    "没有包含",
    "不包含",
    "没有涉及",
    "未涉及",
    "没有答案",
    "无相关信息",
    "无法找到",
    "资料中没有",
    "文中没有",
    "上下文中没有",
    "材料中没有",
    "信息不足",
    "无法提供",
    "抱歉",
    "对不起",
)

# Regular expressions for wordings a phrase list cannot enumerate (applied to the normalised text).
REFUSAL_PATTERNS: tuple[str, ...] = (
    r"\b(i'?m|i am) (sorry|afraid)\b",
    r"^sorry\b",
    r"\b(can ?not|can't|unable to|not able to) (answer|determine|tell|find|say|know|infer|be sure)\b",
    r"\b(the )?(context|passage|text|document|article|evidence|information|source)s? (given |provided |above )?"
    r"(does not|doesn't|did not|didn't|do not|don't|fails to) (say|mention|contain|provide|specify|state|include"
    r"|indicate|give|answer|tell|discuss|address)",
    r"\bno (mention|information|indication|details?|data|answer)\b.{0,30}\b(context|passage|text|document|given"
    r"|provided)\b",
    r"\bnot (mentioned|stated|specified|provided|given|found|included|covered|answered|addressed) (in|by) the\b",
    r"(上下文|文中|文章|资料|材料|原文|段落|背景|证据|文本|信息)(中|里)?(并)?(没有|未|不|无)(提|说|给|包含|涉及|出现|明确)",
    r"(没有|未|无)(足够|相关|明确)?的?(信息|资料|内容|依据)",
    r"(无法|不能|没法|难以)(根据|从|依据|通过)?.{0,12}(回答|确定|判断|得知|得出|找到|知道)",
)

_COMPILED = [re.compile(p) for p in REFUSAL_PATTERNS]
_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'", "\u00b4": "'"})


def _norm_refusal_text(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).translate(_QUOTES).lower()
    return re.sub(r"\s+", " ", text).strip()


def is_refusal(text: str, extra_patterns: Sequence[str] = ()) -> bool:
    """True when a reply declines to answer ("I'm sorry, but the context does not say", "文中没有提到", ...).

    `extra_patterns` are additional regular expressions (matched case-insensitively on the normalised text), e.g. the
    exact refusal wordings of a training set. Empty replies are not refusals (they are scored as wrong answers).
    """
    norm = _norm_refusal_text(text)
    if not norm:
        return False
    if any(p in norm for p in REFUSAL_PHRASES):
        return True
    if any(p.search(norm) for p in _COMPILED):
        return True
    return any(re.search(p, norm, flags=re.IGNORECASE) for p in extra_patterns)


# -------------------------------------------------------------------------------------------------------- grounded QA

_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD-style normalisation: lower case, no punctuation, no English articles, no spaces between CJK characters."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if unicodedata.category(c).startswith(("P", "S")) else c for c in text)
    text = _ARTICLES.sub(" ", text)
    text = re.sub(f"(?<=[{_CJK}])\\s+(?=[{_CJK}])", "", text)
    return " ".join(text.split())


def answer_f1(prediction: str, references: Sequence[str]) -> float:
    """Best F1 over references of answer tokens: characters for Chinese, words for English (SQuAD F1)."""
    best = 0.0
    pred = tokenize(normalize_answer(prediction))
    for ref in references:
        gold = tokenize(normalize_answer(ref))
        common = sum((Counter(pred) & Counter(gold)).values())
        if not pred or not gold:
            best = max(best, float(pred == gold))
        elif common:
            best = max(best, _f1(common / len(pred), common / len(gold)))
    return best


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals a normalised reference."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(r) for r in references))


def answer_contained(prediction: str, references: Sequence[str]) -> float:
    """1.0 when a normalised reference occurs inside the normalised prediction (lenient EM for chatty replies)."""
    pred = normalize_answer(prediction)
    return float(any((ref := normalize_answer(r)) and ref in pred for r in references))


def grounded_qa_scores(
    predictions: Sequence[str], references: Sequence[Sequence[str]], extra_patterns: Sequence[str] = ()
) -> dict[str, Any]:
    """Scores for answer-from-context-or-refuse. `references[i]` lists acceptable answers; empty = unanswerable.

    Answerable: exact match, answer F1 and "contains" averaged over all answerable questions (a refusal scores 0),
    and the false-refusal rate. Unanswerable: refusal precision/recall/F1 with "refused" as the positive class
    (a refusal of an answerable question is a false positive). `per_example` gives each item's verdict and error kind:
    "false_refusal", "wrong_answer" (answered, F1 < 0.5), "hallucination" (answered an unanswerable question).
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    per: list[dict[str, Any]] = []
    for pred, refs in zip(predictions, references):
        refused = is_refusal(pred, extra_patterns)
        item: dict[str, Any] = {"answerable": bool(refs), "refused": refused, "error": None}
        if refs:
            item["em"] = 0.0 if refused else exact_match(pred, refs)
            item["f1"] = 0.0 if refused else answer_f1(pred, refs)
            item["contains"] = 0.0 if refused else answer_contained(pred, refs)
            if refused:
                item["error"] = "false_refusal"
            elif item["f1"] < 0.5 and not item["contains"]:
                item["error"] = "wrong_answer"
        elif not refused:
            item["error"] = "hallucination"
        per.append(item)
    ans = [p for p in per if p["answerable"]]
    una = [p for p in per if not p["answerable"]]
    tp = sum(p["refused"] for p in una)
    fp = sum(p["refused"] for p in ans)
    fn = len(una) - tp
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0

    def mean(key: str) -> float:
        return sum(p[key] for p in ans) / len(ans) if ans else 0.0

    return {
        "n": len(per),
        "n_answerable": len(ans),
        "n_unanswerable": len(una),
        "answerable": {
            "exact_match": mean("em"),
            "f1": mean("f1"),
            "contains": mean("contains"),
            "false_refusal_rate": fp / len(ans) if ans else 0.0,
        },
        "unanswerable": {"refusal_precision": prec, "refusal_recall": rec, "refusal_f1": _f1(prec, rec)},
        "per_example": per,
    }


# ---------------------------------------------------------------------------------------------- accuracy, perplexity


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a proportion k/n (95% by default); (0, 1) when n == 0."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def accuracy_with_ci(correct: Sequence[bool]) -> dict[str, Any]:
    """Accuracy and its 95% Wilson interval."""
    k, n = sum(bool(c) for c in correct), len(correct)
    lo, hi = wilson_interval(k, n)
    return {"accuracy": k / n if n else 0.0, "ci95": [lo, hi], "n": n, "correct": k}


def lm_scores(nll_sum: float, n_tokens: int, n_correct: int) -> dict[str, float]:
    """Mean loss (nats/token), perplexity and next-token accuracy from sums over the scored tokens."""
    if n_tokens == 0:
        return {"loss": float("nan"), "perplexity": float("nan"), "token_accuracy": float("nan"), "tokens": 0}
    loss = nll_sum / n_tokens
    return {"loss": loss, "perplexity": math.exp(loss), "token_accuracy": n_correct / n_tokens, "tokens": n_tokens}
