"""Measure export formats of the embedded SmolLM2-135M: file size, export time, perplexity on held-out text.

    PYTHONPATH=src OMP_NUM_THREADS=1 python tests/export/measure_export.py --out /tmp/export-measure [--data DIR]

Held-out text: the first SQuAD 2.0 dev paragraphs (../shared/data; Wikipedia prose) up to --tokens tokens, scored in
512-token windows. Top-1 agreement: the share of positions whose argmax equals the float32 / bf16 HF model's. int8/int4 rows need torchao.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from chatforge.export.gguf import write_gguf
from chatforge.export.merge import export_merged
from chatforge.models.loading import resolve_model_path

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def held_out_ids(tok, n_tokens: int, shared: Path) -> torch.Tensor:
    data = json.loads((shared / "squad2" / "dev-v2.0.json").read_text())["data"]
    text = "\n\n".join(p["context"] for article in data for p in article["paragraphs"])[: n_tokens * 8]
    return tok(text, return_tensors="pt").input_ids[:, :n_tokens]


@torch.no_grad()
def score(model, ids: torch.Tensor, window: int = 512) -> tuple[float, torch.Tensor]:
    nll, count, preds = 0.0, 0, []
    for start in range(0, ids.shape[1] - 1, window):
        chunk = ids[:, start : start + window + 1]
        logits = model(chunk[:, :-1]).logits.float()
        nll += torch.nn.functional.cross_entropy(logits[0], chunk[0, 1:], reduction="sum").item()
        count += chunk.shape[1] - 1
        preds.append(logits[0].argmax(-1))
    return math.exp(nll / count), torch.cat(preds)


def size_mb(paths) -> float:
    return sum(p.stat().st_size for p in paths) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--skip-torchao", action="store_true")
    ap.add_argument("--data", type=Path, default=SHARED_DATA, help="the shared data folder (default: ../shared/data)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    base = resolve_model_path("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(base)
    ids = held_out_ids(tok, args.tokens, args.data)
    rows = []

    def add(name, folder_or_file, seconds, load):
        model = load().eval()
        t0 = time.perf_counter()
        ppl, preds = score(model, ids)
        rows.append((name, folder_or_file, seconds, ppl, preds, time.perf_counter() - t0))
        print(f"{name}: ppl {ppl:.3f}", flush=True)

    files = lambda d: [p for p in Path(d).iterdir() if p.suffix == ".safetensors"]  # noqa: E731
    add("HF float32 (the cached base)", files(base), None, lambda: AutoModelForCausalLM.from_pretrained(base))
    t0 = time.perf_counter()
    bf16 = export_merged("smollm2-135m-instruct", None, args.out / "bf16", "bfloat16")
    add(
        "HF bfloat16 (`--dtype bfloat16`)",
        files(bf16),
        time.perf_counter() - t0,
        lambda: AutoModelForCausalLM.from_pretrained(bf16),
    )
    for kind in ("f16", "bf16", "q8_0", "q4_0"):
        t0 = time.perf_counter()
        path = write_gguf(bf16, args.out / f"model-{kind}.gguf", kind)
        add(
            f"GGUF {kind} (`--gguf {kind}`)",
            [path],
            time.perf_counter() - t0,
            lambda path=path: AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name),
        )
    if not args.skip_torchao:
        from chatforge.export.quantize import quantize_folder

        for scheme in ("int8", "int4"):
            target = args.out / scheme
            target.mkdir(exist_ok=True)
            t0 = time.perf_counter()
            quantize_folder(bf16, target, scheme)
            add(
                f"HF {scheme} torchao (`--quantize {scheme}`)",
                files(target),
                time.perf_counter() - t0,
                lambda target=target: AutoModelForCausalLM.from_pretrained(target),
            )
    fp32, bf16_preds = rows[0][4], rows[1][4]
    print(f"\nheld-out text: {ids.shape[1]} tokens of SQuAD 2.0 dev paragraphs\n")
    print("| format | size | export time | perplexity | top-1 same as float32 | top-1 same as bf16 |")
    print("|---|---|---|---|---|---|")
    for name, paths, seconds, ppl, preds, _ in rows:
        vs32 = (preds == fp32).float().mean().item() * 100
        vs16 = (preds == bf16_preds).float().mean().item() * 100
        took = "-" if seconds is None else f"{seconds:.1f} s"
        print(f"| {name} | {size_mb(paths):.0f} MB | {took} | {ppl:.3f} | {vs32:.1f}% | {vs16:.1f}% |")


if __name__ == "__main__":
    main()
