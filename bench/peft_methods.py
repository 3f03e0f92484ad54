"""Seed 001's PEFT method comparison on the CrossWOZ hotel bot, through the real `chatforge` CLI.

Steps, each a subprocess of `python -m chatforge.cli` so that what is measured is what a user runs:

1. `chatforge data convert crosswoz` on `--data` (val.json.zip + hotel_db.json) -> dialogues.jsonl / rounds.jsonl;
2. a split by dialogue id, 8:1:1 with a fixed seed (train and test never share a dialogue): train = the train
   dialogues (one sample per dialogue, every assistant turn trained), val = the val dialogues, test = the per-round
   samples of the test dialogues;
3. per method: `chatforge train` with the same budget (`--steps` optimizer steps of `--batch-size` dialogues, the same
   max length and seed; each method keeps its usual learning rate), then `chatforge eval` (task `toolcall`: slot
   P/R/F1 on turns that should call `search_hotels`, a text reply there scores 0; BLEU-4 on text turns, a call there
   scores 0; ROUGE-L on text turns is computed here from the eval's predictions file);
4. one JSON line per method (trainable parameters, peak GPU memory, steady tok/s, training time, val loss, the eval
   metrics) in `OUT/results.jsonl` and the table in `OUT/results.md`.

`--parallel K` runs K methods at a time as separate processes (on one GPU they share it: the tok/s and time columns
are then measured under contention, which the table says). The `base` row evaluates the untrained model.

    python bench/peft_methods.py --data ../shared/data/crosswoz --model qwen2.5-coder-0.5b-instruct-q4_k_m.gguf \
        --out runs/bench/peft_methods --parallel 5
    # CPU smoke test: a tiny model, 2 steps, 16 dialogues
    python bench/peft_methods.py --data ../shared/data/crosswoz --model TINY_DIR --template chatml --steps 2 \
        --limit 16 --device cpu --out /tmp/peft_smoke
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

METHODS = ["base", "lora", "qlora", "dora", "adalora", "prefix", "prompt", "p_tuning", "freeze"]
OPTIONAL = ["full"]
# Learning rates each method is usually trained with (short runs); the step budget is the same for all.
LR = {
    "lora": 2e-4,
    "qlora": 2e-4,
    "dora": 2e-4,
    "adalora": 1e-3,
    "prefix": 1e-2,
    "prompt": 3e-2,
    "p_tuning": 1e-2,
    "freeze": 5e-5,
    "full": 2e-5,
}
VIRTUAL = ("prefix", "prompt", "p_tuning")


def method_overrides(method: str, steps: int) -> list[str]:
    """The `peft.*` keys of one row."""
    lora = ["peft.r=16", "peft.alpha=32", "peft.target_modules=[all-linear]"]
    if method == "lora":
        return ["peft.finetuning=lora", *lora]
    if method == "qlora":
        return ["peft.finetuning=qlora", *lora]
    if method == "dora":
        return ["peft.finetuning=lora", "peft.use_dora=true", *lora]
    if method == "adalora":
        # Budget phase in the middle of the run: 10% warm-up, 20% at the final ranks, reallocation every ~5%.
        tinit, tfinal = max(0, steps // 10), max(0, steps // 5)
        if tinit >= steps - tfinal:
            tinit, tfinal = 0, 0
        return [
            "peft.finetuning=adalora",
            "peft.alpha=32",
            "peft.adalora.init_r=12",
            "peft.adalora.target_r=8",
            f"peft.adalora.tinit={tinit}",
            f"peft.adalora.tfinal={tfinal}",
            f"peft.adalora.deltaT={max(1, steps // 20)}",
        ]
    if method == "prefix":  # a prefix on every layer: P-Tuning v2
        return ["peft.finetuning=prefix", "peft.num_virtual_tokens=32"]
    if method == "prompt":
        return ["peft.finetuning=prompt", "peft.num_virtual_tokens=32", "peft.prompt_init_text=你是北京的酒店预订助手"]
    if method == "p_tuning":
        return ["peft.finetuning=p_tuning", "peft.num_virtual_tokens=32", "peft.encoder_hidden_size=512"]
    if method == "freeze":
        return ["peft.finetuning=freeze", "peft.freeze_layers=4"]
    if method == "full":
        return ["peft.finetuning=full"]
    raise SystemExit(f"unknown method {method!r}; choose from {METHODS + OPTIONAL}")


def cli(args: list[str], log: Path, timeout: float) -> tuple[int, float]:
    """Run `chatforge ARGS` (this interpreter), stdout+stderr into `log`; returns (exit code, wall seconds)."""
    t = time.perf_counter()
    with open(log, "w") as fh:
        try:
            rc = subprocess.run(
                [sys.executable, "-m", "chatforge.cli", *args], stdout=fh, stderr=subprocess.STDOUT, timeout=timeout
            ).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    return rc, time.perf_counter() - t


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def prepare_data(data: Path, out: Path, limit: int | None, seed: int) -> dict:
    """Convert CrossWOZ and split it by dialogue (8:1:1); returns the paths and counts."""
    conv = out / "data" / "converted"
    if not (conv / "rounds.jsonl").is_file():
        conv.parent.mkdir(parents=True, exist_ok=True)
        rc, _ = cli(
            [
                "data",
                "convert",
                "crosswoz",
                "--input",
                str(data / "val.json.zip"),
                "--db",
                str(data / "hotel_db.json"),
                "--output",
                str(conv),
            ],  # fmt: skip
            out / "data" / "convert.log",
            600,
        )
        if rc != 0:
            raise SystemExit(f"data convert failed (exit {rc}); see {out / 'data' / 'convert.log'}")
    dialogues = read_jsonl(conv / "dialogues.jsonl")
    rounds = read_jsonl(conv / "rounds.jsonl")
    ids = sorted({d["meta"]["dialogue_id"] for d in dialogues}, key=lambda s: (len(s), s))
    random.Random(seed).shuffle(ids)
    n_val = n_test = max(1, len(ids) // 10)
    test_ids, val_ids = set(ids[:n_test]), set(ids[n_test : n_test + n_val])
    train = [d for d in dialogues if d["meta"]["dialogue_id"] not in test_ids | val_ids]
    val = [d for d in dialogues if d["meta"]["dialogue_id"] in val_ids]
    test = [r for r in rounds if r["meta"]["dialogue_id"] in test_ids]
    if limit:
        train, val, test = train[:limit], val[: max(2, limit // 8)], test[:limit]
    paths = {name: out / "data" / f"{name}.jsonl" for name in ("train", "val", "test")}
    for name, rows in (("train", train), ("val", val), ("test", test)):
        write_jsonl(paths[name], rows)
    return {
        "paths": paths,
        "dialogues": {"train": len(train), "val": len(val), "test": len({r["meta"]["dialogue_id"] for r in test})},
        "test_rounds": len(test),
    }


def rouge_l_of(predictions: Path) -> float | None:
    """Mean ROUGE-L F (character tokens) over the text turns of a toolcall predictions file; a call there scores 0."""
    from chatforge.evaluation.metrics import rouge_l, tokenize

    if not predictions.is_file():
        return None
    scores = []
    for row in read_jsonl(predictions):
        if row.get("kind") != "text":
            continue
        pred = row.get("prediction") or {}
        if pred.get("tool_calls"):
            scores.append(0.0)
        else:
            ref = tokenize((row.get("reference") or {}).get("content") or "", "char")
            scores.append(rouge_l(tokenize(pred.get("content") or "", "char"), ref))
    return sum(scores) / len(scores) if scores else None


def run_method(method: str, args, data: dict) -> dict:
    """Train (unless base) and evaluate one row; returns its result line."""
    root = args.out / "runs" / method
    root.mkdir(parents=True, exist_ok=True)
    common = [f"data.max_length={args.max_length}", f"model.device={args.device}"]
    if args.template:
        common.append(f"template.name={args.template}")
    row: dict = {"method": method, "steps": 0 if method == "base" else args.steps}
    train_dir = root / "train"
    if method != "base":
        lr = args.lr or LR[method]
        rc, wall = cli(
            [
                "train",
                f"model.name_or_path={args.model}",
                f"data.train=[{data['paths']['train']}]",
                f"data.val=[{data['paths']['val']}]",
                *common,
                f"output.dir={train_dir}",
                "output.overwrite=true",
                f"train.max_steps={args.steps}",
                f"train.batch_size={args.batch_size}",
                f"train.grad_accum={args.grad_accum}",
                f"train.learning_rate={lr}",
                "train.warmup_ratio=0.05",
                f"train.seed={args.seed}",
                "train.batching=length_grouped",
                # peft's prefix tuning refuses gradient checkpointing (its key/value prefixes bypass the recompute)
                f"train.gradient_checkpointing={str(args.gradient_checkpointing and method != 'prefix').lower()}",
                "train.progress=false",
                "train.tensorboard=false",
                *method_overrides(method, args.steps),
                *args.train_arg,
            ],
            root / "train.log",
            args.timeout,
        )
        row.update(train_exit=rc, train_wall_s=round(wall, 1), learning_rate=lr)
        summary_path = train_dir / "summary.json"
        if rc != 0 or not summary_path.is_file():
            row["error"] = f"train exit {rc}; see {root / 'train.log'}"
            return row
        s = json.loads(summary_path.read_text())
        row.update(
            trainable_parameters=s.get("trainable_parameters"),
            total_parameters=s.get("total_parameters"),
            peak_gpu_memory_gib=s.get("peak_gpu_memory_gib"),
            steady_tok_per_s=s.get("steady_tok_per_s"),
            train_time_s=s.get("time_s"),
            final_train_loss=s.get("final_train_loss"),
            final_val_loss=s.get("final_val_loss"),
            train_examples=s.get("train_examples"),
            data_notes=s.get("data_notes"),
        )
    if method in ("base",):
        model = [f"model.name_or_path={args.model}"]
    elif (train_dir / "adapter_config.json").is_file():
        model = [f"model.name_or_path={args.model}", f"model.adapter={train_dir}"]
    else:  # full / freeze: the run folder is a whole model
        model = [f"model.name_or_path={train_dir}"]
    eval_dir = root / "eval"
    rc, wall = cli(
        [
            "eval",
            *model,
            f"data.val=[{data['paths']['test']}]",
            *common,
            "eval.tasks=[toolcall]",
            f"eval.max_samples={args.eval_samples}",
            f"eval.max_new_tokens={args.max_new_tokens}",
            f"eval.batch_size={args.eval_batch_size}",
            "eval.zh_tokenize=char",
            "eval.charts=false",
            f"eval.seed={args.seed}",
            f"output.dir={eval_dir}",
            "output.overwrite=true",
        ],
        root / "eval.log",
        args.timeout,
    )
    row.update(eval_exit=rc, eval_wall_s=round(wall, 1))
    report = eval_dir / "report.json"
    if rc != 0 or not report.is_file():
        row["error"] = f"eval exit {rc}; see {root / 'eval.log'}"
        return row
    task = json.loads(report.read_text())["tasks"]["toolcall"]
    row.update({k: task["metrics"].get(k) for k in task["metrics"]})
    row["eval_items"] = task.get("items")
    row["call_turns"] = task.get("details", {}).get("call_turns")
    row["text_rougeL"] = rouge_l_of(eval_dir / "predictions_toolcall.jsonl")
    return row


def _fmt(v, pct: bool = False, digits: int = 2) -> str:
    if v is None:
        return "-"
    if pct:
        return f"{100 * v:.{digits}f}"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def table(rows: list[dict], meta: dict) -> str:
    head = (
        "| method | BLEU-4 | ROUGE-L | slot P | slot R | slot F1 | tool name acc | val loss | trainable params | "
        "peak GPU GiB | tok/s | train s |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        if r.get("error") and "slot_f1" not in r:
            lines.append(f"| {r['method']} | failed: {r['error']} |" + " |" * 10)
            continue
        lines.append(
            "| "
            + " | ".join(
                [
                    r["method"] + (" *" if r.get("caveat") else ""),
                    _fmt(r.get("text_bleu4")),  # chatforge's BLEU-4 is already on the 0-100 scale
                    _fmt(r.get("text_rougeL"), True),
                    _fmt(r.get("slot_precision"), True),
                    _fmt(r.get("slot_recall"), True),
                    _fmt(r.get("slot_f1"), True),
                    _fmt(r.get("tool_name_accuracy"), True),
                    _fmt(r.get("final_val_loss"), digits=3),
                    _fmt(r.get("trainable_parameters")),
                    _fmt(r.get("peak_gpu_memory_gib")),
                    _fmt(r.get("steady_tok_per_s"), digits=0),
                    _fmt(r.get("train_time_s"), digits=1),
                ]
            )
            + " |"
        )
    notes = [
        "",
        f"Model `{meta['model']}`; {meta['dialogues']['train']} train / {meta['dialogues']['val']} val dialogues, "
        f"{meta['test_rounds']} test rounds from {meta['dialogues']['test']} held-out dialogues (split by dialogue); "
        f"{meta['steps']} optimizer steps x {meta['batch_size']} dialogues x {meta['grad_accum']} micro-batches, max length {meta['max_length']}; "
        f"{meta['parallel']} methods at a time on one device ({meta['device']}); whole driver {meta['wall_s']:.0f} s.",
        "BLEU-4 / ROUGE-L: text turns (a call there scores 0); slot P/R/F1: call turns (a text reply scores 0).",
    ]
    if meta["parallel"] > 1:
        notes.append("tok/s and train s were measured with other methods sharing the GPU.")
    if any(r.get("caveat") for r in rows):
        notes.append("* " + next(r["caveat"] for r in rows if r.get("caveat")) + ".")
    return "\n".join(lines + notes) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/crosswoz"), help="val.json.zip + hotel_db.json")
    ap.add_argument("--model", required=True, help="base model (HF folder or .gguf)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {METHODS + OPTIONAL}")
    ap.add_argument("--steps", type=int, default=60, help="optimizer steps per method")
    ap.add_argument("--batch-size", type=int, default=2, help="dialogues per micro-batch")
    ap.add_argument("--grad-accum", type=int, default=2, help="micro-batches per optimizer step")
    ap.add_argument("--lr", type=float, default=None, help="one learning rate for every method (default: per method)")
    ap.add_argument("--max-length", type=int, default=4096)
    ap.add_argument("--limit", type=int, default=None, help="at most N train dialogues and N test rounds")
    ap.add_argument("--eval-samples", type=int, default=150, help="eval items (assistant turns), a seeded sample")
    ap.add_argument("--eval-batch-size", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--parallel", type=int, default=1, help="methods run at the same time (separate processes)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--template", default=None, help="template.name (default: what the tokenizer implies)")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=540, help="seconds per train or eval process")
    ap.add_argument("--train-arg", action="append", default=[], help="extra key=value for every train run")
    args = ap.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m != "base":
            method_overrides(m, args.steps)  # unknown names fail before any work
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    t0 = time.perf_counter()
    data = prepare_data(args.data, args.out, args.limit, args.seed)
    print(f"data: {data['dialogues']} dialogues, {data['test_rounds']} test rounds", flush=True)
    convert_s = 0.0
    if str(args.model).endswith(".gguf"):
        # Dequantise the GGUF into chatforge's cache once, here, rather than in every parallel process at once.
        from chatforge.models.loading import resolve_model_path

        t = time.perf_counter()
        print(f"GGUF -> safetensors cache: {resolve_model_path(args.model)}", flush=True)
        convert_s = time.perf_counter() - t

    def one(method: str) -> dict:
        row = run_method(method, args, data)
        print(json.dumps(row, ensure_ascii=False), flush=True)
        return row

    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        rows = list(pool.map(one, methods))
    meta = dict(
        model=args.model,
        steps=args.steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        max_length=args.max_length,
        parallel=args.parallel,
        device=args.device,
        wall_s=time.perf_counter() - t0,
        gguf_convert_s=round(convert_s, 1),
        dialogues=data["dialogues"],
        test_rounds=data["test_rounds"],
    )
    write_jsonl(args.out / "results.jsonl", [{**r, "meta": meta} for r in rows])
    (args.out / "results.md").write_text(table(rows, meta), encoding="utf-8")
    print((args.out / "results.md").read_text())
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
