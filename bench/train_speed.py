"""Training speed: chatforge's training step against the plain transformers + PEFT reference, in one device run.

Each setting runs in its own subprocess (a fresh CUDA context, so peak memory is per setting), one JSON line each;
the table at the end puts ours and the reference side by side: tokens/s, MFU and peak GPU memory.

    python3 bench/train_speed.py --suite 7b --peer .bench_peer/hf_peft_baseline.py --out $OUT
    python3 bench/train_speed.py --suite alpaca --lengths .bench_peer/alpaca_lengths.json
    python3 bench/train_speed.py --suite 135m | memory | smoke (tiny shapes, runs on CPU too)

Ours = the same random-weight model shapes as the reference script, with `chatforge.training`'s pieces: the loss on
trained tokens with a fused chunked cross-entropy (losses.py), packing with FlexAttention document masks
(packing.py), and the speed switches (speedups.py: torch.compile of the decoder layers, selective activation
checkpointing, Liger kernels, fused AdamW). MFU counts model FLOPs as the reference does: LoRA 4N, full 6N, plus
causal attention 6*L*H*seq per token, over the H100's 989 TFLOP/s bf16 dense peak.

For the variable-length comparison (`--suite alpaca`) the reference is the stock HF step (`model(**batch).loss`) on
batches of randomly ordered samples padded to their longest one, gradient checkpointing on, with and without Liger,
exactly what the reference script does but fed real Alpaca lengths; only real tokens count. The lengths file holds
[prompt_tokens, total_tokens] per sample (SmolLM2 tokenizer, chat format); weights and token ids are random.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

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
    "smollm2-135m": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        max_position_embeddings=2048,
    ),
}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PEAK_FLOPS = 989e12


# ----------------------------------------------------------------------------------------------- one setting
def _build(a, device):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if a.liger or a.impl == "ref_liger":
        from chatforge.training.speedups import apply_liger

    cfg = LlamaConfig(**SHAPES[a.shape])
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype)
    model.config._attn_implementation = "flex_attention" if a.attn == "flex" else "sdpa"
    n_params = sum(p.numel() for p in model.parameters())
    if a.liger or a.impl == "ref_liger":
        if not apply_liger(model):
            raise RuntimeError("liger requested but not applied (no CUDA or liger_kernel not importable)")
    if a.impl.startswith("ref") and a.grad_ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if a.mode == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=LORA_TARGETS, lora_dropout=0.0))
    return model, cfg, n_params


def _batches(a, cfg, device):
    """Yields (batch dict on device, real tokens) forever: fixed random rows, or Alpaca lengths packed / padded."""
    import torch

    from chatforge.training.packing import attention_inputs, collate, pack, pad_batch

    g = torch.Generator().manual_seed(0)
    if not a.lengths:
        x = torch.randint(0, cfg.vocab_size, (a.batch, a.seq), generator=g).to(device)
        batch = {"input_ids": x, "labels": x}
        while True:
            yield batch, a.batch * a.seq, a.batch * a.seq
    pairs = json.loads(Path(a.lengths).read_text())
    rng = random.Random(0)

    def sample(i):
        p, n = pairs[i]
        n = min(n, a.seq)
        ids = torch.randint(0, cfg.vocab_size, (n,), generator=g).tolist()
        return ids, [-100] * min(p, n) + ids[min(p, n) :]

    if a.impl.startswith("ref"):
        order = list(range(len(pairs)))
        rng.shuffle(order)
        for s in range(0, len(order), a.batch):
            ex = [sample(i) for i in order[s : s + a.batch]]
            b = pad_batch(ex, pad_id=0)
            yield {k: v.to(device) for k, v in b.items()}, int(b["attention_mask"].sum()), b["input_ids"].numel()
    att = "flex" if a.attn == "flex" else "mask"
    # Pack a window of samples at a time (as a streaming loader would), rows shuffled inside the window.
    order = list(range(len(pairs)))
    rng.shuffle(order)
    window = 4000
    for s in range(0, len(order), window):
        rows = pack([sample(i) for i in order[s : s + window]], a.seq, overlong="truncate")
        rng.shuffle(rows)
        for r in range(0, len(rows) - a.batch + 1, a.batch):
            b = collate(rows[r : r + a.batch], pad_id=0, attention=att, pad_to=a.seq)
            real = sum(len(x) for x in rows[r : r + a.batch])
            yield attention_inputs(b, device, attention=att), real, b["input_ids"].numel()


def run_one(a) -> dict:
    import torch

    from chatforge.training.losses import trained_token_loss
    from chatforge.training.speedups import SpeedConfig, apply_speedups, make_optimizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, cfg, n_params = _build(a, device)
    applied = []
    if a.impl == "ours":
        speed = SpeedConfig(liger=False, compile_layers=a.compile, checkpoint_ratio=a.ckpt_ratio)
        applied = apply_speedups(model, speed) + (["liger"] if a.liger else [])
    else:
        speed = SpeedConfig()
    opt = make_optimizer(model, speed, lr=1e-4)
    model.train()
    data = _batches(a, cfg, device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, tokens, slots = [], [], []
    t_start = time.perf_counter()
    for _ in range(a.steps):
        batch, real, slot = next(data)
        slots.append(slot)
        sync()
        t = time.perf_counter()
        if a.impl == "ours":
            loss_sum, n, _ = trained_token_loss(model, batch, chunk_size=a.chunk)
            (loss_sum / n).backward()
        else:
            model(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        times.append(time.perf_counter() - t)
        tokens.append(real)
    if a.profile and device == "cuda":  # where the time goes: top kernels over two more steps, to stderr
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(2):
                batch, _, _ = next(data)
                loss_sum, n, _ = trained_token_loss(model, batch, chunk_size=a.chunk)
                (loss_sum / n).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            sync()
        print(
            prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=90),
            file=sys.stderr,
        )
    warm = a.warmup
    if a.lengths:  # variable work per step: total real tokens over total time
        tok_s = sum(tokens[warm:]) / sum(times[warm:])
        step_s = sum(times[warm:]) / len(times[warm:])
    else:  # the reference's measure: median step
        step_s = sorted(times[warm:])[len(times[warm:]) // 2]
        tok_s = a.batch * a.seq / step_s
    fpt = (6 if a.mode == "full" else 4) * n_params + 6 * cfg.num_hidden_layers * cfg.hidden_size * a.seq
    return dict(
        impl=a.impl,
        shape=a.shape,
        mode=a.mode,
        batch=a.batch,
        seq=a.seq,
        attn=a.attn,
        applied=applied,
        grad_ckpt=a.grad_ckpt,
        liger=a.liger or a.impl == "ref_liger",
        step_s=round(step_s, 4),
        tok_s=round(tok_s),
        mfu=None if a.lengths else round(tok_s * fpt / PEAK_FLOPS, 3),
        peak_GiB=round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
        first_step_s=round(times[0], 1),
        total_s=round(time.perf_counter() - t_start, 1),
        real_frac=round(sum(tokens[warm:]) / sum(slots[warm:]), 3),
    )


# ----------------------------------------------------------------------------------------------- memory of the loss
def loss_memory(vocabs=(32000, 152064), tokens=16384, hidden=4096) -> list[dict]:
    """Peak extra GPU memory and time of loss+backward over [tokens x hidden] bf16 states: HF-style full logits vs ours."""
    import torch
    import torch.nn.functional as F

    from chatforge.training.losses import chunked_cross_entropy

    out = []
    for vocab in vocabs:
        for trained_head in (False, True):
            for name in ("full_logits", "chunked_fused"):
                torch.cuda.empty_cache()
                head = torch.nn.Linear(hidden, vocab, bias=False, device="cuda", dtype=torch.bfloat16)
                head.weight.requires_grad_(trained_head)
                h = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                y = torch.randint(0, vocab, (tokens,), device="cuda")
                for _rep in range(3):
                    h.grad = None
                    head.weight.grad = None
                    torch.cuda.synchronize()
                    base = torch.cuda.memory_allocated()
                    torch.cuda.reset_peak_memory_stats()
                    t = time.perf_counter()
                    if name == "full_logits":  # what transformers' ForCausalLMLoss does: bf16 logits, upcast, CE
                        loss = F.cross_entropy(head(h).float(), y, reduction="sum")
                    else:
                        loss, _ = chunked_cross_entropy(h, head, y, chunk_size=4096)
                    loss.backward()
                    torch.cuda.synchronize()
                    dt = time.perf_counter() - t
                peak = (torch.cuda.max_memory_allocated() - base) / 2**30
                out.append(
                    dict(
                        vocab=vocab,
                        head_trained=trained_head,
                        loss=name,
                        tokens=tokens,
                        peak_extra_GiB=round(peak, 2),
                        ms=round(dt * 1e3, 1),
                    )
                )
                del head, h, y, loss
    return out


# ----------------------------------------------------------------------------------------------- suites
def suites(peer: str, lengths: str | None) -> dict[str, list[tuple[str, list[str]]]]:
    """(label, argv) per setting. 'peer' runs the reference script itself; 'ours'/'ref' run this file's step."""
    me = [sys.executable, __file__, "--one"]
    ref = [sys.executable, peer]
    L7 = ["--shape", "llama2-7b", "--mode", "lora", "--seq", "2048"]
    S = ["--shape", "smollm2-135m", "--mode", "full", "--seq", "2048"]
    al = ["--lengths", lengths or ".bench_peer/alpaca_lengths.json"]
    return {
        "7b": [
            ("peer plain ckpt bs4", ref + L7 + ["--batch", "4", "--grad-ckpt"]),
            ("peer liger ckpt bs4", ref + L7 + ["--batch", "4", "--grad-ckpt", "--liger"]),
            ("ours compile ckpt1.0 bs4", me + L7 + ["--batch", "4", "--compile", "--ckpt-ratio", "1.0"]),
            ("ours compile ckpt0.875 bs2", me + L7 + ["--batch", "2", "--compile", "--ckpt-ratio", "0.875"]),
            ("peer liger bs2", ref + L7 + ["--batch", "2", "--liger"]),
            ("ours compile bs2", me + L7 + ["--batch", "2", "--compile"]),
            ("ours compile bs4", me + L7 + ["--batch", "4", "--compile"]),
        ],
        "135m": [
            ("peer liger bs32", ref + S + ["--batch", "32", "--liger"]),
            ("ours compile bs32", me + S + ["--batch", "32", "--compile"]),
            ("ours compile bs48", me + S + ["--batch", "48", "--compile"]),
            ("ours liger bs32", me + S + ["--batch", "32", "--liger"]),
            ("ours compile ckpt0.5 bs64", me + S + ["--batch", "64", "--compile", "--ckpt-ratio", "0.5"]),
        ],
        "alpaca": [
            (
                "ref plain padded bs8 ckpt",
                me + L7 + ["--impl", "ref", "--batch", "8", "--grad-ckpt", "--steps", "30"] + al,
            ),
            (
                "ref liger padded bs8 ckpt",
                me + L7 + ["--impl", "ref_liger", "--batch", "8", "--grad-ckpt", "--steps", "30"] + al,
            ),
            (
                "ours packed flex compile ckpt1.0 bs4",
                me + L7 + ["--batch", "4", "--attn", "flex", "--compile", "--ckpt-ratio", "1.0", "--steps", "14"] + al,
            ),
        ],
        "smoke": [
            ("ours tiny", me + ["--shape", "tiny", "--mode", "lora", "--batch", "2", "--seq", "128", "--steps", "4"]),
            (
                "ours tiny packed",
                me + ["--shape", "tiny", "--mode", "lora", "--batch", "2", "--seq", "256", "--steps", "4"] + al,
            ),
            (
                "ref tiny padded",
                me
                + [
                    "--shape",
                    "tiny",
                    "--mode",
                    "lora",
                    "--impl",
                    "ref",
                    "--batch",
                    "4",
                    "--seq",
                    "256",
                    "--steps",
                    "4",
                    "--grad-ckpt",
                ]
                + al,
            ),
            (
                "ours tiny full ckpt",
                me
                + [
                    "--shape",
                    "tiny",
                    "--mode",
                    "full",
                    "--batch",
                    "2",
                    "--seq",
                    "128",
                    "--steps",
                    "4",
                    "--ckpt-ratio",
                    "0.5",
                ],
            ),
        ],
    }


def orchestrate(args) -> int:
    out = Path(args.out or os.environ.get("OUT") or "bench_out")
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"), env.get("PYTHONPATH", "")])
    table = suites(args.peer, args.lengths)
    results = []
    with open(out / "results.jsonl", "a") as res, open(out / "log.txt", "a") as log:
        for suite in args.suite.split(","):
            if suite == "memory":
                import torch

                if torch.cuda.is_available():
                    for r in loss_memory():
                        print(json.dumps(r), flush=True)
                        res.write(json.dumps(dict(suite="memory", **r)) + "\n")
                continue
            for label, argv in table[suite]:
                if args.only and not any(o in label for o in args.only.split(",")):
                    continue
                t = time.time()
                try:
                    p = subprocess.run(argv, capture_output=True, text=True, timeout=args.timeout, env=env)
                    text, rc = p.stdout + p.stderr, p.returncode
                except subprocess.TimeoutExpired as e:
                    text, rc = f"{e.stdout or ''}{e.stderr or ''}\nTIMEOUT after {args.timeout}s", 124
                log.write(f"==== {suite} | {label} | rc={rc} | {time.time() - t:.0f}s\n{text}\n")
                log.flush()
                line = next(
                    (s for s in reversed((p.stdout if rc == 0 else "").splitlines()) if s.startswith("{")), None
                )
                r = dict(suite=suite, label=label, rc=rc, wall_s=round(time.time() - t))
                if line:
                    r.update(json.loads(line))
                else:
                    r["error"] = [s for s in text.strip().splitlines() if s.strip()][-1:] or ["no output"]
                results.append(r)
                res.write(json.dumps(r) + "\n")
                res.flush()
                print(json.dumps(r), flush=True)
    print(f"\n{'suite':7} {'setting':40} {'tok/s':>9} {'MFU':>6} {'peak GiB':>9} {'real':>5}  note")
    for r in results:
        note = (
            "; ".join(r.get("applied", []) or []) if "error" not in r else f"FAILED rc={r['rc']}: {r['error'][0][:90]}"
        )
        print(
            f"{r['suite']:7} {r['label']:40} {r.get('tok_s', ''):>9} {r.get('mfu') or '':>6} "
            f"{r.get('peak_GiB') or '':>9} {r.get('real_frac', ''):>5}  {note}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--one", action="store_true", help="run one setting in this process and print one JSON line")
    ap.add_argument("--suite", default="7b", help="comma list of: 7b, 135m, alpaca, memory, smoke")
    ap.add_argument("--only", default="", help="comma list of substrings: run only settings whose label has one")
    ap.add_argument("--peer", default=".bench_peer/hf_peft_baseline.py")
    ap.add_argument("--lengths", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--timeout", type=int, default=240)
    ap.add_argument("--impl", default="ours", choices=["ours", "ref", "ref_liger"])
    ap.add_argument("--shape", default="llama2-7b", choices=SHAPES)
    ap.add_argument("--mode", default="lora", choices=["lora", "full"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "flex"])
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--ckpt-ratio", type=float, default=0.0)
    ap.add_argument("--grad-ckpt", action="store_true", help="reference only: HF gradient checkpointing")
    ap.add_argument("--liger", action="store_true")
    ap.add_argument("--chunk", type=int, default=4096)
    ap.add_argument("--profile", action="store_true", help="ours: print the top CUDA kernels of two extra steps")
    a = ap.parse_args(argv)
    if not a.one:
        return orchestrate(a)
    if a.attn == "flex" and not a.lengths:
        a.attn = "sdpa"  # full-length rows: one document per row, plain causal SDPA (flash) is the fast path
    print(json.dumps(run_one(a)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
