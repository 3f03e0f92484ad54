"""MMLU through `chatforge eval` on one device, and the same items scored the plain way (each option as its own full
sequence, batched and length-sorted, as harnesses without prefix sharing do) to time the shared-prefix scorer.

GPU (one H200; needs only torch + transformers + pyyaml there; MODEL = an HF folder, e.g. the converted SmolLM2):
    PYTHONPATH=src python bench/mmlu_speed.py --model MODEL --data shared/data/benchmarks --device cuda \
        --dtype bfloat16 --shots 5 --batch-size 64 --plain --out $OUT/mmlu_smollm2
CPU, a small slice:
    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/mmlu_speed.py --model MODEL --data ../shared/data/benchmarks \
        --subjects abstract_algebra,anatomy --per-subject 20 --plain

Prints one JSON line per method: items, seconds, items/s, acc (micro), acc over subjects, and whether the two methods
picked the same option for every item.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="HF model folder")
    ap.add_argument("--data", default="../shared/data/benchmarks")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--subjects", default="", help="comma-separated; empty = all 57")
    ap.add_argument("--per-subject", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--plain", action="store_true", help="also score every option as a full sequence")
    ap.add_argument("--out", default="runs/mmlu_speed")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from chatforge.evaluation.commands import evaluate
    from chatforge.evaluation.config import load_eval_config
    from chatforge.serving.engine import Engine

    dtype = getattr(torch, args.dtype)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(args.device).eval()
    tok = AutoTokenizer.from_pretrained(args.model)
    engine = Engine(model, tok, "chatml")
    overrides = [
        "eval.tasks=[mmlu]",
        f"eval.benchmark_dir={args.data}",
        "eval.max_samples=null",
        f"eval.num_fewshot={args.shots}",
        f"eval.batch_size={args.batch_size}",
        "eval.charts=false",
        f"output.dir={args.out}",
        "output.overwrite=true",
    ]
    if args.subjects:
        overrides.append(f"eval.subjects=[{args.subjects}]")
    if args.per_subject:
        overrides.append(f"eval.max_per_subject={args.per_subject}")
    cfg = load_eval_config(None, overrides)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    out, report = evaluate(cfg, engine=engine)
    seconds = time.perf_counter() - start
    task = report["tasks"]["mmlu"]
    m = task["metrics"]
    row = {
        "method": "chatforge shared prefix",
        "device": args.device,
        "dtype": args.dtype,
        "shots": args.shots,
        "items": task["items"],
        "seconds": round(seconds, 2),
        "scoring_seconds": round(task["details"]["scoring_seconds"], 2),
        "items_per_s": round(task["items"] / task["details"]["scoring_seconds"], 1),
        "acc": round(100 * m["acc"], 2),
        "acc_subject_mean": round(100 * m.get("acc_subject_mean", m["acc"]), 2),
    }
    print(json.dumps(row), flush=True)
    if not args.plain:
        return 0

    # The plain way on the same prompts: context + " X" as one sequence per option, scored on the option tokens.
    from chatforge.evaluation import bench as B
    from chatforge.evaluation.benchmarks import load_spec
    from chatforge.evaluation.loglik import build_request
    from chatforge.evaluation.tasks import score_rows

    spec = load_spec("mmlu")
    docs, pools, notes = B.select_docs(spec, cfg.eval)
    contexts = B._contexts(spec, docs, pools, notes["num_fewshot"], cfg.eval.seed)
    rows, owner = [], []
    for n, (d, c) in enumerate(zip(docs, contexts)):
        req = build_request(tok, c, [" " + ch for ch in d.choices])
        for cont in req.continuations:
            rows.append((req.context + cont, [False] * len(req.context) + [True] * len(cont)))
            owner.append(n)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    nll = [0.0] * len(rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for s in range(0, len(order), args.batch_size):
        chunk = order[s : s + args.batch_size]
        for i, res in zip(chunk, score_rows(model, [rows[i] for i in chunk], pad)):
            nll[i] = res[0]
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    plain_seconds = time.perf_counter() - start
    per_item: list[list[float]] = [[] for _ in docs]
    for o, v in zip(owner, nll):
        per_item[o].append(-v)
    preds = [json.loads(x) for x in (Path(out) / "predictions_mmlu.jsonl").read_text().splitlines()]
    plain_pred = [max(range(len(ll)), key=lambda j: ll[j]) for ll in per_item]
    same = sum(p == q["predicted"] for p, q in zip(plain_pred, preds))
    acc = sum(p == d.gold for p, d in zip(plain_pred, docs)) / len(docs)
    print(
        json.dumps(
            {
                "method": "plain (one full sequence per option)",
                "items": len(docs),
                "scoring_seconds": round(plain_seconds, 2),
                "items_per_s": round(len(docs) / plain_seconds, 1),
                "acc": round(100 * acc, 2),
                "same_choice_as_chatforge": f"{same}/{len(docs)}",
                "speedup": round(plain_seconds / task["details"]["scoring_seconds"], 2),
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
