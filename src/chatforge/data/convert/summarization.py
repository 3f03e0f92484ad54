"""CSL (abstract -> title) and LCSTS (short news -> summary) -> chat-style summarization dialogues.

A summarizer trained on one fixed prompt only answers that prompt. Here each example is drawn from one of 12 dialogue
templates (single turn with the request before or after the text, a greeting turn first, a system role, a length
limit, a form-like prompt, a follow-up "thanks" turn, ...) whose request wording and slots (document kind, what to
write, verb, length) are randomised with the seed. The final assistant turn is always the dataset's reference title or
summary, unchanged, so the data still scores with BLEU/ROUGE; `meta.reference` keeps it for evaluation.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from chatforge.data.convert.common import check_output, write_jsonl, write_report
from chatforge.data.schema import Conversation, Message
from chatforge.errors import ChatforgeError, DataError

# Slot vocabularies per dataset: the kind of document and of output, and ways of asking for it.
VOCAB = {
    "csl": {
        "doc": ["论文摘要", "摘要", "学术论文的摘要", "这段论文摘要", "科技论文摘要"],
        "target": ["标题", "题目", "论文标题"],
        "ask": [
            "请为下面的论文摘要拟一个标题。",
            "帮我给这篇论文起个题目。",
            "根据摘要写出论文的标题。",
            "这篇论文的标题应该是什么？",
            "请根据以下摘要生成一个合适的论文标题。",
            "能帮我想一个论文题目吗？",
            "给这段摘要配一个学术标题。",
        ],
    },
    "lcsts": {
        "doc": ["新闻", "短文", "这段文字", "这则消息", "微博"],
        "target": ["摘要", "标题", "一句话概括"],
        "ask": [
            "请用一句话概括下面这段新闻。",
            "帮我总结一下这段话的要点。",
            "给这则消息写一个简短的标题。",
            "这段文字主要讲了什么？用一句话说。",
            "请为下文生成摘要。",
            "能把这段新闻浓缩成一个标题吗？",
            "用简短的一句话总结以下内容。",
        ],
    },
}
GREETINGS = ["你好", "您好", "嗨", "在吗", "你好呀"]
OK_REPLIES = [
    "好的，请把内容发给我。",
    "没问题，请发过来吧。",
    "可以的，请提供原文。",
    "好的，我来帮你。请发送文字内容。",
]
THANKS = ["谢谢！", "好的，谢谢你。", "不错，多谢。", "太好了，谢谢。"]
WELCOME = ["不客气，还有需要随时找我。", "不用谢！还有其他文字需要处理吗？", "很高兴能帮到你。", "不客气。"]


def _t_ask_first(r, v, text, ref):
    return [Message("user", f"{r.choice(v['ask'])}\n\n{text}"), Message("assistant", ref)]


def _t_text_first(r, v, text, ref):
    return [Message("user", f"{text}\n\n{r.choice(v['ask'])}"), Message("assistant", ref)]


def _t_read_then_ask(r, v, text, ref):
    return [Message("user", f"请阅读下面的{r.choice(v['doc'])}：\n{text}\n然后写出它的{r.choice(v['target'])}。")]


def _t_greeting(r, v, text, ref):
    return [
        Message(
            "user", f"{r.choice(GREETINGS)}，我有一段{r.choice(v['doc'])}，想请你帮忙写个{r.choice(v['target'])}。"
        ),
        Message("assistant", r.choice(OK_REPLIES)),
        Message("user", text),
        Message("assistant", ref),
    ]


def _t_system_role(r, v, text, ref):
    role = f"你是一个擅长为{r.choice(v['doc'])}撰写{r.choice(v['target'])}的助手，只输出结果。"
    return [Message("system", role), Message("user", text), Message("assistant", ref)]


def _t_quoted(r, v, text, ref):
    return [Message("user", f"“{text}”\n上面这段{r.choice(v['doc'])}的{r.choice(v['target'])}是什么？")]


def _t_length(r, v, text, ref):
    limit = len(ref) + r.choice([0, 2, 5, 10])  # derived from the reference, so the reply honours the limit
    return [Message("user", f"用不超过{limit}个字给下面的内容写一个{r.choice(v['target'])}：\n{text}")]


def _t_form(r, v, text, ref):
    return [Message("user", f"任务：生成{r.choice(v['target'])}\n输入：{text}\n输出：")]


def _t_thanks(r, v, text, ref):
    return [
        Message("user", f"{r.choice(v['ask'])}\n{text}"),
        Message("assistant", ref),
        Message("user", r.choice(THANKS)),
        Message("assistant", r.choice(WELCOME)),
    ]


def _t_polite(r, v, text, ref):
    return [Message("user", f"麻烦你看一下这段{r.choice(v['doc'])}，{r.choice(v['ask'])}\n{text}")]


def _t_markdown(r, v, text, ref):
    return [Message("user", f"## 原文\n{text}\n\n## 要求\n{r.choice(v['ask'])}")]


def _t_brief(r, v, text, ref):
    return [Message("user", f"{r.choice(v['target'])}？\n{text}")]


TEMPLATES: list[Callable] = [
    _t_ask_first,
    _t_text_first,
    _t_read_then_ask,
    _t_greeting,
    _t_system_role,
    _t_quoted,
    _t_length,
    _t_form,
    _t_thanks,
    _t_polite,
    _t_markdown,
    _t_brief,
]


def render(template: Callable, rng: random.Random, vocab: dict, text: str, ref: str) -> list[Message]:
    msgs = template(rng, vocab, text, ref)
    if msgs[-1].role == "user":  # single-turn templates return only the request; the reply is the reference
        msgs.append(Message("assistant", ref))
    return msgs


def read_csl(path: Path) -> list[tuple[str, str]]:
    """CSL TSV lines `to title<TAB>abstract<TAB>title` (or `abstract<TAB>title`) -> [(text, reference)]."""
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) == 3:
            cols = cols[1:]
        if len(cols) != 2 or not cols[0].strip() or not cols[1].strip():
            raise DataError("expected 'to title<TAB>abstract<TAB>title'", file=str(path), line=n)
        out.append((cols[0].strip(), cols[1].strip()))
    return out


_DOC = re.compile(r"<doc id=(\d+)>(.*?)</doc>", re.S)


def read_lcsts(path: Path, min_score: int, stats: Counter) -> list[tuple[str, str]]:
    """LCSTS `<doc id=N><human_label>k</human_label><summary>..</summary><short_text>..</short_text></doc>`."""
    out = []
    text = path.read_text(encoding="utf-8")
    for m in _DOC.finditer(text):
        body = m.group(2)
        fields = {k: re.search(rf"<{k}>(.*?)</{k}>", body, re.S) for k in ("human_label", "summary", "short_text")}
        if fields["summary"] is None or fields["short_text"] is None:
            raise DataError("doc without <summary> or <short_text>", file=str(path), record=int(m.group(1)))
        label = fields["human_label"]
        if label is not None and int(label.group(1).strip()) < min_score:
            stats[f"human_label below {min_score}"] += 1
            continue
        out.append((fields["short_text"].group(1).strip(), fields["summary"].group(1).strip()))
    if not out and not stats:
        raise DataError("no <doc> entries found", file=str(path))
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="chatforge data convert summarization", description=__doc__.split("\n\n")[0])
    p.add_argument("--format", required=True, choices=["csl", "lcsts"])
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-score", type=int, default=3, help="LCSTS: keep human_label >= this (1-5)")
    a = p.parse_args(argv)
    path = Path(a.input)
    if not path.exists():
        raise ChatforgeError(f"input file not found: {path}")
    out = check_output(a.output, path)
    stats: Counter = Counter()
    pairs = read_csl(path) if a.format == "csl" else read_lcsts(path, a.min_score, stats)
    rng = random.Random(a.seed)
    convs = []
    used: Counter = Counter()
    for i, (text, ref) in enumerate(pairs):
        k = rng.randrange(len(TEMPLATES))
        used[TEMPLATES[k].__name__[3:]] += 1
        msgs = render(TEMPLATES[k], rng, VOCAB[a.format], text, ref)
        convs.append(Conversation(msgs, meta={"source": a.format, "index": i, "template": k, "reference": ref}))
    n = write_jsonl(out / f"{a.format}.jsonl", convs)
    report = {
        "converter": "summarization",
        "format": a.format,
        "input": str(path),
        "seed": a.seed,
        "examples": n,
        "templates": len(TEMPLATES),
        "template_use": dict(sorted(used.items())),
        "removed": dict(stats),
    }
    write_report(out, report)
    print(json.dumps(report, ensure_ascii=False, indent=2))
    return 0
