"""Run a standard benchmark (a `BenchmarkSpec`) on a loaded model: pick the items, build the prompts, score them, and
aggregate per subject and overall with 95% intervals.

- multiple_choice: log-likelihood of each option after the prompt (`loglik.score_requests`, the context encoded once
  per item); `acc` = the most likely option is gold, `acc_norm` = the same after dividing each log-likelihood by the
  option's length in characters (lm-evaluation-harness's acc_norm).
- generate (GSM8K): greedy decoding on the raw prompt until a stop string; each `extract` filter pulls an answer out
  of the reply, `normalize` is applied to both sides, exact match per filter (`exact_match` = the first filter).
- code (HumanEval): greedy completion of the prompt, run against the task's tests in `codeexec` (only with
  `eval.allow_code_execution=true`); pass@1.

Prompts are plain text (no chat template), as the published base-model numbers and lm-evaluation-harness's default are.
Tasks with subjects report `acc` over all items (micro, as the harness's group score weighted by size) and
`acc_subject_mean` (each subject counts once) with a normal-approximation interval (Agresti-Coull per subject).
"""

from __future__ import annotations

import math
import os
import random
import re
import sys
import time
from typing import Any

from chatforge.errors import ChatforgeError
from chatforge.evaluation import metrics as M
from chatforge.evaluation.benchmarks import BenchmarkSpec
from chatforge.evaluation.benchmarks import docs as D
from chatforge.evaluation.benchmarks.spec import render
from chatforge.evaluation.tasks import EvalContext, TaskResult


def _log(msg: str) -> None:
    print(f"[eval] {msg}", file=sys.stderr, flush=True)


def benchmark_dir(cfg: Any) -> str | None:
    return cfg.benchmark_dir or os.environ.get("CHATFORGE_BENCHMARKS") or None


def check_allowed(spec: BenchmarkSpec, cfg: Any) -> None:
    """Refuse a code task before any model is loaded unless the user opted in."""
    if spec.kind == "code" and not cfg.allow_code_execution:
        raise ChatforgeError(
            f"benchmark {spec.name} runs model-written code on this machine; it runs in a subprocess with time, "
            "memory, process and network limits, but that is not a security boundary. Set "
            "eval.allow_code_execution=true to allow it (better: inside a container)."
        )


def select_docs(spec: BenchmarkSpec, cfg: Any) -> tuple[list[D.Doc], dict[str, list[D.Doc]], dict[str, Any]]:
    """(scored docs, few-shot pool per subject, notes) after eval.subjects, eval.max_per_subject, eval.max_samples."""
    root = benchmark_dir(cfg)
    files = D.find_subjects(spec, root)
    wanted = list(cfg.subjects or []) if spec.has_subjects else []  # tasks without subjects ignore eval.subjects
    if wanted:
        unknown = [s for s in wanted if s not in files]
        if unknown:
            raise ChatforgeError(
                f"benchmark {spec.name} has no subject {unknown[0]!r}; subjects: {', '.join(sorted(files))}"
            )
        files = {s: files[s] for s in wanted}
    docs: list[D.Doc] = []
    pools: dict[str, list[D.Doc]] = {}
    k = spec.num_fewshot if cfg.num_fewshot is None else cfg.num_fewshot
    for subject, path in files.items():
        sub = D.load_docs(spec, path, subject)
        if k:
            pools[subject] = D.fewshot_pool(spec, subject, root, sub)
        docs += sub[: cfg.max_per_subject] if cfg.max_per_subject else sub
    total = len(docs)
    if cfg.max_samples is not None and len(docs) > cfg.max_samples:
        if cfg.sampling == "first":
            docs = docs[: cfg.max_samples]
        else:
            keep = sorted(random.Random(cfg.seed).sample(range(len(docs)), cfg.max_samples))
            docs = [docs[i] for i in keep]
    notes = {"num_fewshot": k, "subjects": len(files), "items_available": total}
    return docs, pools, notes


def _contexts(spec: BenchmarkSpec, docs: list[D.Doc], pools: dict[str, list[D.Doc]], k: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [
        D.build_context(spec, d, D.pick_shots(pools.get(d.subject, []), d, k, spec.fewshot_sampler, rng)) for d in docs
    ]


def _interval(correct: list[bool]) -> tuple[float, float, float]:
    acc = M.accuracy_with_ci(correct)
    return acc["accuracy"], acc["ci95"][0], acc["ci95"][1]


def _aggregate(name: str, per_doc: list[bool], docs: list[D.Doc], metrics: dict, per_subject: dict) -> None:
    value, lo, hi = _interval(per_doc)
    metrics.update({name: value, f"{name}_ci_low": lo, f"{name}_ci_high": hi})
    subjects = list(dict.fromkeys(d.subject for d in docs))
    if len(subjects) > 1:
        means, var, z2 = [], 0.0, 1.959964**2
        for s in subjects:
            sel = [c for c, d in zip(per_doc, docs) if d.subject == s]
            p = sum(sel) / len(sel)
            per_subject.setdefault(s, {"n": len(sel)})[name] = p
            means.append(p)
            # Agresti-Coull variance: a subject with few items all right (or all wrong) still counts as uncertain.
            q = (sum(sel) + z2 / 2) / (len(sel) + z2)
            var += q * (1 - q) / (len(sel) + z2)
        mean, half = sum(means) / len(means), 1.959964 * math.sqrt(var) / len(means)
        metrics.update(
            {
                f"{name}_subject_mean": mean,
                f"{name}_subject_mean_ci_low": max(0.0, mean - half),
                f"{name}_subject_mean_ci_high": min(1.0, mean + half),
            }
        )


def _pad_id(tok) -> int:
    return tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)


def _max_length(engine: Any) -> int:
    return int(getattr(engine, "max_total", 0) or getattr(engine.model.config, "max_position_embeddings", 2048))


def run_multiple_choice(spec: BenchmarkSpec, docs: list[D.Doc], contexts: list[str], ctx: EvalContext) -> TaskResult:
    from chatforge.evaluation.loglik import build_requests, score_requests

    tok = ctx.engine.tokenizer
    requests = build_requests(
        tok, [(c, [spec.target_delimiter + ch for ch in d.choices]) for d, c in zip(docs, contexts)]
    )
    tokens = sum(len(r.context) + sum(len(k) for k in r.continuations) for r in requests)
    start = time.perf_counter()
    lls = score_requests(ctx.engine.model, requests, _pad_id(tok), _max_length(ctx.engine), ctx.cfg.batch_size)
    seconds = time.perf_counter() - start
    correct, correct_norm, rows = [], [], []
    for d, ll in zip(docs, lls):
        pred = max(range(len(ll)), key=lambda j: ll[j])
        norm = [x / max(len(ch), 1) for x, ch in zip(ll, d.choices)]
        pred_norm = max(range(len(norm)), key=lambda j: norm[j])
        correct.append(pred == d.gold)
        correct_norm.append(pred_norm == d.gold)
        rows.append(
            {
                "source": d.source,
                "subject": d.subject,
                "question": render(spec.prompt, d.values)[-400:],
                "choices": d.choices,
                "gold": d.gold,
                "loglik": ll,
                "predicted": pred,
                "predicted_norm": pred_norm,
                "correct": pred == d.gold,
            }
        )
    metrics: dict[str, float] = {}
    per_subject: dict[str, dict[str, Any]] = {}
    for name in spec.metrics:
        _aggregate(name, correct if name == "acc" else correct_norm, docs, metrics, per_subject)
    details: dict[str, Any] = {
        "scoring_seconds": seconds,
        "items_per_second": len(docs) / seconds if seconds > 0 else 0.0,
        "tokens_scored_or_read": tokens,
        "chance": sum(1 / len(d.choices) for d in docs) / len(docs),
    }
    if per_subject:
        details["per_subject"] = per_subject
    wrong = [r for r in rows if not r["correct"]][: ctx.cfg.show_examples]
    return TaskResult(metrics, details, rows, {"wrong": wrong})


def generate_raw(engine: Any, prompts: list[list[int]], max_new_tokens: int, until: list[str], batch_size: int) -> list:
    """Greedy continuations of raw token prompts (no chat template) through the serving engine's batched decoder."""
    from collections import deque

    from chatforge.serving.engine import SamplingParams

    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, stop=list(until))
    seqs = [engine.new_sequence(p, params) for p in prompts]
    waiting = deque(sorted(seqs, key=lambda s: -len(s.prompt_ids)))
    batch = engine.new_batch()
    while waiting or len(batch):
        free = batch_size - len(batch)
        if waiting and free > 0:
            batch.add([waiting.popleft() for _ in range(min(free, len(waiting)))])
        if len(batch):
            batch.step()
    return seqs


def _encode_prompts(engine: Any, contexts: list[str], max_new: int) -> tuple[list[list[int]], int]:
    keep = max(1, _max_length(engine) - max_new)
    out, cut = [], 0
    encoded = engine.tokenizer(list(contexts), add_special_tokens=False)["input_ids"] if contexts else []
    for ids in encoded:
        ids = list(ids) or [engine.tokenizer.eos_token_id or 0]
        cut += len(ids) > keep
        out.append(ids[-keep:])
    return out, cut


def extract_answer(text: str, regex: str, select: str = "first") -> str:
    """The answer a filter pulls out of a reply: the first or last regex match (its first non-empty group)."""
    found = re.findall(regex, text)
    if not found:
        return "[invalid]"
    m = found[0] if select == "first" else found[-1]
    if isinstance(m, tuple):
        m = next((g for g in m if g), "")
    return m.strip()


def normalize_answer(text: str, remove: list[str], ignore_case: bool) -> str:
    for pattern in remove:
        text = re.sub(pattern, "", text)
    return text.lower() if ignore_case else text


def _gen_settings(spec: BenchmarkSpec, ctx: EvalContext) -> tuple[int, list[str]]:
    max_new = ctx.cfg.gen_max_new_tokens or int(spec.generation.get("max_new_tokens", 256))
    return max_new, [str(s) for s in spec.generation.get("until", [])]


def run_generate(spec: BenchmarkSpec, docs: list[D.Doc], contexts: list[str], ctx: EvalContext) -> TaskResult:
    max_new, until = _gen_settings(spec, ctx)
    prompts, cut = _encode_prompts(ctx.engine, contexts, max_new)
    start = time.perf_counter()
    seqs = generate_raw(ctx.engine, prompts, max_new, until, ctx.cfg.batch_size)
    seconds = time.perf_counter() - start
    norm = spec.normalize or {}
    remove, ignore_case = [str(r) for r in norm.get("remove", [])], bool(norm.get("ignore_case", False))
    filters = spec.extract or [{"name": "whole", "regex": r"(?s)^(.*)$", "select": "first"}]
    per_filter: dict[str, list[bool]] = {f["name"]: [] for f in filters}
    rows = []
    for d, s in zip(docs, seqs):
        gold = normalize_answer(str(d.gold), remove, ignore_case)
        row: dict[str, Any] = {"source": d.source, "question": render(spec.prompt, d.values)[-400:], "gold": d.gold}
        row["reply"] = s.text
        for f in filters:
            pred = extract_answer(s.text, f["regex"], f.get("select", "first"))
            ok = normalize_answer(pred, remove, ignore_case) == gold
            per_filter[f["name"]].append(ok)
            row[f"extracted_{f['name']}"], row[f"correct_{f['name']}"] = pred, ok
        rows.append(row)
    metrics: dict[str, float] = {}
    per_subject: dict[str, dict[str, Any]] = {}
    first = filters[0]["name"]
    _aggregate("exact_match", per_filter[first], docs, metrics, per_subject)
    for name, vals in per_filter.items():
        if name != first:
            _aggregate(f"exact_match_{name}", vals, docs, metrics, per_subject)
    new_tokens = sum(len(s.generated) for s in seqs)
    details = {
        "headline_filter": first,
        "generation_seconds": seconds,
        "generated_tokens": new_tokens,
        "tokens_per_second": new_tokens / seconds if seconds > 0 else 0.0,
        "hit_max_new_tokens": sum(s.finish_reason == "length" for s in seqs),
        "prompts_left_truncated": cut,
    }
    wrong = [r for r in rows if not r[f"correct_{first}"]][: ctx.cfg.show_examples]
    return TaskResult(metrics, details, rows, {"wrong": wrong})


def run_code(spec: BenchmarkSpec, docs: list[D.Doc], contexts: list[str], ctx: EvalContext) -> TaskResult:
    from chatforge.evaluation.codeexec import humaneval_program, network_isolation, run_programs

    check_allowed(spec, ctx.cfg)
    max_new, until = _gen_settings(spec, ctx)
    prompts, cut = _encode_prompts(ctx.engine, contexts, max_new)
    start = time.perf_counter()
    seqs = generate_raw(ctx.engine, prompts, max_new, until, ctx.cfg.batch_size)
    gen_seconds = time.perf_counter() - start
    test_f, entry_f = spec.code["test_field"], spec.code["entry_point_field"]
    programs = [
        humaneval_program(c, s.text, str(d.values[test_f]), str(d.values[entry_f]))
        for d, c, s in zip(docs, contexts, seqs)
    ]
    start = time.perf_counter()
    results = run_programs(programs, ctx.cfg.code_timeout, ctx.cfg.code_memory_mb)
    exec_seconds = time.perf_counter() - start
    rows = [
        {"source": d.source, "completion": s.text, "passed": r.passed, "status": r.status, "detail": r.detail}
        for d, s, r in zip(docs, seqs, results)
    ]
    metrics: dict[str, float] = {}
    _aggregate("pass@1", [r.passed for r in results], docs, metrics, {})
    details = {
        "generation_seconds": gen_seconds,
        "execution_seconds": exec_seconds,
        "status": {k: sum(r.status == k for r in results) for k in ("passed", "failed", "timeout", "error")},
        "network_isolation": network_isolation(),
        "timeout_seconds": ctx.cfg.code_timeout,
        "memory_mb": ctx.cfg.code_memory_mb,
        "prompts_left_truncated": cut,
    }
    return TaskResult(metrics, details, rows, {"failed": [r for r in rows if not r["passed"]][: ctx.cfg.show_examples]})


RUNNERS = {"multiple_choice": run_multiple_choice, "generate": run_generate, "code": run_code}


def run_benchmark(spec: BenchmarkSpec, ctx: EvalContext) -> tuple[TaskResult, int]:
    """Select the items, build the prompts and score them; returns (result, number of items)."""
    check_allowed(spec, ctx.cfg)
    docs, pools, notes = select_docs(spec, ctx.cfg)
    if not docs:
        raise ChatforgeError(f"benchmark {spec.name}: no items to evaluate")
    contexts = _contexts(spec, docs, pools, notes["num_fewshot"], ctx.cfg.seed)
    _log(f"benchmark {spec.name} v{spec.version}: {len(docs)} items, {notes['num_fewshot']}-shot")
    result = RUNNERS[spec.kind](spec, docs, contexts, ctx)
    result.details = {"version": spec.version, "task_file": str(spec.path), **notes, **result.details}
    return result, len(docs)


def chart_scales(spec: BenchmarkSpec) -> dict[str, float]:
    return {m: 100.0 for m in spec.metrics}
