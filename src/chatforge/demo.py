"""`chatforge demo` (what `make demo` runs): grounded question answering on the embedded SmolLM2-135M-Instruct.

1. generate fictional grounded-QA data (train: varied phrasings, distractors; test: held-out phrasings, every
   question with a distractor entity);
2. evaluate the base model on the held-out questions (batched greedy generation);
3. fine-tune it with LoRA through the normal `chatforge train` path (the run's YAML is written beside the outputs and
   can be re-run with `chatforge train OUTPUT/train.yaml`);
4. evaluate again and print a before/after table, then the command to chat with the result.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

from chatforge.data.convert.common import write_jsonl
from chatforge.data.demo_qa import REFUSALS, SYSTEM_PROMPT, build_demo_sets

EMBEDDED = "smollm2-135m-instruct"


def _refusal_patterns() -> list[str]:
    import re

    return [re.escape(r.rstrip(".").lower()) for r in REFUSALS]


def evaluate_qa(engine, examples, max_new_tokens: int, batch_size: int) -> tuple[dict, list[dict]]:
    """Answer accuracy, refusal accuracy and false-refusal rate on the held-out questions."""
    from chatforge.evaluation.metrics import grounded_qa_scores
    from chatforge.serving.engine import SamplingParams

    convs = [ex.conversation() for ex in examples]
    t0 = time.perf_counter()
    completions = engine.generate(convs, SamplingParams(max_new_tokens=max_new_tokens), batch_size=batch_size)
    seconds = time.perf_counter() - t0
    predictions = [c.text for c in completions]
    references = [[ex.answer] if ex.answer else [] for ex in examples]
    scores = grounded_qa_scores(predictions, references, extra_patterns=_refusal_patterns())
    summary = {
        "answer_accuracy": scores["answerable"]["contains"],
        "refusal_accuracy": scores["unanswerable"]["refusal_recall"],
        "false_refusal_rate": scores["answerable"]["false_refusal_rate"],
        "exact_match": scores["answerable"]["exact_match"],
        "n_answerable": scores["n_answerable"],
        "n_unanswerable": scores["n_unanswerable"],
        "generation_s": round(seconds, 1),
        "generated_tokens": sum(c.completion_tokens for c in completions),
    }
    rows = [
        {"question": ex.question, "context": ex.context, "answer": ex.answer, "prediction": p, **verdict}
        for ex, p, verdict in zip(examples, predictions, scores["per_example"])
    ]
    return summary, rows


def train_config(output: Path, data_dir: Path, model: str, args) -> dict:
    return {
        "model": {"name_or_path": model, "device": "cpu"},  # the measured CPU demo, also where a GPU is present
        "data": {"train": [str(data_dir / "train.jsonl")], "val_size": 0.05, "max_length": 512, "seed": args.seed},
        "template": {"name": args.template, "mask": "all_assistant"},
        "peft": {"finetuning": "lora", "r": 16, "alpha": 32, "dropout": 0.05, "target_modules": ["all-linear"]},
        "train": {
            "stage": "sft",
            "max_steps": args.steps,
            "batch_size": args.batch_size,
            "learning_rate": args.lr,
            "scheduler": "cosine",
            "warmup_ratio": 0.1,
            "batching": "packed" if args.packed else "length_grouped",
            "seed": args.seed,
            "eval_every": 0,
            "save_every": 0,
            "tensorboard": False,
        },
        "output": {"dir": str(output / "adapter"), "overwrite": True},
    }


def _table(before: dict, after: dict) -> str:
    lines = [
        "| metric (held-out, new phrasings + distractors) | base | fine-tuned |",
        "|---|---|---|",
    ]
    for key, label in [
        ("answer_accuracy", f"answer accuracy on answerable (n={before['n_answerable']})"),
        ("refusal_accuracy", f"refusal accuracy on unanswerable (n={before['n_unanswerable']})"),
        ("false_refusal_rate", "false-refusal rate on answerable (lower is better)"),
    ]:
        lines.append(f"| {label} | {before[key]:.1%} | {after[key]:.1%} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="chatforge demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=EMBEDDED, help="model to fine-tune (default: the embedded SmolLM2)")
    ap.add_argument("--template", default="smollm2")
    ap.add_argument("--output", default="runs/demo")
    ap.add_argument("--train", type=int, default=640, help="training conversations")
    ap.add_argument("--test", type=int, default=120, help="held-out questions (>= 100 for the real demo)")
    ap.add_argument("--steps", type=int, default=80, help="LoRA optimizer steps")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--packed", action="store_true", help="pack several conversations per row")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from chatforge.serving.engine import Engine
    from chatforge.training.config import load_train_config
    from chatforge.training.recipes import train

    t_start = time.perf_counter()
    out = Path(args.output)
    data_dir = out / "data"
    train_convs, test_examples = build_demo_sets(args.train, args.test, args.seed)
    write_jsonl(data_dir / "train.jsonl", train_convs)
    write_jsonl(data_dir / "test.jsonl", [ex.conversation() for ex in test_examples])
    print(
        f"[1/4] data: {len(train_convs)} training conversations, {len(test_examples)} held-out questions -> {data_dir}"
    )

    base = Engine.load(args.model, template=args.template)
    before, before_rows = evaluate_qa(base, test_examples, args.max_new_tokens, batch_size=16)
    print(f"[2/4] base model: {json.dumps(before)}")
    del base

    cfg_path = out / "train.yaml"
    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(
        f"# chatforge train {cfg_path}\n"
        + yaml.safe_dump(train_config(out, data_dir, args.model, args), sort_keys=False)
    )
    print(f"[3/4] LoRA fine-tuning ({args.steps} steps of {args.batch_size}); config: {cfg_path}")
    result = train(load_train_config(cfg_path))

    tuned = Engine.load(args.model, adapter=str(result.output_dir), template=args.template)
    after, after_rows = evaluate_qa(tuned, test_examples, args.max_new_tokens, batch_size=16)
    print(f"[4/4] fine-tuned model: {json.dumps(after)}")

    total = time.perf_counter() - t_start
    table = _table(before, after)
    report = {
        "before": before,
        "after": after,
        "train_summary": result.summary,
        "total_time_s": round(total, 1),
        "examples": {"before": before_rows, "after": after_rows},
    }
    (out / "results.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    (out / "results.md").write_text(table + "\n")
    print()
    print(table)
    steps = result.summary.get("steps")
    step_s = result.summary.get("step_time_s")
    pad = result.summary.get("padding_fraction")
    print(f"\n{steps} LoRA steps at {step_s} s/step, padding {pad:.1%}; whole demo {total / 60:.1f} min.")
    print("\nChat with the fine-tuned model:")
    print(f'  .venv/bin/chatforge chat --model {args.model} --adapter {result.output_dir} --system "{SYSTEM_PROMPT}"')
    return 0
