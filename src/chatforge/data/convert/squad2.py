"""SQuAD 2.0 -> grounded-QA SFT data (the WebQA shape, in English): answer from the context or say you cannot.

Unanswerable examples are SQuAD 2.0's own `is_impossible` questions (written against their paragraph, with plausible
but wrong answers in it) and, with `--hard-negatives`, answerable questions paired with another paragraph of the same
article that contains none of their answers: same topic, same names, no answer. `--evidences N` puts N passages in
each context: the question's paragraph plus N-1 other paragraphs of its article (distractors that contain none of its
answers or plausible answers), shuffled; an unanswerable context holds N passages without the answer.

`--split 0.75,0.125,0.125` writes train/val/test.jsonl with whole articles per split (`--split-by article`, the
default; SQuAD's questions about one article share names and facts) or whole paragraphs (`--split-by context`); every
passage of a context, distractors included, comes from its own split, so no passage is in two splits.
"""

from __future__ import annotations

import argparse
import math
import random
from collections import Counter

from chatforge.data.convert.common import check_output, read_json
from chatforge.data.convert.webqa import (
    REFUSALS_EN,
    SPLIT_NAMES,
    USER_EN,
    _check_args,
    _finish,
    _norm,
    _parser,
    _words,
    join_evidences,
    make_example,
    parse_split,
    split_groups,
)
from chatforge.data.schema import Conversation
from chatforge.errors import DataError


def _texts(answers: list) -> list[str]:
    return list(dict.fromkeys(a["text"] for a in answers if isinstance(a, dict) and str(a.get("text", "")).strip()))


def read_squad(path: str) -> list[dict]:
    """Paragraphs as {title, index, context, qas: [{id, question, answers, plausible, impossible}]}."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise DataError("expected SQuAD JSON with a 'data' list", file=path, field="data")
    paras = []
    for ai, article in enumerate(data["data"]):
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise DataError("article without a 'paragraphs' list", file=path, record=ai, field="paragraphs")
        title = str(article.get("title") or f"article-{ai}")
        for pi, para in enumerate(article["paragraphs"]):
            ctx = para.get("context") if isinstance(para, dict) else None
            if not isinstance(ctx, str):
                raise DataError("paragraph without 'context'", file=path, record=ai, field=f"paragraphs[{pi}]")
            qas = []
            for qi, qa in enumerate(para.get("qas", [])):
                if not isinstance(qa, dict) or not isinstance(qa.get("question"), str):
                    raise DataError("question without text", file=path, record=ai, field=f"paragraphs[{pi}].qas[{qi}]")
                answers = _texts(qa.get("answers") or [])
                qas.append(
                    {
                        "id": qa.get("id") or f"{ai}-{pi}-{qi}",
                        "question": qa["question"].strip(),
                        "answers": answers,
                        "plausible": _texts(qa.get("plausible_answers") or []),
                        "impossible": bool(qa.get("is_impossible")) or not answers,
                    }
                )
            paras.append({"title": title, "index": pi, "context": ctx, "qas": qas})
    return paras


def _lacks(context: str, strings: list[str]) -> bool:
    norm = _norm(context)
    return not any(_norm(s) in norm for s in strings if s.strip())


def _ranked(question: str, candidates: list[dict], idf: dict[str, float], rng: random.Random) -> list[dict]:
    """Candidates by shared (IDF-weighted) words with the question, best first; ties in a seeded random order."""
    words = _words(question, "en")
    keyed = [
        (-sum(idf.get(w, 0.0) for w in words & _words(c["context"], "en")), rng.random(), k)
        for k, c in enumerate(candidates)
    ]
    return [candidates[k] for _, _, k in sorted(keyed)]


def main(argv: list[str]) -> int:
    """`chatforge data convert squad2`."""
    p = _parser("chatforge data convert squad2", "en")
    p.add_argument("--split-by", choices=["article", "context"], default="article", help="what a split keeps whole")
    p.add_argument(
        "--hard-negatives",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also make unanswerable examples from answerable questions and another paragraph of the same article "
        "that lacks their answers",
    )
    args = p.parse_args(argv)
    _check_args(args)
    check_output(args.output, args.input)
    paras = read_squad(args.input)
    if not any(para["qas"] for para in paras):
        raise DataError("no questions found", file=args.input)
    rng = random.Random(args.seed)
    kw = dict(instruction=args.instruction, user_fmt=USER_EN, position=args.instruction_position)
    for para in paras:
        para["group"] = para["title"] if args.split_by == "article" else f"{para['title']}#{para['index']}"
    fractions = parse_split(args.split)
    split_of = {para["group"]: "all" for para in paras}
    if fractions:
        sizes = Counter()
        for para in paras:
            sizes[para["group"]] += len(para["qas"])
        split_of = {g: SPLIT_NAMES[k] for g, k in split_groups(dict(sizes), fractions, args.seed).items()}
    # Distractors and hard negatives: other paragraphs of the same article and the same split.
    by_article: dict[tuple[str, str], list[dict]] = {}
    for para in paras:
        by_article.setdefault((para["title"], split_of[para["group"]]), []).append(para)
    df = Counter(w for para in paras for w in _words(para["context"], "en"))
    idf = {w: math.log((1 + len(paras)) / (1 + c)) for w, c in df.items()}
    n_ev = args.evidences
    ans: list[Conversation] = []
    una: list[Conversation] = []
    stats: Counter = Counter()

    def emit(passages: list[str], qa: dict, reply: str | None, meta: dict) -> None:
        rng.shuffle(passages)
        ctx = join_evidences(passages, "en")
        if args.max_context_chars and len(ctx) > args.max_context_chars:
            stats["context too long"] += 1
            return
        if reply is None:
            una.append(make_example(ctx, qa["question"], rng.choice(REFUSALS_EN), meta=meta, **kw))
        else:
            ans.append(make_example(ctx, qa["question"], reply, meta=meta, **kw))

    for para in paras:
        split = split_of[para["group"]]
        siblings = [o for o in by_article[(para["title"], split)] if o is not para]
        for qa in para["qas"]:
            base = {
                "source": "squad2",
                "qid": qa["id"],
                "title": para["title"],
                "split": split,
                "group": para["group"],
                "evidences": n_ev,
            }
            avoid = qa["answers"] + qa["plausible"]
            clean = [o for o in siblings if _lacks(o["context"], avoid)]
            distractors = [o["context"] for o in _ranked(qa["question"], clean, idf, rng)[: n_ev - 1]]
            if n_ev > 1 and len(distractors) < n_ev - 1:
                stats["contexts with fewer distractors than --evidences asked"] += 1
            if qa["impossible"]:
                meta = {**base, "answerable": False, "answers": [], "negative": "squad2_impossible"}
                emit([para["context"], *distractors], qa, None, meta)
                continue
            emit(
                [para["context"], *distractors],
                qa,
                qa["answers"][0],
                {**base, "answerable": True, "answers": qa["answers"]},
            )
            if args.hard_negatives:
                # The most similar paragraph of the same article without the answer: the question's topic and names,
                # not its answer. With --evidences N, N such paragraphs.
                negs = [o["context"] for o in _ranked(qa["question"], clean, idf, rng)[:n_ev]]
                if not negs:
                    stats["answerable questions without a same-article hard negative"] += 1
                    continue
                meta = {**base, "answerable": False, "answers": [], "negative": "same_article_other_paragraph"}
                emit(negs, qa, None, meta)
    extra = {
        "questions": sum(len(para["qas"]) for para in paras),
        "articles": len({para["title"] for para in paras}),
        "paragraphs": len(paras),
        "split_by": args.split_by,
    }
    return _finish(args, "squad2", ans, una, stats, extra)
