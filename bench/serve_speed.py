"""Serving speed of `chatforge serve`: time to first token and tokens/s for one stream, and aggregate tokens/s with
N concurrent streams versus the same N requests sent one at a time (continuous batching should win).

    .venv/bin/python bench/serve_speed.py                      # the embedded SmolLM2-135M on CPU
    .venv/bin/python bench/serve_speed.py --model DIR --template chatml --threads 2 --out result.json

The server runs in this process (uvicorn on a loopback port, the same app `chatforge serve` builds); clients are real
HTTP streaming requests through the official `openai` client. Decoding is greedy; token counts come from the server's
`usage`, so only tokens actually generated are counted.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

QUESTIONS = [
    "What is the capital of France?",
    "Give three tips for staying healthy.",
    "Explain what a hash table is in two sentences.",
    "Write a haiku about the sea.",
    "What causes the seasons on Earth?",
    "Name three primary colors.",
    "How do I boil an egg?",
    "What is the difference between weather and climate?",
    "Translate 'good morning' into Spanish and German.",
    "Why is the sky blue?",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def one_request(client, model: str, question: str, max_tokens: int) -> dict:
    """Stream one answer; returns ttft (s), total (s) and completion tokens."""
    start = time.perf_counter()
    first = None
    usage = None
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.perf_counter() - start
        if chunk.usage:
            usage = chunk.usage
    total = time.perf_counter() - start
    return {"ttft": first if first is not None else total, "total": total, "tokens": usage.completion_tokens}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--template")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads for the server (1 is fastest on a busy machine)"
    )
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--single-runs", type=int, default=6, help="one-stream requests for the TTFT percentiles")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument(
        "--static-cache", action="store_true", help="as `chatforge serve --static-cache` (rows = --concurrency)"
    )
    ap.add_argument("--static-cache-len", type=int, default=2048, help="columns of the static cache")
    args = ap.parse_args(argv)

    import openai
    import torch
    import uvicorn

    from chatforge.serving.engine import Engine
    from chatforge.serving.server import create_app

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    engine = Engine.load(args.model, template=args.template)
    if args.static_cache:
        engine.use_static_cache(slots=args.concurrency, max_cache_len=args.static_cache_len)
    load_s = time.perf_counter() - t0
    app = create_app(engine, "bench", max_batch=args.concurrency, max_queue=4 * args.concurrency)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600)
    try:
        one_request(client, "bench", "Hello!", 8)  # warm-up (first-call allocations)

        print("single stream ...", file=sys.stderr, flush=True)
        single = [
            one_request(client, "bench", QUESTIONS[i % len(QUESTIONS)], args.max_tokens)
            for i in range(args.single_runs)
        ]
        ttfts = [r["ttft"] for r in single]
        single_tps = [r["tokens"] / r["total"] for r in single]

        print(f"{args.concurrency} requests one at a time ...", file=sys.stderr, flush=True)
        batch = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.concurrency)]
        t = time.perf_counter()
        seq_results = [one_request(client, "bench", q, args.max_tokens) for q in batch]
        seq_wall = time.perf_counter() - t

        print(f"{args.concurrency} requests at once ...", file=sys.stderr, flush=True)
        t = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            conc_results = list(pool.map(lambda q: one_request(client, "bench", q, args.max_tokens), batch))
        conc_wall = time.perf_counter() - t
        peak = app.state.scheduler.peak_running
    finally:
        server.should_exit = True
        thread.join(timeout=30)

    seq_tokens = sum(r["tokens"] for r in seq_results)
    conc_tokens = sum(r["tokens"] for r in conc_results)
    result = {
        "model": args.model,
        "static_cache": args.static_cache,
        "device": str(next(engine.model.parameters()).device),
        "torch_threads": args.threads,
        "model_load_s": round(load_s, 2),
        "max_tokens": args.max_tokens,
        "single_stream": {
            "runs": len(single),
            "ttft_p50_s": round(_pct(ttfts, 0.5), 3),
            "ttft_p95_s": round(_pct(ttfts, 0.95), 3),
            "tokens_per_s_median": round(statistics.median(single_tps), 1),
        },
        "sequential": {
            "requests": len(batch),
            "tokens": seq_tokens,
            "wall_s": round(seq_wall, 2),
            "tokens_per_s": round(seq_tokens / seq_wall, 1),
        },
        "concurrent": {
            "requests": len(batch),
            "tokens": conc_tokens,
            "wall_s": round(conc_wall, 2),
            "tokens_per_s": round(conc_tokens / conc_wall, 1),
            "ttft_p50_s": round(_pct([r["ttft"] for r in conc_results], 0.5), 3),
            "peak_batch": peak,
        },
        "speedup": round((conc_tokens / conc_wall) / (seq_tokens / seq_wall), 2),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
