"""Answer-or-refuse on real data (issue 21): convert, train (LoRA, restore_best) and evaluate base vs tuned, all
through the real `chatforge` CLI, and write one results table (results.jsonl + results.md).

Runs (each: base, base + calibration, SFT, SFT + calibration on the held-out test split):
  squad2_smollm2  SQuAD 2.0 (English), SmolLM2-135M-Instruct     examples/refuse/squad2_smollm2_sft.yaml
  squad2_qwen     SQuAD 2.0 (English), Qwen2.5-Coder-0.5B-Instr.  examples/refuse/squad2_qwen_sft.yaml
  webqa_qwen      WebQA (Chinese), Qwen2.5-Coder-0.5B-Instruct    examples/refuse/webqa_qwen_sft.yaml
SmolLM2 is English only, so it runs SQuAD 2.0 alone; the Qwen runs are skipped without --qwen.

With --grpo each run then continues its SFT adapter with `train.stage: grpo` (examples/refuse/RUN_grpo.yaml: the
built-in `grounded_qa` reward, beta = 0) on prompts of the converted train split and evaluates that adapter too
(rows SFT + GRPO, SFT + GRPO + calibration). The converted rows are GRPO prompts as they are: the stage drops the
final assistant turn, and the reward reads the rows' meta `answerable` / `answers` columns.

One H200 (about 8-10 minutes for all three; model conversion from GGUF once per model included; --grpo adds a
run sized for up to about 5 minutes, plus one evaluation, per run):
  PYTHONPATH=src python bench/refuse_runs.py --data ../shared/data --smol PATH/SmolLM2-135M-Instruct.Q4_1.gguf \
      --qwen PATH/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf --out runs/refuse_bench
CPU smoke test (tiny model, a few steps, a few items):
  PYTHONPATH=src python bench/refuse_runs.py --data ../shared/data --smol TINY_DIR --qwen TINY_DIR --template chatml \
      --steps 2 --limit 8 --cpu --out /tmp/refuse_smoke            (add --grpo for the GRPO rows)

Every command and its output go to OUT/logs/; a finished step (its report.json / summary.json exists) is not redone,
so a cut-off run continues where it stopped, and a re-run rebuilds the table from every finished run. Needs
chatforge's own dependencies only: gguf for GGUF models, jieba for the WebQA conversion (or convert elsewhere first
with --convert-only and bring OUT/data along).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # this checkout's chatforge, also without PYTHONPATH

from chatforge.config import parse_overrides  # noqa: E402
from chatforge.io import atomic_write_text  # noqa: E402

EXAMPLES = ROOT / "examples" / "refuse"

RUNS = {
    name: {"dataset": dataset, "model": model, "config": f"{name}_sft.yaml", "grpo_config": f"{name}_grpo.yaml"}
    for name, dataset, model in (
        ("squad2_smollm2", "squad2", "smol"),
        ("squad2_qwen", "squad2", "qwen"),
        ("webqa_qwen", "webqa", "qwen"),
    )
}
CONVERT = {
    "squad2": ["squad2", "--input", "{data}/squad2/dev-v2.0.json", "--split", "0.75,0.125,0.125", "--hard-negatives"],
    "webqa": ["webqa", "--input", "{data}/webqa/me_test.ann.json", "--split", "0.8,0.1,0.1", "--hard-negatives"],
}
# The targets for the best row of each language.
TARGETS = {"refusal_f1": 0.85, "false_refusal_rate": 0.10, "f1": 0.70}


def log(msg: str) -> None:
    print(f"[refuse_runs] {msg}", flush=True)


def chatforge(args: list[str], logfile: Path) -> float:
    """Run `python -m chatforge.cli ARGS`, output to logfile; returns seconds; raises with the log's tail on failure."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("PYTHONUNBUFFERED", "1")
    logfile.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "chatforge.cli", *args]
    log("$ chatforge " + " ".join(args))
    start = time.perf_counter()
    with open(logfile, "w", encoding="utf-8") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    seconds = time.perf_counter() - start
    if rc != 0:
        tail = logfile.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise SystemExit(f"chatforge {args[0]} failed (exit {rc}); {logfile}:\n{tail}")
    log(f"  done in {seconds:.1f} s")
    return seconds


def convert(dataset: str, a, out: Path) -> Path:
    folder = out / "data" / dataset
    if not (folder / "report.json").is_file():
        args = ["data", "convert", *[x.format(data=a.data) for x in CONVERT[dataset]], "--output", str(folder)]
        chatforge(args, out / "logs" / f"convert_{dataset}.log")
    return folder


def common(a) -> list[str]:
    extra = [f"template.name={a.template}"] if a.template else []
    if a.cpu:
        extra += ["model.device=cpu"]
    return extra


def train(name: str, config: str, model: str, data: Path, a, out: Path, extra: list[str]) -> tuple[Path, dict, float]:
    """`chatforge train EXAMPLES/config` into OUT/runs/name on data's train/val split (skipped when its
    summary.json exists); extra: the stage's own overrides. Returns (run folder, summary, seconds)."""
    run_dir = out / "runs" / name
    if (run_dir / "summary.json").is_file():
        return run_dir, json.loads((run_dir / "summary.json").read_text()), 0.0
    args = [
        "train",
        str(EXAMPLES / config),
        f"model.name_or_path={model}",
        f"data.train=[{data / 'train.jsonl'}]",
        f"data.val=[{data / 'val.jsonl'}]",
        f"output.dir={run_dir}",
        "train.progress=false",
        "train.resume=auto",  # a cut-off bench continues (or restarts) the run instead of refusing the folder
        *common(a),
    ]
    if a.steps:
        args += [f"train.max_steps={a.steps}", f"train.eval_every={max(1, a.steps // 2)}"]
    if a.cpu:
        args += ["train.precision=fp32", "train.num_threads=1", "train.eval_batch_size=8"]
    seconds = chatforge(args + extra, out / "logs" / f"train_{name}.log")
    return run_dir, json.loads((run_dir / "summary.json").read_text()), seconds


def sft_extra(a) -> list[str]:
    return ["train.batch_size=4"] if a.cpu else []


def grpo_extra(sft_dir: Path, a) -> list[str]:
    """The GRPO run's overrides: continue the SFT run's adapter; smoke settings shrink prompts and generations."""
    extra = [f"model.adapter={sft_dir}"]
    if a.limit:
        extra.append(f"data.max_samples={a.limit}")  # prompts per file (train and val)
    if a.steps:
        # A smoke model samples to the limit every time: short completions keep the step (and validation) cheap.
        extra += ["grpo.max_new_tokens=8", "grpo.eval_max_new_tokens=8"]
    if a.cpu:
        extra.append("train.batch_size=2")  # prompts per micro-batch, each sampled grpo.num_generations times
    return extra + list(a.grpo_set)  # the user's overrides last: they win


def evaluate(name: str, model: str, adapter: Path | None, data: Path, a, out: Path) -> dict:
    eval_dir = out / "eval" / name
    if not (eval_dir / "report.json").is_file():
        args = [
            "eval",
            f"model.name_or_path={model}",
            f"data.val=[{data / 'test.jsonl'}]",
            "data.max_length=1024",
            # The calibrated task also reports the greedy replies' metrics: one generation pass gives both rows.
            "eval.tasks=[grounded_qa_calibrated]",
            f"eval.calibration_data=[{data / 'val.jsonl'}]",
            f"eval.target_false_refusal={a.target_false_refusal}",
            f"eval.max_samples={a.limit or 'null'}",
            f"eval.calibration_max_samples={a.limit or 'null'}",
            "eval.max_new_tokens=32",
            f"eval.batch_size={8 if a.cpu else 64}",
            "eval.charts=false",
            f"output.dir={eval_dir}",
            "output.overwrite=true",
            *common(a),
        ]
        if adapter is not None:
            args.append(f"model.adapter={adapter}")
        if a.cpu:
            args.append("eval.threads=1")
        chatforge(args, out / "logs" / f"eval_{name}.log")
    return json.loads((eval_dir / "report.json").read_text(encoding="utf-8"))


def rows_of(run: str, spec: dict, stage: str, report: dict, summary: dict | None, train_s: float) -> list[dict]:
    rows = []
    t = report["tasks"]["grounded_qa_calibrated"]
    d = t["details"]
    for calibrated, variant in ((False, stage), (True, f"{stage} + calibration")):
        m = t["metrics"] if calibrated else d["greedy_metrics"]
        conf = d["confusion"] if calibrated else d["greedy_confusion"]
        row = {
            "run": run,
            "dataset": spec["dataset"],
            "model": spec["model"],
            "variant": variant,
            "items": t["items"],
            "answerable": d.get("answerable"),
            "unanswerable": d.get("unanswerable"),
            **{k: m[k] for k in ("exact_match", "f1", "refusal_precision", "refusal_recall", "refusal_f1")},
            "false_refusal_rate": m["false_refusal_rate"],
            "confusion": conf,
            "eval_seconds": round(t["seconds"], 1),
        }
        if calibrated:
            row["threshold"] = d.get("threshold")
            row["target_false_refusal"] = d.get("target_false_refusal")
        if summary is not None:
            row.update(
                train_seconds=summary.get("time_s"),  # the run's own time (model loading excluded)
                train_wall_seconds=round(train_s, 1) if train_s else None,  # this process's command, when it ran
                steps=summary.get("steps"),
                best_step=summary.get("best_step"),
                saved_step=summary.get("saved_step"),
                restored_best=summary.get("restored_best"),
            )
        row["meets_targets"] = (
            m["refusal_f1"] >= TARGETS["refusal_f1"]
            and m["false_refusal_rate"] <= TARGETS["false_refusal_rate"]
            and m["f1"] >= TARGETS["f1"]
        )
        rows.append(row)
    return rows


def markdown(rows: list[dict], note: str) -> str:
    lines = [
        "# Answer-or-refuse results (bench/refuse_runs.py)",
        "",
        note,
        "",
        "| run | variant | items (ans/unans) | EM | F1 | refusal P / R / F1 | false refusals | answered wrong | "
        "train s (saved/best step) | targets met |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
        wrong = r["confusion"].get("answerable", {}).get("answered_wrong", "")
        train = (
            f"{r['train_seconds']} ({r['saved_step']}/{r['best_step']})" if r.get("train_seconds") is not None else "-"
        )
        lines.append(
            f"| {r['run']} | {r['variant']} | {r['items']} ({r['answerable']}/{r['unanswerable']}) | "
            f"{pct(r['exact_match'])} | {pct(r['f1'])} | {pct(r['refusal_precision'])} / {pct(r['refusal_recall'])} / "
            f"{pct(r['refusal_f1'])} | {pct(r['false_refusal_rate'])}% | {wrong} | {train} | "
            f"{'yes' if r['meets_targets'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the shared data folder (holds squad2/ and webqa/)")
    p.add_argument("--smol", default="smollm2-135m-instruct", help="SmolLM2-135M-Instruct: GGUF, HF folder or name")
    p.add_argument(
        "--qwen", default=None, help="Qwen2.5-Coder-0.5B-Instruct GGUF (or folder); without it, no Qwen runs"
    )
    p.add_argument("--out", required=True, help="output folder (data, runs, eval, logs, results.*)")
    p.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {', '.join(RUNS)}")
    p.add_argument("--steps", type=int, default=None, help="train.max_steps for every run (smoke tests)")
    p.add_argument("--limit", type=int, default=None, help="eval items and calibration items per run (smoke tests)")
    p.add_argument("--target-false-refusal", type=float, default=0.1)
    p.add_argument("--template", default=None, help="template.name for models without a chat template (tiny models)")
    p.add_argument("--cpu", action="store_true", help="CPU settings: fp32, 1 thread, small batches")
    p.add_argument(
        "--grpo",
        action="store_true",
        help="after SFT, GRPO continuing its adapter (examples/refuse/RUN_grpo.yaml) and its evaluation",
    )
    p.add_argument(
        "--grpo-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an override for every GRPO training (repeatable), e.g. train.gradient_checkpointing=true where the GPU "
        "is shared (the Qwen GRPO micro-batch of 16 x 8 completions peaked at 113 GiB without it)",
    )
    p.add_argument(
        "--convert-only",
        action="store_true",
        help="only convert the data into OUT/data (e.g. here, where jieba is installed) and stop",
    )
    a = p.parse_args(argv)
    _, problems = parse_overrides(a.grpo_set)  # the syntax check chatforge train applies, before any run starts
    if problems:
        p.error("--grpo-set: " + "; ".join(message for _, message in problems))
    out = Path(a.out).resolve()
    a.data = str(Path(a.data).resolve())
    models = {"smol": a.smol, "qwen": a.qwen}
    wanted = [r.strip() for r in a.runs.split(",") if r.strip()]
    unknown = [r for r in wanted if r not in RUNS]
    if unknown:
        p.error(f"unknown runs {unknown}; choose from {', '.join(RUNS)}")
    todo = [r for r in wanted if models[RUNS[r]["model"]]]
    for r in wanted:
        if r not in todo:
            log(f"skipping {r}: no --{RUNS[r]['model']} model given")
    if a.convert_only:
        for dataset in dict.fromkeys(RUNS[r]["dataset"] for r in wanted):
            log(f"{dataset}: {convert(dataset, a, out)}")
        return 0
    t0 = time.perf_counter()
    rows: list[dict] = []
    for name in todo:
        spec = RUNS[name]
        model = models[spec["model"]]
        data = convert(spec["dataset"], a, out)
        base = evaluate(f"{name}_base", model, None, data, a, out)
        rows += rows_of(name, spec, "base", base, None, 0.0)
        run_dir, summary, train_s = train(name, spec["config"], model, data, a, out, sft_extra(a))
        tuned = evaluate(f"{name}_sft", model, run_dir, data, a, out)
        rows += rows_of(name, spec, "SFT", tuned, summary, train_s)
        if a.grpo:
            grpo_dir, grpo_summary, grpo_s = train(
                f"{name}_grpo", spec["grpo_config"], model, data, a, out, grpo_extra(run_dir, a)
            )
            grpo = evaluate(f"{name}_grpo", model, grpo_dir, data, a, out)
            rows += rows_of(name, spec, "SFT + GRPO", grpo, grpo_summary, grpo_s)
        # Rewritten after every run, so a cut-off bench still leaves the rows it finished.
        atomic_write_text(out / "results.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    total = time.perf_counter() - t0
    note = (
        f"Measured by `bench/refuse_runs.py` in {total / 60:.1f} min"
        + (f" (smoke settings: --steps {a.steps} --limit {a.limit})" if a.steps or a.limit else "")
        + f"; calibration target false refusals <= {a.target_false_refusal:.0%} on the val split; test = held-out "
        "articles (SQuAD 2.0) / evidence groups (WebQA). EM/F1 on answerable questions (a refusal scores 0)."
    )
    atomic_write_text(out / "results.md", markdown(rows, note))
    print((out / "results.md").read_text(encoding="utf-8"))
    log(f"wrote {out / 'results.jsonl'} and {out / 'results.md'} ({total:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
