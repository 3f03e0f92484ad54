"""Calibrated abstention for grounded QA: decide answer-or-refuse from the model's own probabilities, with the
threshold fitted on validation data to a target false-refusal rate.

Greedy decoding turns a model that puts 45% on "The context does not say..." and 55% on an answer into a model that
answers, and one at 55% into a model that refuses; nothing lets a user trade refusal recall against false refusals.
Here the decision is a score:

    refusal score = log P(refusal opening) - log P(anything else)

where P(refusal opening) is the probability mass the model puts, at the start of its reply, on the first
`eval.refusal_prefix_tokens` tokens of the refusal replies it was trained with (the distinct openings of the
unanswerable references in `eval.calibration_data`; they are disjoint token sequences, so their probabilities add
up). Each opening costs one teacher-forced pass on top of the prompt's KV cache (`loglik.score_requests`).

Fitting (`fit_threshold`): on the calibration items, the lowest threshold that refuses at most
`eval.target_false_refusal` of the answerable ones (refuse when score > threshold); the trade-off curve (false-refusal
rate against refusal recall at several targets) is printed and written to `calibration.json` with the threshold.

Applying (task `grounded_qa_calibrated`): the greedy reply when its kind agrees with the decision; a refusal when the
score says refuse (the calibration set's most common refusal reply); and when the score says answer but the greedy
reply refuses, the reply decoded after the most likely first token that starts no refusal opening.
`eval.calibration` reuses a calibration.json instead of fitting again (it must come from the same model + adapter).
"""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from chatforge.errors import ChatforgeError
from chatforge.evaluation import metrics as M
from chatforge.evaluation.tasks import (
    EvalContext,
    Item,
    TaskResult,
    _generate,
    _reply_text,
    _with_system,
    drop_long_prompts,
    grounded_confusion,
    grounded_items,
    grounded_rows,
    sample,
)
from chatforge.io import atomic_write_json

CURVE_TARGETS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0)


def _log(msg: str) -> None:
    print(f"[eval] {msg}", file=sys.stderr, flush=True)


def check_config(cfg: Any) -> None:
    """Before the model loads: the calibrated task needs calibration data or a calibration.json."""
    e = cfg.eval
    if "grounded_qa_calibrated" not in e.tasks:
        return
    if e.calibration:
        if not Path(e.calibration).is_file():
            raise ChatforgeError(f"eval.calibration: {e.calibration} is not a file (a calibration.json of an eval run)")
        return
    if not e.calibration_data:
        raise ChatforgeError(
            "task grounded_qa_calibrated needs eval.calibration_data (grounded-QA files to fit the threshold on, e.g. "
            "the validation split: eval.calibration_data=[data/squad2/val.jsonl]) or eval.calibration (a "
            "calibration.json written by an earlier run)"
        )
    for path in e.calibration_data:
        if not Path(path).is_file():
            raise ChatforgeError(f"eval.calibration_data: {path} is not a file")


# ----------------------------------------------------------------------------------------------------- openings


def refusal_openings(replies: list[str], tokenizer, n_tokens: int) -> list[list[int]]:
    """Distinct first-`n_tokens` token sequences of the refusal replies, none a prefix of another (so the events
    "the reply starts with opening j" are disjoint and their probabilities add up)."""
    prefixes = {tuple(tokenizer.encode(r, add_special_tokens=False)[:n_tokens]) for r in replies if r.strip()}
    prefixes.discard(())
    kept: list[tuple[int, ...]] = []
    for p in sorted(prefixes, key=len):
        if not any(p[: len(k)] == k for k in kept):
            kept.append(p)
    return [list(p) for p in kept]


def _prompt_ids(ctx: EvalContext, items: list[Item]) -> list[list[int]]:
    return [ctx.engine.encode(_with_system(it.prompt, ctx.default_system)) for it in items]


def refusal_scores(ctx: EvalContext, items: list[Item], openings: list[list[int]]) -> list[float]:
    """Per item: log P(reply starts with a refusal opening) - log P(it does not)."""
    from chatforge.evaluation.loglik import Request, score_requests

    if not items:
        return []
    prompts = _prompt_ids(ctx, items)
    pad = ctx.engine.tokenizer.pad_token_id
    pad = 0 if pad is None else pad
    longest = max(len(o) for o in openings)
    reqs = [Request(p, openings) for p in prompts]
    logps = score_requests(
        ctx.engine.model, reqs, pad, max(p_len for p_len in map(len, prompts)) + longest, ctx.cfg.batch_size
    )
    out = []
    for row in logps:
        log_mass = float(torch.logsumexp(torch.tensor(row, dtype=torch.float64), 0))
        log_mass = min(log_mass, math.log1p(-1e-12))
        out.append(log_mass - math.log(-math.expm1(log_mass)))  # log(p) - log(1 - p)
    return out


# --------------------------------------------------------------------------------------------------- threshold


def threshold_for(answerable_scores: list[float], target: float) -> float:
    """The lowest threshold t with #(answerable score > t) <= floor(target * n): refuse when score > t."""
    if not answerable_scores:
        raise ChatforgeError("calibration needs answerable items (meta.answerable true, or a non-refusal reply)")
    ranked = sorted(answerable_scores, reverse=True)
    allowed = math.floor(target * len(ranked) + 1e-9)
    return -math.inf if allowed >= len(ranked) else ranked[allowed]


def rates(answerable: list[float], unanswerable: list[float], t: float) -> dict[str, float]:
    """False-refusal rate, refusal recall / precision / F1 of "refuse when score > t"."""
    fp = sum(s > t for s in answerable)
    tp = sum(s > t for s in unanswerable)
    recall = tp / len(unanswerable) if unanswerable else 0.0
    precision = tp / (tp + fp) if tp + fp else 0.0
    return {
        "false_refusal_rate": fp / len(answerable) if answerable else 0.0,
        "refusal_recall": recall,
        "refusal_precision": precision,
        "refusal_f1": M._f1(precision, recall),
    }


def tradeoff_curve(answerable: list[float], unanswerable: list[float]) -> list[dict[str, float]]:
    """Refusal recall against false-refusal rate, at the thresholds fitted to `CURVE_TARGETS`."""
    out = []
    for target in CURVE_TARGETS:
        t = threshold_for(answerable, target)
        out.append({"target_false_refusal": target, "threshold": t, **rates(answerable, unanswerable, t)})
    return out


def format_curve(curve: list[dict[str, float]], title: str) -> str:
    lines = [title, "  target  threshold  false-refusal  refusal-recall  refusal-precision"]
    for row in curve:
        t = row["threshold"]
        lines.append(
            f"  {row['target_false_refusal']:6.2f}  {t:9.3f}  {row['false_refusal_rate']:13.1%}  "
            f"{row['refusal_recall']:14.1%}  {row['refusal_precision']:17.1%}"
        )
    return "\n".join(lines)


def _json_float(x: float) -> float | str:
    return x if math.isfinite(x) else ("-inf" if x < 0 else "inf")


def _from_json_float(x: float | str) -> float:
    return float(x)


# ------------------------------------------------------------------------------------------------------ fitting


def fit(ctx: EvalContext) -> dict[str, Any]:
    """Read `eval.calibration_data`, score it, fit the threshold; returns the calibration record."""
    from chatforge.data.readers import read_records

    e = ctx.cfg
    records: list[Any] = []
    for path in e.calibration_data:
        records.extend(read_records(path).records)
    items = grounded_items(records, e.refusal_patterns)
    items, too_long = drop_long_prompts(items, ctx.engine, ctx.max_length)
    items = sample(items, e.calibration_max_samples, e.seed)
    refusals = [it.reference["reply"] for it in items if not it.reference["answers"]]
    detected = [r for r in refusals if M.is_refusal(r, e.refusal_patterns)]
    if not detected:
        raise ChatforgeError(
            f"eval.calibration_data ({', '.join(e.calibration_data)}) has no unanswerable item with a refusal reply "
            "that the refusal detector recognises; the refusal openings come from those replies"
        )
    tok = ctx.engine.tokenizer
    openings = refusal_openings(detected, tok, e.refusal_prefix_tokens)
    scores = refusal_scores(ctx, items, openings)
    ans = [s for s, it in zip(scores, items) if it.reference["answers"]]
    una = [s for s, it in zip(scores, items) if not it.reference["answers"]]
    t = threshold_for(ans, e.target_false_refusal)
    curve = tradeoff_curve(ans, una)
    _log(format_curve(curve, f"calibration trade-off on {len(ans)} answerable / {len(una)} unanswerable items:"))
    fitted = rates(ans, una, t)
    _log(
        f"threshold {t:.3f} for false refusals <= {e.target_false_refusal:.0%}: measured {fitted['false_refusal_rate']:.1%}"
        f", refusal recall {fitted['refusal_recall']:.1%} on the calibration items"
    )
    return {
        "threshold": _json_float(t),
        "target_false_refusal": e.target_false_refusal,
        "calibration_items": {"answerable": len(ans), "unanswerable": len(una), "left_out_too_long": too_long},
        "fitted": fitted,
        "curve": [{**row, "threshold": _json_float(row["threshold"])} for row in curve],
        "refusal_prefix_tokens": e.refusal_prefix_tokens,
        "openings": [{"ids": o, "text": tok.decode(o)} for o in openings],
        "refusal_reply": Counter(detected).most_common(1)[0][0],
        "data": list(e.calibration_data),
        "score": "log P(refusal opening) - log P(other reply), at the start of the reply",
    }


def load_or_fit(ctx: EvalContext) -> dict[str, Any]:
    e = ctx.cfg
    if e.calibration:
        try:
            cal = json.loads(Path(e.calibration).read_text(encoding="utf-8"))
            cal["threshold"] = _from_json_float(cal["threshold"])
            openings = [list(map(int, o["ids"])) for o in cal["openings"]]
            cal["refusal_reply"] = str(cal["refusal_reply"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ChatforgeError(f"eval.calibration: {e.calibration} is not a calibration.json ({err})") from None
        if not openings:
            raise ChatforgeError(f"eval.calibration: {e.calibration} lists no refusal openings")
        _log(f"calibration from {e.calibration}: threshold {cal['threshold']:.3f}")
        return cal
    cal = fit(ctx)
    if ctx.out_dir is not None:
        atomic_write_json(Path(ctx.out_dir) / "calibration.json", cal)
    cal["threshold"] = _from_json_float(cal["threshold"])
    return cal


# ------------------------------------------------------------------------------------------------------ applying


@torch.no_grad()
def _first_non_refusal_tokens(ctx: EvalContext, prompts: list[list[int]], banned: set[int]) -> list[int]:
    """The most likely first reply token outside `banned` (the refusal openings' first tokens), per prompt."""
    from chatforge.evaluation.tasks import _head_parts

    model = ctx.engine.model
    device = next(model.parameters()).device
    decoder, head, softcap = _head_parts(model)
    out = []
    for ids in prompts:  # few items need this (greedy refused, score says answer): one forward each is fine
        hidden = decoder(input_ids=torch.tensor([ids], device=device), use_cache=False).last_hidden_state[0, -1]
        logits = head(hidden).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        stops = set(getattr(ctx.engine, "stop_ids", set()))
        for t in banned | stops:
            if t < logits.shape[-1]:
                logits[t] = -math.inf
        out.append(int(logits.argmax()))
    return out


def forced_answers(ctx: EvalContext, items: list[Item], openings: list[list[int]]) -> list[str]:
    """Replies that start with the best token that begins no refusal opening (greedy from there on)."""
    from chatforge.evaluation.bench import generate_raw

    if not items:
        return []
    prompts = _prompt_ids(ctx, items)
    firsts = _first_non_refusal_tokens(ctx, prompts, {o[0] for o in openings})
    seqs = generate_raw(
        ctx.engine, [p + [t] for p, t in zip(prompts, firsts)], ctx.cfg.max_new_tokens - 1 or 1, [], ctx.cfg.batch_size
    )
    tok = ctx.engine.tokenizer
    return [
        (tok.decode([t], skip_special_tokens=True) + s.text).strip().rstrip("\ufffd").strip()
        for t, s in zip(firsts, seqs)
    ]


def run_calibrated(items: list[Item], ctx: EvalContext) -> TaskResult:
    """grounded_qa with the answer-or-refuse decision made by the calibrated refusal score."""
    cal = load_or_fit(ctx)
    t = cal["threshold"]
    openings = [list(map(int, o["ids"])) for o in cal["openings"]]
    scores = refusal_scores(ctx, items, openings)
    completions, stats = _generate(ctx, [it.prompt for it in items])
    greedy = [_reply_text(c) for c in completions]
    patterns = ctx.cfg.refusal_patterns
    refuse = [s > t for s in scores]
    need_answer = [k for k, (r, g) in enumerate(zip(refuse, greedy)) if not r and M.is_refusal(g, patterns)]
    forced = dict(zip(need_answer, forced_answers(ctx, [items[k] for k in need_answer], openings)))
    final = []
    flips = Counter()
    for k, (r, g) in enumerate(zip(refuse, greedy)):
        if r and not M.is_refusal(g, patterns):
            final.append(cal["refusal_reply"])
            flips["answer -> refusal"] += 1
        elif k in forced:
            final.append(forced[k])
            flips["refusal -> answer"] += 1
        else:
            final.append(g)
    metrics, rows = grounded_rows(items, final, patterns)
    greedy_metrics, greedy_rows = grounded_rows(items, greedy, patterns)
    for row, s, g in zip(rows, scores, greedy):
        row.update(refusal_score=s, greedy=g)
    ans = [s for s, it in zip(scores, items) if it.reference["answers"]]
    una = [s for s, it in zip(scores, items) if not it.reference["answers"]]
    curve = tradeoff_curve(ans, una) if ans else []
    if curve:
        _log(
            format_curve(curve, f"trade-off on the evaluated items ({len(ans)} answerable / {len(una)} unanswerable):")
        )
    details = {
        "answerable": len(ans),
        "unanswerable": len(una),
        "threshold": _json_float(t),
        "target_false_refusal": cal["target_false_refusal"],
        "calibration_fitted": cal.get("fitted", {}),
        "flips": dict(flips),
        "confusion": grounded_confusion(rows),
        "greedy_metrics": greedy_metrics,
        "greedy_confusion": grounded_confusion(greedy_rows),
        "curve": [{**row, "threshold": _json_float(row["threshold"])} for row in curve],
        **stats,
    }
    examples = {
        kind: [r for r in rows if r["error"] == kind][: ctx.cfg.show_examples]
        for kind in ("false_refusal", "hallucination", "wrong_answer")
    }
    return TaskResult(metrics, details, rows, examples)
