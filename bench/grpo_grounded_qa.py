"""GRPO after SFT on the demo's grounded-QA task through the real CLI: answer accuracy, refusal accuracy and the
false-refusal rate on the held-out questions for the base model, the SFT adapter and SFT + GRPO.

    python3 bench/grpo_grounded_qa.py --model PATH/smollm2-135m-instruct --out $OUT/grpo_qa
    python3 bench/grpo_grounded_qa.py --model runs/tiny --template chatml --sft-steps 2 --grpo-steps 2 \
        --max-new-tokens 8 --out /tmp/grpo_qa_smoke      (CPU smoke test)

Steps, each a `chatforge` subprocess: `data demo` (600 training conversations, 120 held-out all-hard questions),
`train` stage sft (LoRA, as `chatforge demo` does), `train` stage grpo continuing that adapter (`model.adapter`;
reward: the built-in `grounded_qa`, a refusal exactly when the question is unanswerable, else a reply containing
the answer; beta = 0, since the adapter-disabled reference would be the base model, not the SFT policy), and
`eval` task grounded_qa on the held-out questions for the base, SFT and GRPO models. `--data` is accepted for a
uniform command line and not needed (the data are generated). Writes `result.json` in --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
REFUSAL_EXTRA = ["that information is not in the context"]  # the one demo wording is_refusal misses (a regex)


def chatforge(*args: str) -> float:
    t = time.perf_counter()
    cmd = [sys.executable, "-m", "chatforge.cli", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    return time.perf_counter() - t


def qa_eval(args, out: Path, data: Path, adapter: Path | None) -> dict:
    cfg = {
        "model": {"name_or_path": args.model, "adapter": str(adapter) if adapter else None},
        "data": {"val": [str(data / "test.jsonl")], "max_length": 1024},
        "eval": {
            "tasks": ["grounded_qa"],
            "max_new_tokens": args.eval_new_tokens,
            "batch_size": 32,
            "refusal_patterns": REFUSAL_EXTRA,
        },
        "output": {"dir": str(out), "overwrite": True},
    }
    if args.template:
        cfg["template"] = {"name": args.template}
    if adapter:
        cfg["template"] = {"use_model_jinja": True}  # the run folder's tokenizer carries the training template
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    seconds = chatforge("eval", str(path))
    report = json.loads((out / "report.json").read_text())
    return {"seconds": round(seconds, 1), **report["tasks"]["grounded_qa"]["metrics"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="unused (the demo data are generated)")
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--template", default=None, help="template.name (e.g. chatml for a tiny test model)")
    ap.add_argument("--sft-steps", type=int, default=150)
    ap.add_argument("--grpo-steps", type=int, default=40)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--eval-new-tokens", type=int, default=48)
    ap.add_argument("--lr", type=float, default=2e-5, help="GRPO learning rate (LoRA, continuing the SFT adapter)")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    data = out / "data"
    out.mkdir(parents=True, exist_ok=True)
    chatforge("data", "demo", "--output", str(data))
    tmpl = [f"template.name={args.template}"] if args.template else []
    sft, grpo = out / "sft", out / "grpo"
    result: dict = {"model": args.model, "sft_steps": args.sft_steps, "grpo_steps": args.grpo_steps}
    result["sft_seconds"] = round(
        chatforge(
            "train",
            f"model.name_or_path={args.model}",
            f"data.train=[{data / 'train.jsonl'}]",
            "data.max_length=512",
            "template.mask=all_assistant",
            "train.stage=sft",
            f"train.max_steps={args.sft_steps}",
            "train.batch_size=16",
            "train.learning_rate=2e-4",
            "train.warmup_ratio=0.1",
            "train.progress=false",
            f"output.dir={sft}",
            *tmpl,
        ),
        1,
    )
    result["grpo_seconds"] = round(
        chatforge(
            "train",
            f"model.name_or_path={args.model}",
            f"model.adapter={sft}",
            f"data.train=[{data / 'train.jsonl'}]",
            "data.max_length=512",
            "train.stage=grpo",
            "grpo.rewards=[grounded_qa]",
            f"grpo.refusal_patterns=[{','.join(REFUSAL_EXTRA)}]",
            "grpo.num_generations=8",
            f"grpo.max_new_tokens={args.max_new_tokens}",
            "grpo.beta=0",
            f"train.max_steps={args.grpo_steps}",
            "train.batch_size=16",
            f"train.learning_rate={args.lr}",
            "train.scheduler=constant",
            "train.batching=random",
            "train.progress=false",
            f"output.dir={grpo}",
            *tmpl,
        ),
        1,
    )
    rows = [json.loads(line) for line in (grpo / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["kind"] == "train"]
    k = min(10, max(1, len(rows) // 2))
    result[f"train_reward_first{k}"] = round(sum(r["reward"] for r in rows[:k]) / k, 4)
    result[f"train_reward_last{k}"] = round(sum(r["reward"] for r in rows[-k:]) / k, 4)
    result["grpo_median_step_s"] = round(statistics.median(r["step_time"] for r in rows), 3)
    result["grpo_peak_gpu_memory_gib"] = json.loads((grpo / "summary.json").read_text()).get("peak_gpu_memory_gib")
    for name, adapter in (("base", None), ("sft", sft), ("sft_grpo", grpo)):
        result[name] = qa_eval(args, out / f"eval_{name}", data, adapter)
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
