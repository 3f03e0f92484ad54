"""Reward model and KTO on LLaMA-Factory's demo files, through the real `chatforge` CLI (one GPU or CPU).

    python bench/rm_kto.py --data ../shared/data/llamafactory_demo --model smollm2-135m-instruct --out runs/rm_kto

1. rm: dpo_en_demo.json split (seeded) into train / held-out pairs; `chatforge train` stage rm (LoRA), then
   `chatforge eval` task reward on the held-out pairs: pair accuracy (95% interval) and mean margin (chance: 50%).
2. kto: kto_en_demo.json with `data.val_size`; `chatforge train` stage kto (LoRA); the held-out val metrics (loss,
   accuracy, margin, kl) at the first and the last evaluation.

Writes OUT/results.json and OUT/results.md (a table for the README). Needs only chatforge's own dependencies.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path


def chatforge(*args: str) -> float:
    """Run one `chatforge` command (this interpreter); returns its wall time in seconds."""
    t = time.perf_counter()
    cmd = [sys.executable, "-c", "import sys; from chatforge.cli import main; sys.exit(main())", *args]
    print("+ chatforge " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t


def split_pairs(src: Path, out: Path, held_out: int, seed: int) -> Path:
    """dpo_en_demo.json -> OUT/data/{rm_train,rm_heldout}.json + a dataset_info.json registering both."""
    records = json.loads(src.read_text())
    random.Random(seed).shuffle(records)
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "rm_heldout.json").write_text(json.dumps(records[:held_out], ensure_ascii=False))
    (data / "rm_train.json").write_text(json.dumps(records[held_out:], ensure_ascii=False))
    spec = {
        "ranking": True,
        "formatting": "sharegpt",
        "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"},
    }
    info = {"rm_train": {"file_name": "rm_train.json", **spec}, "rm_heldout": {"file_name": "rm_heldout.json", **spec}}
    (data / "dataset_info.json").write_text(json.dumps(info, indent=2))
    return data / "dataset_info.json"


def evals(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "eval"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path, help="LLaMA-Factory's data folder (dpo_en_demo.json, ...)")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--template", default=None, help="template.name for train and eval (default: the model's)")
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--held-out", type=int, default=200, help="pairs held out for the reward eval")
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--max-steps", type=int, default=None, help="cap both runs (smoke tests)")
    ap.add_argument("--max-samples", type=int, default=None, help="records read per file (smoke tests)")
    ap.add_argument("--extra", nargs="*", default=[], help="more key=value overrides for both training runs")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    common = [
        f"model.name_or_path={args.model}",
        f"model.device={args.device}",
        f"data.max_length={args.max_length}",
        "peft.finetuning=lora",
        "peft.r=16",
        "peft.alpha=32",
        "peft.target_modules=[all-linear]",
        f"train.epochs={args.epochs}",
        "train.scheduler=cosine",
        "train.warmup_ratio=0.05",
        "train.log_every=10",
        "train.progress=false",
        "output.overwrite=true",
    ]
    tmpl = [f"template.name={args.template}"] if args.template else []
    common += tmpl
    if args.max_steps:
        common.append(f"train.max_steps={args.max_steps}")
    if args.max_samples:
        common.append(f"data.max_samples={args.max_samples}")
    common += args.extra
    results: dict = {"model": args.model, "max_length": args.max_length}

    info = split_pairs(args.data / "dpo_en_demo.json", out, args.held_out, seed=0)
    rm_run = out / "rm"
    t_rm = chatforge(
        "train",
        "train.stage=rm",
        "data.train=[rm_train]",
        "data.val=[rm_heldout]",
        f"data.dataset_info={info}",
        "train.batch_size=4",
        "train.grad_accum=4",
        "train.learning_rate=1e-4",
        "train.eval_every=0",
        f"output.dir={rm_run}",
        *common,
    )
    t_eval = chatforge(
        "eval",
        "eval.tasks=[reward]",
        "eval.max_samples=null",
        f"model.name_or_path={args.model}",
        f"model.adapter={rm_run}",
        f"model.device={args.device}",
        "data.val=[rm_heldout]",
        f"data.dataset_info={info}",
        f"data.max_length={args.max_length}",
        f"output.dir={out / 'rm_eval'}",
        "output.overwrite=true",
        *tmpl,
        *([f"data.max_samples={args.max_samples}"] if args.max_samples else []),
    )
    report = json.loads((out / "rm_eval" / "report.json").read_text())
    results["rm"] = {
        "train_s": round(t_rm, 1),
        "eval_s": round(t_eval, 1),
        "summary": json.loads((rm_run / "summary.json").read_text()),
        "heldout": report["tasks"]["reward"]["metrics"],
        "heldout_pairs": report["tasks"]["reward"]["details"]["pairs"],
    }

    kto_run = out / "kto"
    lf_info = args.data / "dataset_info.json"
    t_kto = chatforge(
        "train",
        "train.stage=kto",
        "data.train=[kto_en_demo]",
        f"data.dataset_info={lf_info}",
        f"data.dataset_dir={args.data}",
        "data.val_size=0.15",
        "train.batch_size=8",
        "train.grad_accum=2",
        "train.learning_rate=5e-5",
        "kto.beta=0.1",
        "train.eval_every=10",
        f"output.dir={kto_run}",
        *common,
    )
    ev = evals(kto_run)
    results["kto"] = {
        "train_s": round(t_kto, 1),
        "first_eval": ev[0] if ev else None,
        "last_eval": ev[-1] if ev else None,
        "summary": json.loads((kto_run / "summary.json").read_text()),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))

    m = results["rm"]["heldout"]
    lines = [
        "| stage | data (held out) | metric | result | train time |",
        "|---|---|---|---|---|",
        f"| rm (LoRA) | dpo_en_demo, {results['rm']['heldout_pairs']} held-out pairs | pair accuracy (95% CI); mean margin "
        f"(95% CI) | {m['pair_accuracy']:.1%} ({m['pair_accuracy_ci95_low']:.1%}-{m['pair_accuracy_ci95_high']:.1%}); "
        f"{m['mean_margin']:.2f} ({m['mean_margin_ci95_low']:.2f}..{m['mean_margin_ci95_high']:.2f}) | {t_rm:.0f} s |",
    ]
    if ev:
        f0, f1 = ev[0], ev[-1]
        lines.append(
            f"| kto (LoRA) | kto_en_demo, {f1['val_count']} held-out examples | val loss; reward-sign accuracy; "
            f"margin (step {f0['step']} -> {f1['step']}) | {f0['val_loss']:.3f} -> {f1['val_loss']:.3f}; "
            f"{f0['val_accuracy']:.1%} -> {f1['val_accuracy']:.1%}; {f0['val_margin']:.3f} -> {f1['val_margin']:.3f} "
            f"| {t_kto:.0f} s |"
        )
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
