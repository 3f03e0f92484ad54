"""GRPO on GSM8K through the real CLI: GSM8K accuracy before, a short `stage: grpo` LoRA run, accuracy after.

    python3 bench/grpo_gsm8k.py --data ../shared/data --model PATH/smollm2-135m-instruct --out $OUT/grpo_gsm8k
    python3 bench/grpo_gsm8k.py --data ../shared/data --model runs/tiny --template chatml --steps 2 \
        --max-new-tokens 8 --eval-samples 2 --eval-new-tokens 8 --out /tmp/grpo_smoke      (CPU smoke test)

Three subprocesses, each exactly what a user runs: `chatforge eval` (task gsm8k: 5-shot, greedy, exact match on the
final number; `--eval-samples` seeded problems of the test set), `chatforge train examples/train_grpo_gsm8k.yaml`
(train split, `--steps` steps of 16 prompts x 8 completions, rewards number_match + format), `chatforge eval` with
the adapter. It writes `result.json` in --out: the accuracies, the training reward of the first and last ten steps,
median step time and peak GPU memory from the run's summary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def chatforge(*args: str) -> float:
    t = time.perf_counter()
    cmd = [sys.executable, "-m", "chatforge.cli", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    return time.perf_counter() - t


def gsm8k_eval(args, out: Path, adapter: Path | None) -> dict:
    extra = [f"template.name={args.template}"] if args.template else []
    if adapter:
        # The run folder's tokenizer carries the training template (with the example's default system prompt);
        # GSM8K's prompts are plain text, so the evaluation keeps that saved format as it is.
        extra = ["template.use_model_jinja=true"]
    seconds = chatforge(
        "eval",
        str(ROOT / "examples/eval_benchmarks.yaml"),
        f"model.name_or_path={args.model}",
        f"model.adapter={adapter if adapter else 'null'}",
        "eval.tasks=[gsm8k]",
        f"eval.benchmark_dir={args.data}/benchmarks",
        f"eval.max_samples={args.eval_samples}",
        f"eval.gen_max_new_tokens={args.eval_new_tokens}",
        f"output.dir={out}",
        *extra,
    )
    report = json.loads((out / "report.json").read_text())
    return {"seconds": round(seconds, 1), **report["tasks"]["gsm8k"]["metrics"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="the shared data folder (holds benchmarks/gsm8k)")
    ap.add_argument("--model", required=True, help="base model folder or name")
    ap.add_argument("--out", required=True)
    ap.add_argument("--template", default=None, help="template.name override (e.g. chatml for a tiny test model)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--max-new-tokens", type=int, default=200)
    ap.add_argument("--lr", type=float, default=5e-5, help="train.learning_rate (LoRA)")
    ap.add_argument("--eval-samples", type=int, default=250)
    ap.add_argument("--eval-new-tokens", type=int, default=256)
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    train_file = Path(args.data) / "benchmarks/gsm8k/train.jsonl.gz"
    if not train_file.is_file():
        print(f"no {train_file}", file=sys.stderr)
        return 2
    result: dict = {"model": args.model, "steps": args.steps, "max_new_tokens": args.max_new_tokens, "lr": args.lr}
    result["before"] = gsm8k_eval(args, out / "eval_base", None)
    run = out / "grpo"
    extra = [f"template.name={args.template}"] if args.template else []
    result["train_seconds"] = round(
        chatforge(
            "train",
            str(ROOT / "examples/train_grpo_gsm8k.yaml"),
            f"model.name_or_path={args.model}",
            f"data.train=[{train_file.resolve()}]",
            "data.val_size=0",
            f"train.max_steps={args.steps}",
            f"train.save_every={args.steps}",
            f"grpo.max_new_tokens={args.max_new_tokens}",
            f"train.learning_rate={args.lr}",
            "train.warmup_steps=0",
            "train.progress=false",
            "train.precision=auto",  # bf16 on CUDA, fp32 for a CPU smoke run
            f"output.dir={run}",
            *extra,
        ),
        1,
    )
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["kind"] == "train"]
    summary = json.loads((run / "summary.json").read_text())

    def mean(key: str, part: list[dict]) -> float:
        return round(sum(r.get(key, 0.0) for r in part) / max(1, len(part)), 4)

    k = min(10, max(1, len(rows) // 2))
    for key in ("reward", "reward/number_match", "reward/format", "completion_length", "kl", "clip_fraction"):
        result[f"train_{key}_first{k}"] = mean(key, rows[:k])
        result[f"train_{key}_last{k}"] = mean(key, rows[-k:])
    result["median_step_s"] = round(statistics.median(r["step_time"] for r in rows), 3)
    result["peak_gpu_memory_gib"] = summary.get("peak_gpu_memory_gib")
    result["device"] = summary.get("device")
    result["after"] = gsm8k_eval(args, out / "eval_grpo", run)
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
