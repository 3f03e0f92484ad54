"""Decode speed of the serving engine itself beside transformers' `generate`, on a random-weight model: needs only
torch and transformers (and chatforge's source), no HTTP stack, so it runs on a bare GPU machine.

    PYTHONPATH=src python bench/engine_speed.py --shape llama2-7b --device cuda --dtype bfloat16   # one H200
    PYTHONPATH=src python bench/engine_speed.py --model SmolLM2.gguf --static-cache on,off --skip-hf
    PYTHONPATH=src python bench/engine_speed.py --shape tiny --device cpu --new-tokens 16         # smoke test

It measures, in one run and for both the engine (`DecodeBatch`, the loop behind `chatforge serve`) and `generate`:
single-stream decode tokens/s (128-token prompt, `--new-tokens` greedy tokens, after the first), time to first token
for a 1,000-token prompt (p50 of `--ttft-runs`), and aggregate tokens/s with 1, 8 and 32 streams started together.
Every batch size is warmed up once before it is timed (a first run at a new size was measured 3x slower). Stop
tokens are disabled so every stream generates exactly `--new-tokens` tokens. Output: one JSON object per line, then a
table.

`--model PATH` (HF folder, .gguf, or `smollm2-135m-instruct`) times a real model loaded through chatforge's assembly
instead of a random-weight shape; `--static-cache on,off` times the engine with the static KV cache (decode step
captured as a CUDA graph on CUDA, `--compile`) and with the dynamic cache in the same run (`Engine.use_static_cache`,
what `chatforge serve --static-cache` uses).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

SHAPES = {
    "llama2-7b": dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
        max_position_embeddings=4096,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=512,
        max_position_embeddings=2048,
    ),
}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build(shape: str, dtype: torch.dtype, device: str):
    config = LlamaConfig(**SHAPES[shape], attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    return model.eval()


def prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(10, vocab, (n, length), generator=g).tolist()


def engine_run(engine, batch_prompts: list[list[int]], new_tokens: int, device: str) -> dict:
    """All prompts join one batch at once; decode until every row has `new_tokens` tokens."""
    from chatforge.serving.engine import SamplingParams

    params = SamplingParams(max_new_tokens=new_tokens)
    seqs = [engine.new_sequence(p, params, chat=False) for p in batch_prompts]
    batch = engine.new_batch(slots=len(seqs))  # a static cache gets exactly this many rows
    sync(device)
    t0 = time.perf_counter()
    batch.add(seqs)
    sync(device)
    t_first = time.perf_counter()
    while len(batch):
        batch.step()
    sync(device)
    t_end = time.perf_counter()
    tokens = sum(len(s.generated) for s in seqs)
    assert tokens == new_tokens * len(seqs), "a stream stopped early"
    return {"ttft_s": t_first - t0, "wall_s": t_end - t0, "decode_s": t_end - t_first, "tokens": tokens}


def hf_run(model, batch_prompts: list[list[int]], new_tokens: int, device: str) -> dict:
    ids = torch.tensor(batch_prompts, device=device)
    mask = torch.ones_like(ids)
    sync(device)
    t0 = time.perf_counter()
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=0,
        eos_token_id=None,
    )
    sync(device)
    wall = time.perf_counter() - t0
    tokens = (out.shape[1] - ids.shape[1]) * ids.shape[0]
    return {"wall_s": wall, "tokens": tokens}


def hf_ttft(model, prompt: list[int], device: str) -> float:
    ids = torch.tensor([prompt], device=device)
    sync(device)
    t0 = time.perf_counter()
    model.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False, pad_token_id=0
    )
    sync(device)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama2-7b")
    ap.add_argument("--model", help="a real model (HF folder, .gguf, smollm2-135m-instruct) instead of --shape")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--ttft-prompt-tokens", type=int, default=1000)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--streams", default="1,8,32")
    ap.add_argument("--ttft-runs", type=int, default=5)
    ap.add_argument("--static-cache", default="off", help="comma list of on/off: engine variants to time")
    ap.add_argument("--compile", default="auto", choices=["auto", "on", "off"], help="static cache: CUDA graphs")
    ap.add_argument("--skip-hf", action="store_true", help="engine only")
    ap.add_argument("--out", help="also write the JSON lines to this file")
    args = ap.parse_args(argv)
    modes = [m.strip() for m in args.static_cache.split(",") if m.strip()]
    if not modes or any(m not in ("on", "off") for m in modes):
        ap.error("--static-cache takes on, off or on,off")
    streams = [int(x) for x in args.streams.split(",")]

    from chatforge.models.tiny import tiny_tokenizer
    from chatforge.serving.engine import Engine

    dtype = getattr(torch, args.dtype)
    if args.model:
        loaded = Engine.load(args.model, dtype=args.dtype, device=args.device)
        model, tokenizer, template = loaded.model, loaded.tokenizer, loaded.template
        label = args.model.rstrip("/").split("/")[-1]
    else:
        model = build(args.shape, dtype, args.device)
        # Any fast tokenizer works for random weights (ids it does not know decode to nothing); the engine still
        # decodes every step, as it does when serving, so that cost is in the numbers.
        tokenizer, template, label = tiny_tokenizer(), "chatml", args.shape
    vocab = model.config.vocab_size
    results = []

    def record(**kw) -> None:
        kw.update(model=label, device=args.device, dtype=args.dtype, torch=torch.__version__)
        results.append(kw)
        print(json.dumps(kw), flush=True)

    def make_engine(mode: str) -> Engine:
        engine = Engine(model, tokenizer, template)
        engine.stop_ids = set()  # every stream generates exactly --new-tokens tokens
        if mode == "on":
            length = max(args.prompt_tokens + args.new_tokens, args.ttft_prompt_tokens + 2) + 8
            engine.use_static_cache(slots=max(streams), max_cache_len=length, compile=args.compile)
        return engine

    long = prompts(1, args.ttft_prompt_tokens, vocab, 1)[0]
    for mode in modes:
        engine = make_engine(mode)
        impl = f"chatforge static={mode}"
        # Time to first token for a long prompt (prefill + first sample).
        engine_run(engine, [long], 2, args.device)  # warm-up
        ttfts = [engine_run(engine, [long], 1, args.device)["ttft_s"] for _ in range(args.ttft_runs)]
        record(what="ttft", impl=impl, prompt_tokens=len(long), p50_ms=round(1000 * statistics.median(ttfts), 1))
        for n in streams:
            batch_prompts = prompts(n, args.prompt_tokens, vocab, 100 + n)
            t0 = time.perf_counter()
            engine_run(engine, batch_prompts, args.new_tokens, args.device)  # warm-up (and graph capture) at this size
            warm = time.perf_counter() - t0
            r = engine_run(engine, batch_prompts, args.new_tokens, args.device)
            record(
                what="decode",
                impl=impl,
                streams=n,
                new_tokens=args.new_tokens,
                aggregate_tok_s=round(r["tokens"] / r["wall_s"], 1),
                per_stream_decode_tok_s=round((args.new_tokens - 1) / r["decode_s"], 1),
                warmup_s=round(warm, 1),
            )
        del engine
    if not args.skip_hf:
        hf_ttft(model, long, args.device)
        ttfts = [hf_ttft(model, long, args.device) for _ in range(args.ttft_runs)]
        record(
            what="ttft", impl="hf_generate", prompt_tokens=len(long), p50_ms=round(1000 * statistics.median(ttfts), 1)
        )
        for n in streams:
            batch_prompts = prompts(n, args.prompt_tokens, vocab, 100 + n)
            hf_run(model, batch_prompts, args.new_tokens, args.device)
            h = hf_run(model, batch_prompts, args.new_tokens, args.device)
            record(
                what="decode",
                impl="hf_generate",
                streams=n,
                new_tokens=args.new_tokens,
                aggregate_tok_s=round(h["tokens"] / h["wall_s"], 1),
                per_stream_decode_tok_s=round(args.new_tokens / h["wall_s"], 1),
            )
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in results)

    impls = [f"chatforge static={m}" for m in modes] + ([] if args.skip_hf else ["hf_generate"])
    print(f"\n{label}, {args.device} {args.dtype}, {args.prompt_tokens}-token prompts, {args.new_tokens} new tokens")
    print("| what | " + " | ".join(impls) + " |\n|---|" + "---|" * len(impls))
    for key in sorted({(r["what"], r.get("streams", 0)) for r in results}, key=lambda k: (k[0] != "ttft", k[1])):
        row = {r["impl"]: r for r in results if (r["what"], r.get("streams", 0)) == key}
        if key[0] == "ttft":
            cells = [f"{row[i]['p50_ms']} ms" if i in row else "-" for i in impls]
            print(f"| TTFT p50, {args.ttft_prompt_tokens}-token prompt | " + " | ".join(cells) + " |")
        else:
            cells = [
                f"{row[i]['aggregate_tok_s']} tok/s ({row[i]['per_stream_decode_tok_s']}/stream)" if i in row else "-"
                for i in impls
            ]
            print(f"| batch {key[1]}, aggregate (per-stream decode) | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
