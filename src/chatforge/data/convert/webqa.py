"""WebQA and SQuAD 2.0 -> grounded-QA SFT data: "answer from this context, or say you cannot".

Every example is a system instruction, a user turn holding the context and the question, and the assistant's reply:
the short answer when the context holds it, otherwise one of >= 10 refusal phrasings. The seed's model over-refused
because its data was unbalanced, so answerable and unanswerable examples are balanced by default (`--ratio 1:1`,
reported as measured).

Unanswerable examples, in order of preference:
1. WebQA training format: the question's own retrieved evidences labelled `no_answer` (real, topical negatives);
2. evidence retrieved for another question that does not contain any of this question's answers, preferring hard
   negatives that share (IDF-weighted) words with the question;
3. SQuAD 2.0: its real unanswerable questions (`is_impossible`).
Meta of each example: `answerable`, `answers` (empty when unanswerable), `qid`, `negative` (how it was made).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from chatforge.data.convert.common import check_output, parse_ratio, read_json, write_jsonl, write_report
from chatforge.data.schema import Conversation, Message
from chatforge.errors import DataError

INSTRUCTION_ZH = (
    "请只根据下面的参考资料回答问题，答案要简短。如果参考资料中没有答案，请直接说明无法从资料中找到答案，不要猜测。"
)
INSTRUCTION_EN = (
    "Answer the question using only the context below, as briefly as possible. If the context does not contain the "
    "answer, say that you cannot answer from the context; do not guess."
)
USER_ZH = "参考资料：{context}\n\n问题：{question}"
USER_EN = "Context: {context}\n\nQuestion: {question}"

REFUSALS_ZH = [
    "抱歉，参考资料中没有提到这个问题的答案。",
    "根据所给资料，我无法回答这个问题。",
    "资料中没有相关信息，无法确定答案。",
    "参考资料并未提及这一点，我无法给出答案。",
    "对不起，这段资料里找不到问题的答案。",
    "所给的资料没有包含回答这个问题所需的信息。",
    "无法从参考资料中得知答案。",
    "这个问题在资料中没有涉及，我不能确定答案。",
    "资料里没有说明这一点，所以我无法回答。",
    "很抱歉，仅凭这段资料无法判断答案。",
    "参考资料中找不到答案，我不想凭猜测回答。",
    "这段资料没有给出答案，无法回答该问题。",
]
REFUSALS_EN = [
    "I'm sorry, but the context does not say.",
    "The context does not contain the answer to this question.",
    "I cannot answer this from the given context.",
    "The provided context doesn't mention this, so I can't tell.",
    "There is no information about this in the context.",
    "I can't find the answer in the context.",
    "The answer is not stated in the context provided.",
    "Based on the context, this cannot be determined.",
    "Sorry, the passage does not provide this information.",
    "I'm unable to answer that from the context given.",
    "The context does not mention it, so I cannot answer.",
    "Unfortunately the context gives no answer to this question.",
]

_ZH_STOP = set(
    "的 了 是 在 和 与 及 或 吗 呢 啊 呀 哪 哪个 哪些 哪里 哪儿 什么 谁 多少 几 怎么 怎样 如何 为什么 是什么 叫 叫什么 有 有没有 请问 那个 那 这个 这 中 上 下 里".split()
)
_EN_STOP = set(
    "a an the of in on at to for from by with and or is are was were be been what which who whom whose when where "
    "why how did do does many much that this these those it its as".split()
)
_WORD = re.compile(r"[A-Za-z0-9]+|[\u4e00-\u9fff]+")


@dataclass
class QAItem:
    qid: str
    question: str
    answers: list[str]
    positives: list[str]  # evidences that contain an answer
    negatives: list[str] = field(default_factory=list)  # the question's own evidences labelled no_answer


def _words(text: str, lang: str) -> set[str]:
    if lang == "zh":
        import jieba

        jieba.setLogLevel(logging.WARNING)
        toks = jieba.lcut(text)
        return {t for t in toks if _WORD.fullmatch(t) and t not in _ZH_STOP}
    return {t for t in (w.lower() for w in _WORD.findall(text)) if t not in _EN_STOP}


def _norm(text: str) -> str:
    return re.sub(r"\s+", "", text).lower()


def read_webqa(path: str | Path) -> tuple[list[QAItem], Counter]:
    """WebQA `{qid: {question, evidences: {eid: {answer: [...]|["no_answer"], evidence}}}}` (test and train files)."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError("expected a JSON object {question_id: {question, evidences}}", file=str(path))
    items, stats = [], Counter()
    for qid, q in data.items():
        if not isinstance(q, dict) or not isinstance(q.get("question"), str):
            raise DataError("missing 'question' string", file=str(path), record=qid, field="question")
        evs = q.get("evidences")
        if not isinstance(evs, dict):
            raise DataError("missing 'evidences' object", file=str(path), record=qid, field="evidences")
        answers: list[str] = []
        pos, neg = [], []
        for eid, ev in evs.items():
            text, ans = (ev or {}).get("evidence"), (ev or {}).get("answer")
            if not isinstance(text, str) or not isinstance(ans, list):
                raise DataError("evidence needs 'evidence' text and 'answer' list", file=str(path), record=eid)
            real = [a for a in ans if isinstance(a, str) and a.strip() and a != "no_answer"]
            (pos if real else neg).append(text)
            answers += [a for a in real if a not in answers]
        if not pos:
            stats["questions without an answerable evidence"] += 1
            continue
        # A `no_answer` evidence that still contains an answer string is mislabelled for our purpose: skip it.
        clean_neg = [t for t in neg if not any(_norm(a) in _norm(t) for a in answers)]
        stats["no_answer evidences containing the answer, skipped"] += len(neg) - len(clean_neg)
        items.append(QAItem(str(qid), q["question"].strip(), answers, pos, clean_neg))
    return items, stats


def hard_negatives(items: list[QAItem], lang: str, seed: int, top_k: int = 5) -> tuple[dict[str, str], Counter]:
    """qid -> an evidence of another question that shares the most (IDF-weighted) words but lacks every answer."""
    rng = random.Random(seed)
    pool = [(i, ev) for i, it in enumerate(items) for ev in it.positives]
    ev_words = [_words(ev, lang) for _, ev in pool]
    df = Counter(w for ws in ev_words for w in ws)
    idf = {w: math.log((1 + len(pool)) / (1 + c)) for w, c in df.items()}
    index: dict[str, list[int]] = defaultdict(list)
    for j, ws in enumerate(ev_words):
        for w in ws:
            index[w].append(j)
    out, stats, used = {}, Counter(), Counter()
    for i, it in enumerate(items):
        scores: Counter = Counter()
        for w in _words(it.question, lang):
            for j in index.get(w, ()):
                scores[j] += idf.get(w, 0.0)
        answers = [_norm(a) for a in it.answers]
        ok = [
            j
            for j, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
            if pool[j][0] != i and not any(a in _norm(pool[j][1]) for a in answers)
        ][:top_k]
        if ok:
            # Among the best few, the evidence used least so far: one popular passage should not become the
            # negative of dozens of questions (the examples would be near copies of each other).
            fewest = min(used[j] for j in ok)
            j = rng.choice([j for j in ok if used[j] == fewest])
            used[j] += 1
            out[it.qid] = pool[j][1]
            stats["hard negatives (share words with the question)"] += 1
            continue
        for _ in range(50):  # no word overlap anywhere: any other evidence without the answer will do
            j = rng.randrange(len(pool))
            if pool[j][0] != i and not any(a in _norm(pool[j][1]) for a in answers):
                out[it.qid] = pool[j][1]
                stats["random negatives (no word overlap found)"] += 1
                break
        else:
            stats["questions with no usable negative"] += 1
    return out, stats


def make_example(
    context: str, question: str, reply: str, *, instruction: str, user_fmt: str, position: str, meta: dict
) -> Conversation:
    user = user_fmt.format(context=context, question=question)
    if position == "user":
        msgs = [Message("user", f"{instruction}\n\n{user}"), Message("assistant", reply)]
    else:
        msgs = [Message("system", instruction), Message("user", user), Message("assistant", reply)]
    return Conversation(msgs, meta=meta)


def balance(
    answerable: list[Conversation], unanswerable: list[Conversation], ratio: tuple[float, float], rng: random.Random
) -> tuple[list[Conversation], list[Conversation]]:
    """Downsample one side so len(answerable):len(unanswerable) matches the ratio as closely as counts allow."""
    a, b = ratio
    if b == 0:
        return answerable, []
    if a == 0:
        return [], unanswerable
    want_u = round(len(answerable) * b / a)
    if want_u <= len(unanswerable):
        return answerable, rng.sample(unanswerable, want_u)
    want_a = round(len(unanswerable) * a / b)
    return rng.sample(answerable, min(want_a, len(answerable))), unanswerable


def _finish(args, name: str, examples_a, examples_u, stats: Counter, extra: dict) -> int:
    rng = random.Random(args.seed)
    kept_a, kept_u = balance(examples_a, examples_u, parse_ratio(args.ratio), rng)
    out = kept_a + kept_u
    rng.shuffle(out)
    out_dir = check_output(args.output, args.input)
    n = write_jsonl(out_dir / f"{name}.jsonl", out)
    refusals = Counter(c.messages[-1].content for c in kept_u)
    report = {
        "converter": name,
        "input": str(args.input),
        "seed": args.seed,
        "ratio_requested": args.ratio,
        "examples": n,
        "answerable": len(kept_a),
        "unanswerable": len(kept_u),
        "ratio_measured": f"{len(kept_a)}:{len(kept_u)}",
        "removed_by_balancing": {
            "answerable": len(examples_a) - len(kept_a),
            "unanswerable": len(examples_u) - len(kept_u),
        },
        "refusal_phrasings_used": len(refusals),
        "negatives": dict(Counter(c.meta.get("negative") for c in kept_u)),
        "counts": dict(sorted(stats.items())),
        **extra,
    }
    write_report(out_dir, report)
    print(json.dumps(report, ensure_ascii=False, indent=2))
    return 0


def _parser(prog: str, lang: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--ratio", default="1:1", help="answerable:unanswerable (default 1:1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--instruction", default=INSTRUCTION_ZH if lang == "zh" else INSTRUCTION_EN)
    p.add_argument("--instruction-position", choices=["system", "user"], default="system")
    p.add_argument("--max-context-chars", type=int, default=0, help="drop examples with longer context (0 = keep)")
    return p


def main(argv: list[str]) -> int:
    """`chatforge data convert webqa`."""
    p = _parser("chatforge data convert webqa", "zh")
    p.add_argument("--lang", choices=["zh", "en"], default="zh", help="refusal and prompt language")
    args = p.parse_args(argv)
    check_output(args.output, args.input)
    items, stats = read_webqa(args.input)
    if not items:
        raise DataError("no question with an answerable evidence", file=args.input)
    rng = random.Random(args.seed)
    refusals = REFUSALS_ZH if args.lang == "zh" else REFUSALS_EN
    user_fmt = USER_ZH if args.lang == "zh" else USER_EN
    kw = dict(instruction=args.instruction, user_fmt=user_fmt, position=args.instruction_position)
    fallback, neg_stats = hard_negatives(items, args.lang, args.seed)
    stats.update(neg_stats)
    ans, una = [], []
    for it in items:
        # One answerable example per question (its first answer-bearing evidence) keeps questions equally weighted.
        ctx = it.positives[0]
        if args.max_context_chars and len(ctx) > args.max_context_chars:
            stats["answerable: context too long"] += 1
        else:
            meta = {"source": "webqa", "qid": it.qid, "answerable": True, "answers": it.answers}
            ans.append(make_example(ctx, it.question, it.answers[0], meta=meta, **kw))
        if it.negatives:
            neg, how = rng.choice(it.negatives), "own_no_answer"
        elif it.qid in fallback:
            neg, how = fallback[it.qid], "other_question"
        else:
            continue
        if args.max_context_chars and len(neg) > args.max_context_chars:
            stats["unanswerable: context too long"] += 1
            continue
        meta = {"source": "webqa", "qid": it.qid, "answerable": False, "answers": [], "negative": how}
        una.append(make_example(neg, it.question, rng.choice(refusals), meta=meta, **kw))
    return _finish(args, "webqa", ans, una, stats, {"questions": len(items)})


def main_squad2(argv: list[str]) -> int:
    """`chatforge data convert squad2`: SQuAD 2.0 JSON with its real unanswerable questions."""
    p = _parser("chatforge data convert squad2", "en")
    args = p.parse_args(argv)
    check_output(args.output, args.input)
    data = read_json(args.input)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise DataError("expected SQuAD JSON with a 'data' list", file=args.input, field="data")
    rng = random.Random(args.seed)
    kw = dict(instruction=args.instruction, user_fmt=USER_EN, position=args.instruction_position)
    ans, una, stats = [], [], Counter()
    for ai, article in enumerate(data["data"]):
        for pi, para in enumerate(article.get("paragraphs", [])):
            ctx = para.get("context")
            if not isinstance(ctx, str):
                raise DataError("paragraph without 'context'", file=args.input, record=ai, field=f"paragraphs[{pi}]")
            if args.max_context_chars and len(ctx) > args.max_context_chars:
                stats["context too long"] += len(para.get("qas", []))
                continue
            for qa in para.get("qas", []):
                texts = list(dict.fromkeys(a["text"] for a in qa.get("answers", []) if a.get("text")))
                meta = {"source": "squad2", "qid": qa.get("id"), "title": article.get("title")}
                if qa.get("is_impossible") or not texts:
                    meta.update(answerable=False, answers=[], negative="squad2_impossible")
                    una.append(make_example(ctx, qa["question"].strip(), rng.choice(REFUSALS_EN), meta=meta, **kw))
                else:
                    meta.update(answerable=True, answers=texts)
                    ans.append(make_example(ctx, qa["question"].strip(), texts[0], meta=meta, **kw))
    if not ans and not una:
        raise DataError("no questions found", file=args.input)
    return _finish(args, "squad2", ans, una, stats, {"questions": len(ans) + len(una)})
