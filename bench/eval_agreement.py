"""chatforge's benchmark scores next to lm-evaluation-harness's on the same model folder, the same local files and the
same items, with wall-clock times for both.

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/eval_agreement.py --out runs/agreement \
        --mmlu-subjects abstract_algebra,anatomy,astronomy,college_biology --mmlu-limit 25 --arc-limit 100 --gsm8k-limit 20

lm-eval reads the same JSONL/CSV files through task configs this script writes (dataset_path json/csv with local
data_files; no hub), its few-shot sampler set to first_n so both sides use the same examples. Items: the first N of
each MMLU subject's test file, the first N ARC-Challenge test questions, the first N GSM8K test problems (5-shot).
Prints a markdown table (chatforge, lm-eval, difference, items where the two disagree) and writes it to OUT/agreement.md
with the raw numbers in OUT/agreement.json. Needs `pip install lm_eval` (a dev tool, not a chatforge dependency).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MMLU_TEXT = "{{question.strip()}}\nA. {{A}}\nB. {{B}}\nC. {{C}}\nD. {{D}}\nAnswer:"


def lm_eval_tasks(data: Path, subjects: list[str], folder: Path) -> list[str]:
    """Write lm-eval task YAMLs for local files; returns the task names."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for s in subjects:
        cfg = {
            "task": f"cf_mmlu_{s}",
            "dataset_path": "csv",
            "dataset_kwargs": {
                "data_files": {
                    "test": str(data / f"mmlu/test/{s}_test.csv"),
                    "dev": str(data / f"mmlu/dev/{s}_dev.csv"),
                },
                "column_names": ["question", "A", "B", "C", "D", "answer"],
                "keep_default_na": False,
            },
            "test_split": "test",
            "fewshot_split": "dev",
            "fewshot_config": {"sampler": "first_n"},
            "output_type": "multiple_choice",
            "description": f"The following are multiple choice questions (with answers) about {s.replace('_', ' ')}.\n\n",
            "doc_to_text": MMLU_TEXT,
            "doc_to_choice": ["A", "B", "C", "D"],
            "doc_to_target": "{{['A', 'B', 'C', 'D'].index(answer)}}",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        }
        names.append(cfg["task"])
        (folder / f"{cfg['task']}.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    arc = {
        "task": "cf_arc_challenge",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data / "arc/ARC-Challenge/ARC-Challenge-Test.jsonl")}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "Question: {{question.stem}}\nAnswer:",
        "doc_to_choice": "{{question.choices | map(attribute='text') | list}}",
        "doc_to_target": "{{(question.choices | map(attribute='label') | list).index(answerKey)}}",
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
    }
    gsm = {
        "task": "cf_gsm8k",
        "dataset_path": "json",
        "dataset_kwargs": {
            "data_files": {"test": str(data / "gsm8k/test.jsonl"), "train": str(data / "gsm8k/train.jsonl.gz")}
        },
        "test_split": "test",
        "fewshot_split": "train",
        "fewshot_config": {"sampler": "first_n"},
        "num_fewshot": 5,
        "output_type": "generate_until",
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_target": "{{answer}}",
        "generation_kwargs": {"until": ["Question:", "</s>", "<|im_end|>"], "do_sample": False, "temperature": 0.0},
        "metric_list": [
            {
                "metric": "exact_match",
                "aggregation": "mean",
                "higher_is_better": True,
                "ignore_case": True,
                "ignore_punctuation": False,
                "regexes_to_ignore": [",", "\\$", "(?s).*#### ", "\\.$"],
            }
        ],
        "filter_list": [
            {
                "name": "strict-match",
                "filter": [
                    {"function": "regex", "regex_pattern": "#### (\\-?[0-9\\.\\,]+)"},
                    {"function": "take_first"},
                ],
            },
            {
                "name": "flexible-extract",
                "filter": [
                    {"function": "regex", "group_select": -1, "regex_pattern": "(-?[$0-9.,]{2,})|(-?[0-9]+)"},
                    {"function": "take_first"},
                ],
            },
        ],
    }
    for cfg in (arc, gsm):
        names.append(cfg["task"])
        (folder / f"{cfg['task']}.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return names


def run_lm_eval(model_dir: str, folder: Path, samples: dict[str, list[int]], batch_size: int) -> tuple[dict, float]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    start = time.perf_counter()
    res = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": model_dir, "dtype": "float32"},
        tasks=list(samples),
        batch_size=batch_size,
        device="cpu",
        samples=samples,
        log_samples=True,
        task_manager=TaskManager(include_path=str(folder), include_defaults=False),
        bootstrap_iters=0,
    )
    return res, time.perf_counter() - start


def run_chatforge(model_dir: str, data: Path, task: str, overrides: list[str], out: Path) -> tuple[dict, float]:
    from chatforge.evaluation.commands import evaluate
    from chatforge.evaluation.config import load_eval_config

    cfg = load_eval_config(
        None,
        [
            f"model.name_or_path={model_dir}",
            f"eval.tasks=[{task}]",
            f"eval.benchmark_dir={data}",
            "eval.threads=1",
            "eval.charts=false",
            f"output.dir={out / ('chatforge_' + task)}",
            "output.overwrite=true",
            *overrides,
        ],
    )
    start = time.perf_counter()
    _, report = evaluate(cfg)
    return report, time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default=None, help="HF model folder (default: the converted embedded SmolLM2)")
    ap.add_argument("--data", default="../shared/data/benchmarks")
    ap.add_argument("--out", default="runs/agreement")
    ap.add_argument("--mmlu-subjects", default="abstract_algebra,anatomy,astronomy,college_biology")
    ap.add_argument("--mmlu-limit", type=int, default=25)
    ap.add_argument("--mmlu-shots", type=int, default=0)
    ap.add_argument("--arc-limit", type=int, default=100)
    ap.add_argument("--gsm8k-limit", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--only", choices=["chatforge", "lm_eval", "both"], default="both")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    data, out = Path(args.data).resolve(), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = args.model_dir
    if model_dir is None:
        from chatforge.models.loading import load_tokenizer

        load_tokenizer("smollm2-135m-instruct")  # converts once into $CHATFORGE_HOME/models/<sha>
        home = Path(os.environ.get("CHATFORGE_HOME", Path.home() / ".cache/chatforge"))
        model_dir = str(next(p for p in (home / "models").iterdir() if (p / "config.json").is_file()))
    subjects = [s for s in args.mmlu_subjects.split(",") if s]
    names = lm_eval_tasks(data, subjects, out / "lm_eval_tasks")
    limits = {n: args.mmlu_limit for n in names if n.startswith("cf_mmlu_")}
    limits.update({"cf_arc_challenge": args.arc_limit, "cf_gsm8k": args.gsm8k_limit})
    results: dict = json.loads((out / "agreement.json").read_text()) if (out / "agreement.json").is_file() else {}

    if args.only in ("lm_eval", "both"):
        # One lm-eval run per benchmark so each gets its own wall time (MMLU subjects together).
        groups = {"mmlu": [n for n in names if n.startswith("cf_mmlu_")], "arc_challenge": ["cf_arc_challenge"]}
        groups["gsm8k"] = ["cf_gsm8k"]
        for bench, tasks in groups.items():
            shots = {"mmlu": args.mmlu_shots}.get(bench)
            if shots is not None:
                for t in tasks:
                    path = out / "lm_eval_tasks" / f"{t}.yaml"
                    path.write_text(path.read_text() + f"num_fewshot: {shots}\n")
            res, secs = run_lm_eval(
                model_dir, out / "lm_eval_tasks", {t: list(range(limits[t])) for t in tasks}, args.batch_size
            )
            per_item: dict[str, list] = {}
            for t in tasks:
                for s in sorted(res["samples"][t], key=lambda s: s["doc_id"]):
                    key = f"{s.get('filter', 'none')}"
                    for m in ("acc", "acc_norm", "exact_match"):
                        if m in s:
                            per_item.setdefault(f"{m}|{key}", []).append(float(s[m]))
                    if bench == "gsm8k" and key == "strict-match":
                        per_item.setdefault("reply", []).append(s["resps"][0][0])
                    elif bench != "gsm8k":
                        per_item.setdefault("loglik", []).append([float(x[0]) for x in s["filtered_resps"]])
            results.setdefault(bench, {})["lm_eval"] = {"seconds": secs, "per_item": per_item}
            print(f"lm-eval {bench}: {secs:.1f} s", file=sys.stderr)
            (out / "agreement.json").write_text(json.dumps(results, indent=1))

    if args.only in ("chatforge", "both"):
        runs = {
            "mmlu": [
                f"eval.subjects=[{','.join(subjects)}]",
                f"eval.max_per_subject={args.mmlu_limit}",
                "eval.max_samples=null",
                f"eval.num_fewshot={args.mmlu_shots}",
            ],
            "arc_challenge": [f"eval.max_samples={args.arc_limit}", "eval.sampling=first"],
            "gsm8k": [f"eval.max_samples={args.gsm8k_limit}", "eval.sampling=first"],
        }
        for bench, ov in runs.items():
            report, secs = run_chatforge(model_dir, data, bench, [f"eval.batch_size={args.batch_size}", *ov], out)
            task = report["tasks"][bench]
            preds = [json.loads(x) for x in (out / f"chatforge_{bench}" / task["predictions"]).read_text().splitlines()]
            per_item: dict[str, list] = {}
            if bench == "gsm8k":
                per_item["exact_match|strict-match"] = [float(p["correct_strict"]) for p in preds]
                per_item["exact_match|flexible-extract"] = [float(p["correct_flexible"]) for p in preds]
                per_item["reply"] = [p["reply"] for p in preds]
            else:
                per_item["acc|none"] = [float(p["predicted"] == p["gold"]) for p in preds]
                per_item["acc_norm|none"] = [float(p["predicted_norm"] == p["gold"]) for p in preds]
                per_item["loglik"] = [p["loglik"] for p in preds]
            results.setdefault(bench, {})["chatforge"] = {"seconds": secs, "per_item": per_item}
            print(f"chatforge {bench}: {secs:.1f} s", file=sys.stderr)
            (out / "agreement.json").write_text(json.dumps(results, indent=1))

    lines = [
        "| benchmark (items) | metric | chatforge | lm-eval | diff (points) | items that differ | chatforge s | lm-eval s |"
    ]
    lines.append("|---|---|---|---|---|---|---|---|")
    notes: list[str] = []
    for bench, sides in results.items():
        if "chatforge" not in sides or "lm_eval" not in sides:
            continue
        cf, le = sides["chatforge"], sides["lm_eval"]
        if "loglik" in cf["per_item"] and len(cf["per_item"]["loglik"]) == len(le["per_item"].get("loglik", [])):
            gap = max(
                abs(x - y) for a, b in zip(cf["per_item"]["loglik"], le["per_item"]["loglik"]) for x, y in zip(a, b)
            )
            notes.append(f"{bench}: largest |log-likelihood difference| over all options {gap:.2e} nats")
        if "reply" in cf["per_item"] and len(cf["per_item"]["reply"]) == len(le["per_item"].get("reply", [])):
            same = sum(x == y for x, y in zip(cf["per_item"]["reply"], le["per_item"]["reply"]))
            notes.append(f"{bench}: {same} of {len(cf['per_item']['reply'])} generated replies identical")
        for metric in cf["per_item"]:
            if metric in ("loglik", "reply"):
                continue
            if bench != "arc_challenge" and metric.startswith("acc_norm"):
                continue
            a, b = cf["per_item"][metric], le["per_item"].get(metric)
            if b is None or len(a) != len(b):
                continue
            diff = sum(x != y for x, y in zip(a, b))
            ca, cb = 100 * sum(a) / len(a), 100 * sum(b) / len(b)
            lines.append(
                f"| {bench} ({len(a)}) | {metric.replace('|none', '')} | {ca:.2f} | {cb:.2f} | {ca - cb:+.2f} | {diff} "
                f"| {cf['seconds']:.0f} | {le['seconds']:.0f} |"
            )
    table = "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes)
    (out / "agreement.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
