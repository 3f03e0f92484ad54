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
from chatforge.errors import ChatforgeError, DataError

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


def hard_negatives(
    items: list[QAItem], lang: str, seed: int, top_k: int = 5, *, count: int = 1, hard: bool = True
) -> tuple[dict[str, list[str]], Counter]:
    """qid -> up to `count` evidences of other questions that lack every answer of this one.

    `hard=True` prefers the evidences sharing the most (IDF-weighted) words with the question: the same topic, so the
    model must read for the answer instead of matching the subject. `hard=False` draws them at random.
    """
    rng = random.Random(seed)
    pool = [(i, ev) for i, it in enumerate(items) for ev in it.positives]
    if not pool:
        return {}, Counter()
    ev_words = [_words(ev, lang) for _, ev in pool] if hard else []
    df = Counter(w for ws in ev_words for w in ws)
    idf = {w: math.log((1 + len(pool)) / (1 + c)) for w, c in df.items()}
    index: dict[str, list[int]] = defaultdict(list)
    for j, ws in enumerate(ev_words):
        for w in ws:
            index[w].append(j)
    out, stats, used = {}, Counter(), Counter()
    for i, it in enumerate(items):
        answers = [_norm(a) for a in it.answers]
        chosen: list[int] = []
        if hard:
            scores: Counter = Counter()
            for w in _words(it.question, lang):
                for j in index.get(w, ()):
                    scores[j] += idf.get(w, 0.0)
            ok = [
                j
                for j, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
                if pool[j][0] != i and not any(a in _norm(pool[j][1]) for a in answers)
            ][: max(top_k, count * 2)]
            while ok and len(chosen) < count:
                # Among the best few, the evidence used least so far: one popular passage should not become the
                # negative of dozens of questions (the examples would be near copies of each other).
                fewest = min(used[j] for j in ok)
                j = rng.choice([j for j in ok if used[j] == fewest])
                ok.remove(j)
                used[j] += 1
                chosen.append(j)
            stats["hard negatives (share words with the question)"] += len(chosen)
        tries = 0
        while len(chosen) < count and tries < 50 * count:  # no (more) word overlap: any evidence without the answer
            tries += 1
            j = rng.randrange(len(pool))
            if pool[j][0] != i and j not in chosen and not any(a in _norm(pool[j][1]) for a in answers):
                chosen.append(j)
                stats["random negatives" + (" (no word overlap found)" if hard else "")] += 1
        if chosen:
            out[it.qid] = [pool[j][1] for j in chosen]
        else:
            stats["questions with no usable negative"] += 1
    return out, stats


def join_evidences(passages: list[str], lang: str) -> str:
    """Several retrieved passages as one context, numbered as a retrieval set is shown to a reader."""
    if len(passages) == 1:
        return passages[0]
    sep = "\n" if lang == "zh" else "\n\n"
    return sep.join(f"[{k}] {p}" for k, p in enumerate(passages, 1))


def split_groups(sizes: dict[str, int], fractions: tuple[float, ...], seed: int) -> dict[str, int]:
    """Assign whole groups (an article, or questions sharing an evidence) to splits so every split gets close to
    its share of the examples; no group is ever divided, so no context appears in two splits.

    Groups are taken in a seeded random order: the first ones seed each split that has a share (so none is empty
    when there are enough groups), every later one goes to the split furthest below its target.
    """
    keys = sorted(sizes)
    random.Random(seed).shuffle(keys)
    total = sum(sizes.values())
    targets = [f * total for f in fractions]
    filled = [0.0] * len(fractions)
    out: dict[str, int] = {}
    nonzero = [k for k, f in enumerate(fractions) if f > 0]
    for n, key in enumerate(keys):
        k = nonzero[n] if n < len(nonzero) else max(nonzero, key=lambda k: targets[k] - filled[k])
        out[key] = k
        filled[k] += sizes[key]
    return out


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


SPLIT_NAMES = ("train", "val", "test")


def parse_split(text: str | None) -> tuple[float, ...] | None:
    """'0.8,0.1,0.1' or '80:10:10' -> normalised (train, val, test) shares; two parts = (train, test)."""
    if not text:
        return None
    try:
        parts = [float(x) for x in re.split(r"[,:/]", text)]
    except ValueError as err:
        raise ChatforgeError(f"--split must look like 0.8,0.1,0.1 (train,val,test), got {text!r}") from err
    if len(parts) not in (2, 3) or any(x < 0 or not math.isfinite(x) for x in parts) or parts[0] <= 0:
        raise ChatforgeError(f"--split needs 2 or 3 non-negative shares with train > 0, got {text!r}")
    if len(parts) == 2:
        parts = [parts[0], 0.0, parts[1]]
    total = sum(parts)
    return tuple(x / total for x in parts)


def _ratio(args) -> tuple[float, float]:
    if args.unanswerable_ratio is not None:
        if not 0 <= args.unanswerable_ratio <= 1:
            raise ChatforgeError(f"--unanswerable-ratio must be in [0, 1], got {args.unanswerable_ratio}")
        return 1 - args.unanswerable_ratio, args.unanswerable_ratio
    return parse_ratio(args.ratio)


def _counts(convs: list[Conversation]) -> dict:
    una = [c for c in convs if not c.meta.get("answerable")]
    return {
        "examples": len(convs),
        "answerable": len(convs) - len(una),
        "unanswerable": len(una),
        "groups": len({c.meta.get("group") for c in convs}),
        "negatives": dict(Counter(c.meta.get("negative") for c in una)),
    }


def _finish(args, name: str, examples_a, examples_u, stats: Counter, extra: dict) -> int:
    """Balance each split to the requested ratio, write it (one file, or train/val/test.jsonl), then report.json."""
    rng = random.Random(args.seed)
    ratio = _ratio(args)
    out_dir = check_output(args.output, args.input)
    splits = sorted(
        {c.meta.get("split", "all") for c in examples_a + examples_u},
        key=lambda n: (n not in SPLIT_NAMES, SPLIT_NAMES.index(n) if n in SPLIT_NAMES else 0),
    )
    per_split, kept_all_a, kept_all_u, files = {}, [], [], {}
    for split in splits:
        sa = [c for c in examples_a if c.meta.get("split", "all") == split]
        su = [c for c in examples_u if c.meta.get("split", "all") == split]
        kept_a, kept_u = balance(sa, su, ratio, rng)
        out = kept_a + kept_u
        rng.shuffle(out)
        fname = f"{name}.jsonl" if split == "all" else f"{split}.jsonl"
        write_jsonl(out_dir / fname, out)
        files[split] = fname
        per_split[split] = {
            **_counts(out),
            "removed_by_balancing": {"answerable": len(sa) - len(kept_a), "unanswerable": len(su) - len(kept_u)},
        }
        kept_all_a += kept_a
        kept_all_u += kept_u
    refusals = Counter(c.messages[-1].content for c in kept_all_u)
    report = {
        "converter": name,
        "input": str(args.input),
        "seed": args.seed,
        "ratio_requested": f"{ratio[0]:g}:{ratio[1]:g}",
        "examples": len(kept_all_a) + len(kept_all_u),
        "answerable": len(kept_all_a),
        "unanswerable": len(kept_all_u),
        "ratio_measured": f"{len(kept_all_a)}:{len(kept_all_u)}",
        "removed_by_balancing": {
            "answerable": len(examples_a) - len(kept_all_a),
            "unanswerable": len(examples_u) - len(kept_all_u),
        },
        "refusal_phrasings_used": len(refusals),
        "negatives": dict(Counter(c.meta.get("negative") for c in kept_all_u)),
        "evidences_per_example": args.evidences,
        "hard_negatives": args.hard_negatives,
        "files": files,
        "counts": dict(sorted(stats.items())),
        **extra,
    }
    if args.split:
        report["split"] = {"requested": args.split, "by": extra.get("split_by", "group"), **per_split}
    write_report(out_dir, report)
    print(json.dumps(report, ensure_ascii=False, indent=2))
    return 0


def _parser(prog: str, lang: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--ratio", default="1:1", help="answerable:unanswerable (default 1:1)")
    p.add_argument(
        "--unanswerable-ratio",
        type=float,
        default=None,
        help="share of unanswerable examples, 0..1 (overrides --ratio)",
    )
    p.add_argument(
        "--split",
        default=None,
        help="train,val,test shares, e.g. 0.8,0.1,0.1: writes train/val/test.jsonl, whole groups (articles, shared "
        "evidences) per split, so no context is in two splits; default: one file",
    )
    p.add_argument("--evidences", type=int, default=1, help="passages per context (1 answer-bearing + distractors)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--instruction", default=INSTRUCTION_ZH if lang == "zh" else INSTRUCTION_EN)
    p.add_argument("--instruction-position", choices=["system", "user"], default="system")
    p.add_argument("--max-context-chars", type=int, default=0, help="drop examples with longer context (0 = keep)")
    return p


def _check_args(args) -> None:
    if args.evidences < 1 or args.evidences > 20:
        raise ChatforgeError(f"--evidences must be 1..20, got {args.evidences}")
    _ratio(args)
    parse_split(args.split)


def evidence_groups(items: list[QAItem]) -> dict[str, str]:
    """qid -> group id: questions that share an evidence text (after whitespace/case normalisation) are one group,
    so a split never puts the same passage on both sides."""
    parent = {it.qid: it.qid for it in items}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    owner: dict[str, str] = {}
    for it in items:
        for ev in it.positives + it.negatives:
            key = _norm(ev)
            if key in owner:
                parent[find(it.qid)] = find(owner[key])
            else:
                owner[key] = it.qid
    return {it.qid: find(it.qid) for it in items}


def main(argv: list[str]) -> int:
    """`chatforge data convert webqa`."""
    p = _parser("chatforge data convert webqa", "zh")
    p.add_argument("--lang", choices=["zh", "en"], default="zh", help="refusal and prompt language")
    p.add_argument(
        "--hard-negatives",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="unanswerable contexts from other questions' evidence on the same topic (shared words; default), "
        "or at random (--no-hard-negatives)",
    )
    args = p.parse_args(argv)
    _check_args(args)
    check_output(args.output, args.input)
    items, stats = read_webqa(args.input)
    if not items:
        raise DataError("no question with an answerable evidence", file=args.input)
    rng = random.Random(args.seed)
    refusals = REFUSALS_ZH if args.lang == "zh" else REFUSALS_EN
    user_fmt = USER_ZH if args.lang == "zh" else USER_EN
    kw = dict(instruction=args.instruction, user_fmt=user_fmt, position=args.instruction_position)
    group = evidence_groups(items)
    fractions = parse_split(args.split)
    split_of = {it.qid: "all" for it in items}
    if fractions:
        sizes = Counter(group.values())
        assign = split_groups(dict(sizes), fractions, args.seed)
        split_of = {it.qid: SPLIT_NAMES[assign[group[it.qid]]] for it in items}
    n_ev = args.evidences
    ans, una = [], []
    for split in sorted(set(split_of.values())):
        sub = [it for it in items if split_of[it.qid] == split]
        # Negatives come from the same split only: a test question's distractor must not be a training passage.
        others, neg_stats = hard_negatives(sub, args.lang, args.seed, count=n_ev, hard=args.hard_negatives)
        stats.update(neg_stats)
        for it in sub:
            base = {"source": "webqa", "qid": it.qid, "split": split, "group": group[it.qid], "evidences": n_ev}
            # One answerable example per question (its first answer-bearing evidence): questions weigh the same.
            passages = [it.positives[0], *others.get(it.qid, [])[: n_ev - 1]]
            rng.shuffle(passages)
            ctx = join_evidences(passages, args.lang)
            if args.max_context_chars and len(ctx) > args.max_context_chars:
                stats["answerable: context too long"] += 1
            else:
                meta = {**base, "answerable": True, "answers": it.answers}
                ans.append(make_example(ctx, it.question, it.answers[0], meta=meta, **kw))
            own = list(it.negatives)
            rng.shuffle(own)
            negs = (own + others.get(it.qid, []))[:n_ev]
            if not negs:
                continue
            how = "own_no_answer" if own else ("other_question" if args.hard_negatives else "random_other_question")
            ctx = join_evidences(negs, args.lang)
            if args.max_context_chars and len(ctx) > args.max_context_chars:
                stats["unanswerable: context too long"] += 1
                continue
            meta = {**base, "answerable": False, "answers": [], "negative": how}
            una.append(make_example(ctx, it.question, rng.choice(refusals), meta=meta, **kw))
    extra = {"questions": len(items), "groups": len(set(group.values())), "split_by": "shared evidence"}
    return _finish(args, "webqa", ans, una, stats, extra)


def main_squad2(argv: list[str]) -> int:
    """Kept for callers of the old name: SQuAD 2.0 lives in `chatforge.data.convert.squad2`."""
    from chatforge.data.convert.squad2 import main as squad2_main

    return squad2_main(argv)
