"""Reward model and KTO on LLaMA-Factory's demo files, through the real `chatforge` CLI (one GPU or CPU).

    python bench/rm_kto.py --data ../shared/data/llamafactory_demo --model smollm2-135m-instruct --out runs/rm_kto

1. rm: dpo_en_demo.json split (seeded) into train / held-out pairs; `chatforge train` stage rm (LoRA), then
   `chatforge eval` task reward on the held-out pairs: pair accuracy (95% interval) and mean margin (chance: 50%).
2. kto: kto_en_demo.json with `data.val_size`; `chatforge train` stage kto (LoRA); the held-out val metrics (loss,
   accuracy, margin, kl) at the first and the last evaluation.
3. dpo: one LoRA `chatforge train` stage dpo run per `--dpo-losses` entry (sigmoid, ipo, hinge, orpo, simpo) on rm's
   train split with rm's held-out pairs as `data.val`; the run's own final validation gives held-out pair accuracy
   (share of pairs with chosen reward > rejected, Wilson 95% interval) and mean reward margin. Rewards are beta times
   the policy-reference log-ratio for sigmoid/ipo/hinge and beta times the mean reply log-prob for orpo/simpo, so
   margins compare within a loss, not across losses. `--parallel N` runs N of them at once (one GPU is enough for
   the 135M model); their times are then wall times under sharing.

Writes OUT/results.json and OUT/results.md (a table for the README). Needs only chatforge's own dependencies.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# Per-loss defaults (beta and, for simpo, gamma): LLaMA-Factory's pref_beta 0.1 for the reference-based losses and
# ORPO; SimPO's paper range (beta 2.0, gamma 0.5) since its reward is a per-token mean, not a summed log-ratio.
DPO_DEFAULTS: dict[str, list[str]] = {
    "sigmoid": ["dpo.beta=0.1"],
    "ipo": ["dpo.beta=0.1"],
    "hinge": ["dpo.beta=0.1"],
    "orpo": ["dpo.beta=0.1"],
    "simpo": ["dpo.beta=2.0", "dpo.simpo_gamma=0.5"],
}


def chatforge(*args: str, log: Path | None = None) -> float:
    """Run one `chatforge` command (this interpreter); returns its wall time in seconds.
    With `log`, its output goes to that file (concurrent runs would interleave on the terminal)."""
    t = time.perf_counter()
    cmd = [sys.executable, "-c", "import sys; from chatforge.cli import main; sys.exit(main())", *args]
    print("+ chatforge " + " ".join(args) + (f"  > {log}" if log else ""), flush=True)
    if log is None:
        subprocess.run(cmd, check=True)
    else:
        with log.open("w") as fh:
            proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
        if proc.returncode:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            raise SystemExit(f"chatforge {args[0]} failed (exit {proc.returncode}); last lines of {log}:\n{tail}")
    return time.perf_counter() - t


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson interval of a proportion p observed on n trials."""
    if n <= 0:
        return (float("nan"), float("nan"))
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def parse_losses(text: str) -> list[str]:
    losses = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in losses if x not in DPO_DEFAULTS]
    if bad:
        raise SystemExit(f"--dpo-losses: unknown {', '.join(bad)}; choose from {', '.join(DPO_DEFAULTS)}")
    return losses


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
    ap.add_argument("--extra", nargs="*", default=[], help="more key=value overrides for every training run")
    ap.add_argument(
        "--dpo-losses",
        default="sigmoid,ipo,hinge,orpo,simpo",
        help="comma-separated dpo.loss values, one LoRA DPO run each (empty: skip the dpo runs)",
    )
    ap.add_argument("--dpo-lr", type=float, default=5e-5, help="learning rate of the dpo runs")
    ap.add_argument("--parallel", type=int, default=1, help="dpo runs at once (concurrent subprocesses)")
    args = ap.parse_args(argv)
    losses = parse_losses(args.dpo_losses)
    if args.parallel < 1:
        raise SystemExit("--parallel: must be >= 1")
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

    def dpo_run(loss: str) -> dict:
        run = out / f"dpo_{loss}"
        t = chatforge(
            "train",
            "train.stage=dpo",
            f"dpo.loss={loss}",
            *DPO_DEFAULTS[loss],
            "data.train=[rm_train]",
            "data.val=[rm_heldout]",
            f"data.dataset_info={info}",
            "train.batch_size=4",
            "train.grad_accum=4",
            f"train.learning_rate={args.dpo_lr}",
            "train.eval_every=0",
            f"output.dir={run}",
            *common,
            log=out / f"dpo_{loss}.log" if args.parallel > 1 else None,
        )
        ev = evals(run)
        last = ev[-1] if ev else {}
        summary = json.loads((run / "summary.json").read_text())
        n = int(last.get("val_count", 0))
        lo, hi = wilson(last["val_accuracy"], n) if last else (None, None)
        return {
            "loss": loss,
            "overrides": DPO_DEFAULTS[loss],
            "train_s": round(t, 1),
            "steps": summary.get("steps"),
            "heldout_pairs": n,
            "pair_accuracy": last.get("val_accuracy"),
            "pair_accuracy_ci95": [lo, hi],
            "mean_margin": last.get("val_margin"),
            "rewards_chosen": last.get("val_rewards/chosen"),
            "rewards_rejected": last.get("val_rewards/rejected"),
            "val_loss": last.get("val_loss"),
            "evals": ev,
            "summary": summary,
        }

    if losses:
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            results["dpo"] = list(pool.map(dpo_run, losses))
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
    if results.get("dpo"):
        lines += [
            "",
            "| stage / loss (LoRA) | overrides | held-out pairs | pair accuracy (95% CI) | mean margin | train time "
            "| steps |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in results["dpo"]:
            if r["pair_accuracy"] is None:
                acc, margin = "no validation", "-"
            else:
                lo, hi = r["pair_accuracy_ci95"]
                acc, margin = f"{r['pair_accuracy']:.1%} ({lo:.1%}-{hi:.1%})", f"{r['mean_margin']:.3f}"
            lines.append(
                f"| dpo / {r['loss']} | {', '.join(r['overrides'])} | {r['heldout_pairs']} | {acc} | {margin} "
                f"| {r['train_s']:.0f} s | {r['steps']} |"
            )
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
