"""The evaluation tasks: each turns records + a loaded model into metrics, per-item predictions and error examples.

Generation goes through the batched `chatforge.serving.engine.Engine` (the same prompts, stop tokens and tool-call
parsing as chat and serving); `lm` and `choice` score token log-likelihoods with the model directly, gathering hidden
states only where a token is scored so the [tokens x vocab] logits of a whole batch never exist at once.

Every task function has the signature `(items, ctx) -> TaskResult`; `TASKS` maps a task name to its item builder and
scorer. Items keep where they came from (`file:line`) so every prediction can be traced back to its record.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from chatforge.data.schema import Conversation, Message, PreferencePair, TextDoc
from chatforge.errors import ChatforgeError, DataError
from chatforge.evaluation import metrics as M
from chatforge.evaluation.config import EvalConfig

REPLACEMENT_CHAR = "\ufffd"


@dataclass
class EvalContext:
    """What every task needs: the engine (model, tokenizer, template) and the eval settings."""

    engine: Any  # chatforge.serving.engine.Engine, or anything with .model/.tokenizer/.template/.generate
    cfg: EvalConfig
    mask: str = "all_assistant"
    max_length: int = 1024
    default_system: str | None = None
    out_dir: Path | None = None  # the eval run's folder (grounded_qa_calibrated writes calibration.json there)


@dataclass
class TaskResult:
    """Headline metrics (flat, for tables and comparisons), details, per-item predictions and error examples."""

    metrics: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)
    predictions: list[dict[str, Any]] = field(default_factory=list)
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class Item:
    """One thing to score: a prompt conversation and its reference (a message, answers, or a full record)."""

    source: str
    prompt: Conversation | None = None
    reference: Any = None
    record: Any = None


def _where(rec: Any) -> str:
    meta = getattr(rec, "meta", {}) or {}
    loc = meta.get("line", meta.get("record"))
    return f"{meta.get('source', '?')}:{loc}" if loc is not None else str(meta.get("source", "?"))


def _last_user(conv: Conversation) -> str:
    return next((m.content for m in reversed(conv.messages) if m.role == "user"), "")


def _with_system(conv: Conversation, system: str | None) -> Conversation:
    if system and (not conv.messages or conv.messages[0].role != "system"):
        return Conversation([Message("system", system), *conv.messages], conv.tools, conv.meta)
    return conv


def sample(items: list[Item], n: int | None, seed: int) -> list[Item]:
    """A seeded sample of at most n items, kept in file order (so runs on the same data score the same items)."""
    if n is None or len(items) <= n:
        return items
    keep = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in keep]


def drop_long_prompts(items: list[Item], engine: Any, max_length: int) -> tuple[list[Item], int]:
    """Leave out items whose prompt is longer than max_length tokens (counted and reported, never silently)."""
    if not items or items[0].prompt is None or not hasattr(engine, "encode"):
        return items, 0
    kept = [it for it in items if len(engine.encode(_with_system(it.prompt, None))) <= max_length]
    return kept, len(items) - len(kept)


def _conversations(records: Sequence[Any], task: str) -> list[Conversation]:
    convs = []
    for i, rec in enumerate(records):
        if not isinstance(rec, Conversation):
            kind = type(rec).__name__
            raise DataError(f"the {task} task needs chat records, got a {kind}", file=_where(rec), record=i)
        convs.append(rec)
    return convs


def _split_last_reply(conv: Conversation, task: str, index: int) -> tuple[Conversation, Message]:
    if len(conv.messages) < 2 or conv.messages[-1].role != "assistant":
        raise DataError(
            f"the {task} task needs a conversation ending with the assistant's reference reply",
            file=_where(conv),
            record=index,
            field="messages",
        )
    return Conversation(conv.messages[:-1], conv.tools, conv.meta), conv.messages[-1]


# ------------------------------------------------------------------------------------------------- model scoring


def _head_parts(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module, float | None]:
    """(decoder body, output layer, logit soft-cap) of a causal LM, also when wrapped by peft."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings(), getattr(base.config, "final_logit_softcapping", None)


@torch.no_grad()
def score_rows(model: torch.nn.Module, rows: list[tuple[list[int], list[bool]]], pad_id: int) -> list[tuple]:
    """Per row: (sum of -log p over trained tokens, number of trained tokens, number predicted right by argmax).

    `trained[t]` marks token t as scored given tokens < t (HF label convention; the model's shift is done here).
    Rows are right-padded into one batch; only the scored positions ever reach the output layer.
    """
    device = next(model.parameters()).device
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    scored = torch.zeros((len(rows), width), dtype=torch.bool)
    for r, (row_ids, trained) in enumerate(rows):
        ids[r, : len(row_ids)] = torch.tensor(row_ids)
        attn[r, : len(row_ids)] = 1
        scored[r, : len(trained)] = torch.tensor(trained)
    decoder, head, softcap = _head_parts(model)
    hidden = decoder(input_ids=ids.to(device), attention_mask=attn.to(device), use_cache=False).last_hidden_state
    keep = scored[:, 1:].to(device)  # position t-1 predicts token t
    targets = ids[:, 1:].to(device)[keep]
    logits = head(hidden[:, :-1][keep]).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    nll = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    right = (logits.argmax(-1) == targets).long()
    row_of = torch.arange(len(rows), device=device)[:, None].expand_as(keep)[keep]
    out = []
    for r in range(len(rows)):
        sel = row_of == r
        out.append((float(nll[sel].sum()), int(sel.sum()), int(right[sel].sum())))
    return out


def _score_all(ctx: EvalContext, rows: list[tuple[list[int], list[bool]]]) -> list[tuple]:
    """score_rows over length-sorted batches of eval.batch_size (sorting keeps padding small)."""
    pad_id = ctx.engine.tokenizer.pad_token_id
    pad_id = 0 if pad_id is None else pad_id
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    out: list[tuple] = [()] * len(rows)
    bs = ctx.cfg.batch_size
    for s in range(0, len(order), bs):
        chunk = order[s : s + bs]
        for i, res in zip(chunk, score_rows(ctx.engine.model, [rows[i] for i in chunk], pad_id)):
            out[i] = res
    return out


# ------------------------------------------------------------------------------------------------------------ lm


def lm_items(records: Sequence[Any]) -> list[Item]:
    items = []
    for i, rec in enumerate(records):
        if isinstance(rec, PreferencePair):
            raise DataError("the lm task scores chat or text records, not preference pairs", file=_where(rec), record=i)
        items.append(Item(_where(rec), record=rec))
    return items


def run_lm(items: list[Item], ctx: EvalContext) -> TaskResult:
    """Loss, perplexity and token accuracy on the tokens training would train (chat) or on every token (text)."""
    from chatforge.templates import encode_conversation, encode_text

    tok, template = ctx.engine.tokenizer, ctx.engine.template
    rows, kinds = [], []
    for item in items:
        if isinstance(item.record, TextDoc):
            ids = encode_text(item.record.text, tok)[: ctx.max_length]
            rows.append((ids, [True] * len(ids)))
            kinds.append("text")
        else:
            conv = _with_system(item.record, ctx.default_system)
            enc = encode_conversation(conv, tok, template, mask=ctx.mask, max_length=ctx.max_length)
            rows.append((enc.input_ids, enc.trained))
            kinds.append("chat")
    scores = _score_all(ctx, rows)
    details: dict[str, Any] = {}
    for kind in ("chat", "text"):
        sel = [s for s, k in zip(scores, kinds) if k == kind]
        if sel:
            details[kind] = M.lm_scores(sum(s[0] for s in sel), sum(s[1] for s in sel), sum(s[2] for s in sel))
            details[kind]["examples"] = len(sel)
    total = M.lm_scores(sum(s[0] for s in scores), sum(s[1] for s in scores), sum(s[2] for s in scores))
    preds = [
        {"source": it.source, "kind": k, "tokens": s[1], "loss": s[0] / s[1] if s[1] else None}
        for it, k, s in zip(items, kinds, scores)
    ]
    worst = sorted((p for p in preds if p["loss"] is not None), key=lambda p: -p["loss"])[: ctx.cfg.show_examples]
    metrics = {"loss": total["loss"], "perplexity": total["perplexity"], "token_accuracy": total["token_accuracy"]}
    return TaskResult(metrics, {**details, "tokens": total["tokens"]}, preds, {"highest_loss": worst})


# ------------------------------------------------------------------------------------------------------ generation


def _generate(ctx: EvalContext, prompts: list[Conversation]) -> tuple[list[Any], dict[str, float]]:
    """Batched greedy generation; returns completions and throughput numbers."""
    from chatforge.serving.engine import SamplingParams

    params = SamplingParams(max_new_tokens=ctx.cfg.max_new_tokens, temperature=0.0)
    convs = [_with_system(p, ctx.default_system) for p in prompts]
    start = time.perf_counter()
    completions = ctx.engine.generate(convs, params, batch_size=ctx.cfg.batch_size)
    seconds = time.perf_counter() - start
    new_tokens = sum(getattr(c, "completion_tokens", 0) for c in completions)
    stats = {
        "generation_seconds": seconds,
        "generated_tokens": new_tokens,
        "tokens_per_second": new_tokens / seconds if seconds > 0 else 0.0,
        "truncated": sum(getattr(c, "finish_reason", "") == "length" for c in completions),
    }
    return completions, stats


def _reply_text(completion: Any) -> str:
    """The reply's text; a reply cut by max_new_tokens can end inside a multi-byte character (U+FFFD): drop that."""
    text = completion.message.content.strip() or completion.text.strip()
    return text.rstrip(REPLACEMENT_CHAR).strip()


def generate_items(records: Sequence[Any]) -> list[Item]:
    items = []
    for i, conv in enumerate(_conversations(records, "generate")):
        prompt, ref = _split_last_reply(conv, "generate", i)
        items.append(Item(_where(conv), prompt, ref.content))
    return items


def run_generate(items: list[Item], ctx: EvalContext) -> TaskResult:
    """Greedy replies to each prompt, scored by corpus BLEU-4 and mean ROUGE-1/2/L F1 (both on a 0-100 scale)."""
    completions, stats = _generate(ctx, [it.prompt for it in items])
    preds = [_reply_text(c) for c in completions]
    refs = [it.reference for it in items]
    zh = ctx.cfg.zh_tokenize
    hyp_t, ref_t = [M.tokenize(p, zh) for p in preds], [M.tokenize(r, zh) for r in refs]
    rouge = M.rouge_scores(hyp_t, ref_t)
    metrics = {"bleu4": M.corpus_bleu(hyp_t, ref_t), **{k: 100 * v for k, v in rouge.items()}}
    rows = []
    for it, pred, h, r in zip(items, preds, hyp_t, ref_t):
        rows.append(
            {
                "source": it.source,
                "prompt": _last_user(it.prompt),
                "reference": it.reference,
                "prediction": pred,
                "sentence_bleu4": M.sentence_bleu(h, r),
                "rougeL": 100 * M.rouge_l(h, r),
            }
        )
    worst = sorted(rows, key=lambda r: r["rougeL"])[: ctx.cfg.show_examples]
    return TaskResult(metrics, {"tokenize_zh": zh, **stats}, rows, {"lowest_rougeL": worst})


# ------------------------------------------------------------------------------------------------------- tool calls


def toolcall_items(records: Sequence[Any]) -> list[Item]:
    """One item per assistant turn, its history (reference turns before it) as the prompt."""
    items = []
    for i, conv in enumerate(_conversations(records, "toolcall")):
        for k, msg in enumerate(conv.messages):
            if msg.role == "assistant" and k > 0 and msg.train is not False:
                prompt = Conversation(conv.messages[:k], conv.tools, conv.meta)
                items.append(Item(f"{_where(conv)}#turn{k}", prompt, msg))
        if not any(m.role == "assistant" for m in conv.messages):
            raise DataError("no assistant turn to evaluate", file=_where(conv), record=i, field="messages")
    return items


def _call_dicts(calls: Sequence[Any]) -> list[dict[str, Any]]:
    return [{"name": c.name, "arguments": c.arguments} for c in calls]


def run_toolcall(items: list[Item], ctx: EvalContext) -> TaskResult:
    """Hotel-bot rules: call turns -> slot P/R/F1 (a text reply scores 0); text turns -> BLEU-4 (a call scores 0)."""
    completions, stats = _generate(ctx, [it.prompt for it in items])
    zh = ctx.cfg.zh_tokenize
    rows: list[dict[str, Any]] = []
    for it, comp in zip(items, completions):
        ref: Message = it.reference
        pred: Message = comp.message
        row: dict[str, Any] = {
            "source": it.source,
            "prompt": _last_user(it.prompt),
            "reference": {"content": ref.content, "tool_calls": _call_dicts(ref.tool_calls)},
            "prediction": {"content": pred.content, "tool_calls": _call_dicts(pred.tool_calls)},
            "raw": comp.text,
        }
        if ref.tool_calls:
            s = M.slot_prf(pred.tool_calls, ref.tool_calls)
            row.update(kind="call", precision=s["precision"], recall=s["recall"], f1=s["f1"])
            row.update(hit=s["hit"], n_pred=s["n_pred"], n_ref=s["n_ref"])
            row["name_ok"] = sorted(c.name for c in pred.tool_calls) == sorted(c.name for c in ref.tool_calls)
            row["error"] = "text_instead_of_call" if not pred.tool_calls else ("wrong_slots" if s["f1"] < 1 else None)
        else:
            row["kind"] = "text"
            if pred.tool_calls:
                row["bleu4"], row["error"] = 0.0, "call_instead_of_text"
            else:
                row["bleu4"] = M.sentence_bleu(M.tokenize(pred.content, zh), M.tokenize(ref.content, zh))
                row["error"] = None
        rows.append(row)
    calls = [r for r in rows if r["kind"] == "call"]
    texts = [r for r in rows if r["kind"] == "text"]

    def mean(sel: list[dict], key: str) -> float:
        return sum(float(r[key]) for r in sel) / len(sel) if sel else 0.0

    hit, n_pred, n_ref = (sum(r[k] for r in calls) for k in ("hit", "n_pred", "n_ref"))
    micro_p, micro_r = (hit / n_pred if n_pred else 0.0), (hit / n_ref if n_ref else 0.0)
    metrics = {
        "slot_precision": mean(calls, "precision"),
        "slot_recall": mean(calls, "recall"),
        "slot_f1": mean(calls, "f1"),
        "tool_name_accuracy": mean(calls, "name_ok"),
        "call_rate_when_due": sum(bool(r["prediction"]["tool_calls"]) for r in calls) / len(calls) if calls else 0.0,
        "text_bleu4": mean(texts, "bleu4"),
        "call_rate_when_text_due": sum(r["error"] == "call_instead_of_text" for r in texts) / len(texts)
        if texts
        else 0.0,
    }
    details = {
        "call_turns": len(calls),
        "text_turns": len(texts),
        "slot_micro": {"precision": micro_p, "recall": micro_r, "f1": M._f1(micro_p, micro_r)},
        **stats,
    }
    examples = {}
    for kind in ("text_instead_of_call", "call_instead_of_text", "wrong_slots"):
        examples[kind] = [r for r in rows if r["error"] == kind][: ctx.cfg.show_examples]
    examples["lowest_text_bleu4"] = sorted((r for r in texts if r["error"] is None), key=lambda r: r["bleu4"])[
        : ctx.cfg.show_examples
    ]
    return TaskResult(metrics, details, rows, examples)


# ------------------------------------------------------------------------------------------------------ grounded QA


def grounded_items(records: Sequence[Any], refusal_patterns: Sequence[str] = ()) -> list[Item]:
    """Prompt = everything before the last (reference) reply; answers from `meta.answers` when the converter stored
    them (empty list = unanswerable), otherwise the reference reply itself (a refusal reply = unanswerable)."""
    items = []
    for i, conv in enumerate(_conversations(records, "grounded_qa")):
        prompt, ref = _split_last_reply(conv, "grounded_qa", i)
        meta = conv.meta or {}
        if meta.get("answerable") is False:
            answers: list[str] = []
        elif isinstance(meta.get("answers"), list):
            answers = [str(a) for a in meta["answers"] if str(a).strip()]
        elif isinstance(meta.get("answer"), str):
            answers = [meta["answer"]]
        else:
            answers = [] if M.is_refusal(ref.content, refusal_patterns) else [ref.content]
        if meta.get("answerable") is True and not answers:
            raise DataError("marked answerable but has no answer", file=_where(conv), record=i, field="meta.answers")
        items.append(Item(_where(conv), prompt, {"answers": answers, "reply": ref.content}))
    return items


def grounded_rows(items: list[Item], preds: list[str], patterns: Sequence[str]) -> tuple[dict, list[dict]]:
    """Headline metrics and one verdict row per item for answer-or-refuse replies."""
    refs = [it.reference["answers"] for it in items]
    scores = M.grounded_qa_scores(preds, refs, patterns)
    rows = []
    for it, pred, verdict in zip(items, preds, scores.pop("per_example")):
        rows.append(
            {
                "source": it.source,
                "question": _last_user(it.prompt)[-300:],
                "answers": it.reference["answers"],
                "reference": it.reference["reply"],
                "prediction": pred,
                **verdict,
            }
        )
    a, u = scores["answerable"], scores["unanswerable"]
    metrics = {
        "exact_match": a["exact_match"],
        "f1": a["f1"],
        "contains": a["contains"],
        "false_refusal_rate": a["false_refusal_rate"],
        "refusal_precision": u["refusal_precision"],
        "refusal_recall": u["refusal_recall"],
        "refusal_f1": u["refusal_f1"],
    }
    return metrics, rows


def grounded_confusion(rows: list[dict]) -> dict[str, dict[str, int]]:
    """Counts of what happened to answerable questions (answered correctly / answered wrong / refused) and to
    unanswerable ones (refused / answered). "Correct" = answer F1 >= 0.5 or the answer contained in the reply."""
    ans = [r for r in rows if r["answerable"]]
    una = [r for r in rows if not r["answerable"]]
    return {
        "answerable": {
            "answered_correct": sum(not r["refused"] and r["error"] is None for r in ans),
            "answered_wrong": sum(r["error"] == "wrong_answer" for r in ans),
            "refused": sum(r["refused"] for r in ans),
        },
        "unanswerable": {"refused": sum(r["refused"] for r in una), "answered": sum(not r["refused"] for r in una)},
    }


def run_grounded_qa(items: list[Item], ctx: EvalContext) -> TaskResult:
    """Answer from the context or refuse: EM / F1 / false refusals, and refusal P/R/F1 on unanswerable questions."""
    completions, stats = _generate(ctx, [it.prompt for it in items])
    preds = [_reply_text(c) for c in completions]
    metrics, rows = grounded_rows(items, preds, ctx.cfg.refusal_patterns)
    n_ans = sum(r["answerable"] for r in rows)
    details = {"answerable": n_ans, "unanswerable": len(rows) - n_ans, "confusion": grounded_confusion(rows), **stats}
    examples = {
        kind: [r for r in rows if r["error"] == kind][: ctx.cfg.show_examples]
        for kind in ("false_refusal", "hallucination", "wrong_answer")
    }
    return TaskResult(metrics, details, rows, examples)


def run_grounded_qa_calibrated(items: list[Item], ctx: EvalContext) -> TaskResult:
    """grounded_qa with the answer-or-refuse decision from the calibrated refusal score (`evaluation.abstain`)."""
    from chatforge.evaluation.abstain import run_calibrated  # abstain imports this module

    return run_calibrated(items, ctx)


# --------------------------------------------------------------------------------------------------- multiple choice


def read_choice_file(path: str | Path) -> list[Item]:
    """JSONL with `question`, `choices` (list of >= 2 strings) and `answer` (index, letter A-Z, or the choice text)."""
    path = Path(path)
    if not path.is_file():
        raise ChatforgeError(f"{path}: no such file")
    items = []
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"not valid JSON: {err.msg}", file=str(path), line=line_no) from None
            if not isinstance(rec, dict):
                raise DataError("a record must be a JSON object", file=str(path), line=line_no)
            q, choices, ans = rec.get("question"), rec.get("choices"), rec.get("answer")
            if not isinstance(q, str) or not q.strip():
                raise DataError("missing or empty question", file=str(path), line=line_no, field="question")
            if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
                raise DataError("needs a list of at least 2 strings", file=str(path), line=line_no, field="choices")
            if isinstance(ans, bool) or ans is None:
                index = None
            elif isinstance(ans, int):
                index = ans if 0 <= ans < len(choices) else None
            elif isinstance(ans, str) and len(ans.strip()) == 1 and ans.strip().upper().isalpha():
                index = ord(ans.strip().upper()) - ord("A")
                index = index if index < len(choices) else None
            else:
                index = choices.index(ans) if ans in choices else None
            if index is None:
                raise DataError(
                    f"{ans!r} is not a choice index, letter or choice text",
                    file=str(path),
                    line=line_no,
                    field="answer",
                )
            items.append(Item(f"{path}:{line_no}", reference=index, record={"question": q, "choices": choices}))
    return items


def option_mask(ids: list[int], trained: list[bool], stops: set[int]) -> list[bool]:
    """The trained mask of a reply without its closing end-of-turn token(s)."""
    mask = list(trained)
    k = len(mask) - 1
    while k >= 0 and not mask[k]:
        k -= 1
    while k >= 0 and mask[k] and ids[k] in stops:
        mask[k] = False
        k -= 1
    return mask


def run_choice(items: list[Item], ctx: EvalContext, pool: list[Item] | None = None) -> TaskResult:
    """Pick the option with the highest log-likelihood as the start of the assistant's reply; `accuracy_norm` divides
    each log-likelihood by the option's length in characters.

    The end-of-turn token is not scored: a chat model rarely stops right after a bare option ("Paris" then
    <|im_end|> costs SmolLM2 ~14 nats, more than picking a wrong city), which would measure brevity, not knowledge.
    """
    from chatforge.templates import encode_conversation, stop_token_ids

    tok, template = ctx.engine.tokenizer, ctx.engine.template
    stops = set(stop_token_ids(tok, template))
    pool = pool if pool is not None else items
    rng = random.Random(ctx.cfg.seed)
    rows, owners = [], []
    for n, it in enumerate(items):
        shots = [p for p in pool if p is not it]
        shots = rng.sample(shots, min(ctx.cfg.num_fewshot or 0, len(shots)))
        history: list[Message] = []
        for s in shots:
            history += [Message("user", s.record["question"]), Message("assistant", s.record["choices"][s.reference])]
        for c in it.record["choices"]:
            conv = Conversation([*history, Message("user", it.record["question"]), Message("assistant", c)])
            enc = encode_conversation(_with_system(conv, ctx.default_system), tok, template, mask="last_assistant")
            rows.append((enc.input_ids, option_mask(enc.input_ids, enc.trained, stops)))
            owners.append(n)
    scores = _score_all(ctx, rows)
    per_item: list[list[float]] = [[] for _ in items]
    for owner, s in zip(owners, scores):
        per_item[owner].append(-s[0])
    correct, correct_norm, preds = [], [], []
    for it, lls in zip(items, per_item):
        choice = max(range(len(lls)), key=lambda j: lls[j])
        norm = [ll / max(len(c), 1) for ll, c in zip(lls, it.record["choices"])]
        choice_norm = max(range(len(norm)), key=lambda j: norm[j])
        correct.append(choice == it.reference)
        correct_norm.append(choice_norm == it.reference)
        preds.append(
            {
                "source": it.source,
                "question": it.record["question"],
                "choices": it.record["choices"],
                "answer": it.reference,
                "predicted": choice,
                "loglik": lls,
                "correct": choice == it.reference,
            }
        )
    acc, acc_norm = M.accuracy_with_ci(correct), M.accuracy_with_ci(correct_norm)
    metrics = {
        "accuracy": acc["accuracy"],
        "accuracy_ci_low": acc["ci95"][0],
        "accuracy_ci_high": acc["ci95"][1],
        "accuracy_norm": acc_norm["accuracy"],
    }
    chance = sum(1 / len(it.record["choices"]) for it in items) / max(len(items), 1)
    details = {
        "n": acc["n"],
        "num_fewshot": ctx.cfg.num_fewshot or 0,
        "chance": chance,
        "accuracy_norm_ci95": acc_norm["ci95"],
    }
    return TaskResult(
        metrics, details, preds, {"wrong": [p for p in preds if not p["correct"]][: ctx.cfg.show_examples]}
    )


# ------------------------------------------------------------------------------------------------------ registry


@dataclass
class Task:
    """How to build a task's items from records, how to run it, and which metrics its chart shows (value x scale)."""

    items: Callable[..., list[Item]]
    run: Callable[..., TaskResult]
    chart: dict[str, float]


TASKS: dict[str, Task] = {
    "lm": Task(lm_items, run_lm, {"token_accuracy": 100}),
    "generate": Task(generate_items, run_generate, {"bleu4": 1, "rouge1": 1, "rouge2": 1, "rougeL": 1}),
    "toolcall": Task(
        toolcall_items,
        run_toolcall,
        {"slot_precision": 100, "slot_recall": 100, "slot_f1": 100, "tool_name_accuracy": 100, "text_bleu4": 1},
    ),
    "grounded_qa": Task(
        grounded_items,
        run_grounded_qa,
        {
            "exact_match": 100,
            "f1": 100,
            "contains": 100,
            "false_refusal_rate": 100,
            "refusal_precision": 100,
            "refusal_recall": 100,
            "refusal_f1": 100,
        },
    ),
    "choice": Task(read_choice_file, run_choice, {"accuracy": 100, "accuracy_norm": 100}),
}
TASKS["grounded_qa_calibrated"] = Task(grounded_items, run_grounded_qa_calibrated, TASKS["grounded_qa"].chart)


def _register_reward() -> None:
    # The reward-model task lives in its own module (stage rm); registered here so `eval.tasks: [reward]` works.
    from chatforge.evaluation.reward import reward_items, run_reward

    TASKS["reward"] = Task(reward_items, run_reward, {"pair_accuracy": 100})


_register_reward()
