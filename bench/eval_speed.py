"""Generate-eval throughput on CPU: the batched engine vs one prompt at a time, on the embedded SmolLM2 model.

    python bench/eval_speed.py [--n 16] [--max-new-tokens 32] [--batch-sizes 1,4,16] [--threads 1] [--data FILE]

Greedy decoding of the same prompts at each batch size (batch size 1 = one prompt at a time); prints a markdown table
of wall time, generated tokens, tokens/s and speed-up over batch size 1, and how many replies equal the one-at-a-time
replies (left padding can change a float's last bits, so an occasional greedy divergence is possible). Prompts are
short built-in questions, or the prompts of a chat JSONL (`--data`, e.g. converted WebQA; the last reply is dropped).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch

QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colours.",
    "Explain in one sentence what a hotel is.",
    "Give me a synonym for 'happy'.",
    "How many legs does a spider have?",
    "Write a short greeting for a customer.",
    "What is 12 times 12?",
    "Why is the sky blue? Answer briefly.",
    "北京有哪些著名的景点？",
    "请用一句话介绍长城。",
    "推荐一家北京的经济型酒店需要考虑什么？",
    "一年有多少天？",
    "What does a librarian do?",
    "Translate 'thank you' into Chinese.",
    "List two fruits that are yellow.",
    "What is the boiling point of water?",
]


def prompts(n: int, data: str | None):
    from chatforge.data.schema import Conversation, Message

    if data:
        from chatforge.data.readers import read_records

        recs = [r for r in read_records(data).records if isinstance(r, Conversation)][:n]
        return [Conversation(r.messages[:-1], r.tools, r.meta) for r in recs]
    return [Conversation([Message("user", QUESTIONS[i % len(QUESTIONS)])]) for i in range(n)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=16, help="number of prompts")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-sizes", default="1,4,16")
    ap.add_argument("--threads", type=int, default=1, help="1 is fastest on a shared machine (no OpenMP spin-waits)")
    ap.add_argument("--data", default=None, help="chat JSONL whose prompts to use instead of the built-in questions")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from chatforge.serving.engine import Engine, SamplingParams

    engine = Engine.load(args.model)
    convs = prompts(args.n, args.data)
    prompt_tokens = sum(len(engine.encode(c)) for c in convs)
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.0)
    engine.generate(convs[:1], SamplingParams(max_new_tokens=2))  # warm-up: first-call allocations
    rows, reference = [], None
    for bs in [int(x) for x in args.batch_sizes.split(",")]:
        start, cpu0 = time.perf_counter(), time.process_time()
        if bs == 1:  # one prompt at a time, as a naive generate-then-score loop would do
            outs = [engine.generate([c], params, batch_size=1)[0] for c in convs]
        else:
            outs = engine.generate(convs, params, batch_size=bs)
        secs, cpu = time.perf_counter() - start, time.process_time() - cpu0
        new = sum(o.completion_tokens for o in outs)
        texts = [o.text for o in outs]
        reference = reference or (texts if bs == 1 else None)
        same = sum(a == b for a, b in zip(texts, reference)) if reference else None
        rows.append(
            {
                "batch_size": bs,
                "seconds": secs,
                "cpu_seconds": cpu,
                "generated_tokens": new,
                "tokens_per_second": new / secs,
                "same_as_bs1": same,
            }
        )
        print(f"batch {bs}: {secs:.1f} s, {new} tokens, {new / secs:.1f} tok/s", file=sys.stderr, flush=True)
    base = next((r for r in rows if r["batch_size"] == 1), rows[0])
    print(
        f"\n{args.n} prompts ({prompt_tokens} prompt tokens), max_new_tokens {args.max_new_tokens}, greedy; "
        f"{args.model} fp32 on CPU, {args.threads} threads; torch {torch.__version__}, {platform.processor() or platform.machine()}\n"
    )
    # CPU seconds matter on a shared machine: other processes stretch wall time but not this process's CPU time.
    print(
        "| batch size | wall s | CPU s | generated tokens | tokens/s (wall) | speed-up (wall) | speed-up (CPU) | replies equal to bs 1 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        same = "-" if r["same_as_bs1"] is None else f"{r['same_as_bs1']}/{args.n}"
        print(
            f"| {r['batch_size']} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | {r['generated_tokens']} | {r['tokens_per_second']:.1f} | "
            f"{r['tokens_per_second'] / base['tokens_per_second']:.2f}x | {base['cpu_seconds'] / r['cpu_seconds']:.2f}x | {same} |"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "prompt_tokens": prompt_tokens, "rows": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
