"""Full MMLU (all 57 subjects, 14,042 test items, 5-shot) through the real `chatforge eval` CLI and through
lm-evaluation-harness on the same model folder, the same local CSV files and the same few-shot examples, on one GPU;
wall-clock time (model load included on both sides) and accuracy for each.

    python3 bench/eval_gpu.py --model smollm2=/tmp/models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --model qwen=/tmp/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf --data /tmp/data/benchmarks --out $OUT/eval_gpu

A `.gguf` model is first dequantised into chatforge's cached HF folder so that both tools load the same weights. lm-eval is optional (`pip install lm_eval`); without it only chatforge's row is written.
One JSON line per (model, tool) goes to OUT/eval_gpu.jsonl, and a markdown table to OUT/eval_gpu.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def as_hf_folder(path: Path) -> Path:
    """An HF folder for `path`: the folder itself, or chatforge's cached dequantised copy of a GGUF file (the same
    folder `chatforge eval` itself loads a GGUF from)."""
    if path.is_dir():
        return path
    from chatforge.models.loading import gguf_to_hf_folder

    return gguf_to_hf_folder(path)


def run_chatforge(a, model_dir: Path, data: Path, out: Path) -> dict:
    """`chatforge eval` as a user runs it (a subprocess: its start and model load are in the time)."""
    cmd = [
        sys.executable, "-m", "chatforge.cli", "eval",
        f"model.name_or_path={model_dir}", f"model.dtype={a.dtype}", f"model.device={a.device}",
        "eval.tasks=[mmlu]", "eval.max_samples=null", f"eval.benchmark_dir={data}", f"eval.num_fewshot={a.shots}",
        f"eval.batch_size={a.batch_size}", "eval.charts=false", "eval.sampling=first", f"output.dir={out}",
    ]  # fmt: skip
    if a.subjects:
        cmd.append(f"eval.subjects=[{a.subjects}]")
    if a.per_subject:
        cmd.append(f"eval.max_per_subject={a.per_subject}")
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout)[-2000:], "seconds": round(seconds, 1)}
    task = json.loads((out / "report.json").read_text(encoding="utf-8"))["tasks"]["mmlu"]
    m = task["metrics"]
    return {
        "seconds": round(seconds, 1),
        "scoring_seconds": round(task["seconds"], 1),
        "items": task["items"],
        "acc": round(100 * m["acc"], 2),  # chatforge reports fractions
        "acc_subject_mean": round(100 * m["acc_subject_mean"], 2) if "acc_subject_mean" in m else None,
    }


def run_lm_eval(a, model_dir: Path, data: Path, out: Path) -> dict:
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        return {"error": f"lm_eval not installed: {exc}"}
    from eval_agreement import lm_eval_tasks

    subjects = (
        a.subjects.split(",")
        if a.subjects
        else sorted(p.name[: -len("_test.csv")] for p in (data / "mmlu/test").glob("*_test.csv"))
    )
    names = [n for n in lm_eval_tasks(data, subjects, out / "lm_eval_tasks") if n.startswith("cf_mmlu_")]
    start = time.perf_counter()
    res = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(model_dir), "dtype": a.dtype},
        tasks=names,
        num_fewshot=a.shots,
        batch_size=a.batch_size,
        device=a.device,
        limit=a.per_subject,
        task_manager=TaskManager(include_path=str(out / "lm_eval_tasks"), include_defaults=False),
        bootstrap_iters=0,
    )
    seconds = time.perf_counter() - start
    per = {n[len("cf_mmlu_") :]: res["results"][n]["acc,none"] for n in names}
    sizes = {n[len("cf_mmlu_") :]: res["n-samples"][n]["effective"] for n in names}
    total = sum(sizes.values())
    micro = sum(per[s] * sizes[s] for s in per) / total
    return {
        "seconds": round(seconds, 1),
        "items": total,
        "acc": round(100 * micro, 2),
        "acc_subject_mean": round(100 * sum(per.values()) / len(per), 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, help="NAME=PATH (HF folder or .gguf); repeatable")
    ap.add_argument("--data", required=True, help="benchmarks folder (holds mmlu/test, mmlu/dev)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--only", choices=["chatforge", "lm_eval", "both"], default="both")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--subjects", default="", help="comma-separated subjects (default: all 57); for a quick check")
    ap.add_argument("--per-subject", type=int, default=None, help="first N items per subject; for a quick check")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(a.data).resolve()
    rows = []
    for spec in a.model:
        name, _, path = spec.partition("=")
        folder = as_hf_folder(Path(path))
        for tool in ("chatforge", "lm_eval"):
            if a.only not in (tool, "both"):
                continue
            fn = run_chatforge if tool == "chatforge" else run_lm_eval
            row = {"model": name, "tool": tool, "shots": a.shots, "batch_size": a.batch_size, "dtype": a.dtype}
            row.update(fn(a, folder, data, out / f"{name}_{tool}"))
            print(json.dumps(row), flush=True)
            rows.append(row)
            with open(out / "eval_gpu.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
    lines = ["| model | tool | seconds | items | acc | acc (subject mean) |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['tool']} | {r.get('seconds')} | {r.get('items', '')} "
            f"| {r.get('acc', r.get('error', '')[-80:].replace(chr(10), ' '))} | {r.get('acc_subject_mean', '')} |"
        )
    (out / "eval_gpu.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
