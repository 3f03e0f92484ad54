"""Seed 004 end to end through the real CLI: tokenizer -> token shards -> pretrain a small Llama -> SFT on CSL
summaries as dialogues -> ROUGE on CSL papers the model never saw.

    python3 bench/pretrain_seed004.py --data ../shared/data --out runs/seed004 --profile h200 --minutes 10
    OMP_NUM_THREADS=1 python3 bench/pretrain_seed004.py --data ../shared/data --out /tmp/s4 --profile cpu-smoke

Every stage is a `python -m chatforge.cli ...` subprocess with a YAML written into --out (the commands are printed and
kept in OUT/commands.txt), so the run is what a user would type:

1. `data convert summarization --format csl` (one conversation per paper, a random instruction template each) and
   `data clean` (dedup, then an 8:1:1 split by record = by paper: train, val and test share no paper);
2. `tokenizer train` on the four novels of `pretrain_zh` plus the CSL *train* conversations (byte-level BPE);
3. `data tokenize` of the same text into uint16 shards;
4. `train` with `stage: pt`, `model.init.preset: llama-43m` (dim 256, 12 layers, 8 heads: seed 004's model), packed
   rows with document masks, validation perplexity and samples from fixed prompts (`samples.jsonl`);
5. `train` with `stage: sft`, full fine-tuning of the pretrained model on the CSL train split (val split for
   validation);
6. `eval` with tasks `generate` (ROUGE-1/2/L F1 on characters) and `lm` on the CSL test split.

OUT/seed004_summary.json collects the numbers (validation perplexity curve, tok/s, ROUGE) and the wall time per stage.
Seed 004 reports ROUGE-1 F 0.567 on CSL titles after pretraining on a 300 MB news corpus; this corpus is ~9 MB of
novels (+ the CSL train text), so expect far less. `--minutes` is the budget of the whole run: each stage gets what is
left as its timeout, and a stage that runs out is recorded as such.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SAMPLE_PROMPTS = ["却说曹操", "宝玉听了", "本文提出了一种"]

PROFILES = {
    # A few minutes on a CPU: a 2-layer model and a slice of the corpus; checks the path, not the quality.
    "cpu-smoke": dict(
        vocab=1200,
        max_chars=120_000,
        init="{preset: llama-43m, hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 4, "
        "num_key_value_heads: 4, max_position_embeddings: 512}",
        pt=dict(max_length=128, batch_size=4, max_steps=6, eval_every=3, learning_rate=2e-3, warmup_steps=2),
        sft=dict(max_length=256, batch_size=4, max_steps=4, eval_every=0, learning_rate=1e-3),
        eval=dict(max_samples=4, max_new_tokens=8, batch_size=4),
        speed=["train.num_threads=1"],
        csl_records=60,
    ),
    # Sized for <= 10 minutes on one H200 (tokenizer ~1 min on the CPU side, pretraining ~3-4 min, SFT ~1-2 min,
    # evaluation < 1 min, plus a compile warm-up per training run).
    "h200": dict(
        vocab=16000,
        max_chars=None,
        init="{preset: llama-43m, max_position_embeddings: 1024}",
        pt=dict(max_length=512, batch_size=64, max_steps=1500, eval_every=250, learning_rate=2e-3, warmup_steps=100),
        sft=dict(max_length=512, batch_size=32, epochs=10, eval_every=100, learning_rate=3e-4),
        eval=dict(max_samples=100, max_new_tokens=48, batch_size=50),
        speed=["train.compile_layers=true"],
        csl_records=None,
    ),
}


class Budget:
    def __init__(self, minutes: float, log: Path):
        self.deadline = time.monotonic() + 60 * minutes
        self.log = log
        self.stages: dict[str, dict] = {}

    def run(self, stage: str, args: list[str]) -> subprocess.CompletedProcess | None:
        left = self.deadline - time.monotonic()
        cmd = [sys.executable, "-m", "chatforge.cli", *args]
        with open(self.log, "a") as fh:
            fh.write(f"# {stage}\nchatforge {' '.join(args)}\n")
        print(f"\n== {stage}: chatforge {' '.join(args)}", flush=True)
        if left <= 0:
            self.stages[stage] = dict(status="skipped: budget spent")
            return None
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=left)
        except subprocess.TimeoutExpired:
            self.stages[stage] = dict(status="timed out", wall_s=round(time.perf_counter() - t0, 1))
            return None
        wall = round(time.perf_counter() - t0, 1)
        self.stages[stage] = dict(status="ok" if proc.returncode == 0 else f"exit {proc.returncode}", wall_s=wall)
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-6:]
        print("\n".join(tail), flush=True)
        if proc.returncode != 0:
            self.stages[stage]["error"] = proc.stderr[-2000:]
            return None
        return proc


def write_yaml(path: Path, sections: dict) -> Path:
    """A small YAML writer for nested dicts of scalars/lists (JSON is valid YAML for the values)."""
    lines = []
    for name, body in sections.items():
        lines.append(f"{name}:")
        for key, value in body.items():
            text = value if isinstance(value, str) and value.startswith("{") else json.dumps(value, ensure_ascii=False)
            lines.append(f"  {key}: {text}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def conversations_text(path: Path, out: Path, limit: int | None = None) -> Path:
    """The CSL train conversations as plain paragraphs (user + assistant text) for the tokenizer and pretraining."""
    paragraphs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            paragraphs.append("\n".join(m.get("content", "") for m in record.get("messages", [])))
    out.write_text("\n\n".join(paragraphs[:limit]) + "\n", encoding="utf-8")
    return out


def corpus_files(data: Path, work: Path, max_chars: int | None) -> list[Path]:
    files = sorted((data / "pretrain_zh").glob("*.txt"))
    if not files:
        raise SystemExit(f"no .txt files in {data / 'pretrain_zh'}")
    if max_chars is None:
        return files
    work.mkdir(parents=True, exist_ok=True)
    out = []
    for f in files:  # the smoke profile trains on the start of each novel
        target = work / f.name
        target.write_text(f.read_text(encoding="utf-8")[: max_chars // len(files)], encoding="utf-8")
        out.append(target)
    return out


def find_metric(obj, name: str):
    if isinstance(obj, dict):
        if name in obj and isinstance(obj[name], (int, float)):
            return obj[name]
        for value in obj.values():
            found = find_metric(value, name)
            if found is not None:
                return found
    if isinstance(obj, list):
        for value in obj:
            found = find_metric(value, name)
            if found is not None:
                return found
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="the shared data folder (pretrain_zh/, csl/)")
    ap.add_argument("--out", required=True, help="a new or empty folder for everything this run writes")
    ap.add_argument("--profile", choices=sorted(PROFILES), default="cpu-smoke")
    ap.add_argument("--minutes", type=float, default=10.0, help="budget of the whole run")
    a = ap.parse_args(argv)
    prof = PROFILES[a.profile]
    data, out = Path(a.data).resolve(), Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if any(p.name != "commands.txt" for p in out.iterdir()):
        raise SystemExit(f"{out} is not empty: give a new folder (nothing is overwritten)")
    budget = Budget(a.minutes, out / "commands.txt")
    t_start = time.perf_counter()
    summary: dict = dict(profile=a.profile, minutes=a.minutes, stages=budget.stages)

    # 1. CSL -> conversations -> dedup + split by paper
    csl_tsv = data / "csl" / "ts_dev.tsv"
    if prof["csl_records"]:
        small = out / "csl_small.tsv"
        small.write_text("\n".join(csl_tsv.read_text(encoding="utf-8").splitlines()[: prof["csl_records"]]) + "\n")
        csl_tsv = small
    budget.run("csl convert", ["data", "convert", "summarization", "--format", "csl", "--input", str(csl_tsv),
                               "--output", str(out / "csl")])  # fmt: skip
    budget.run("csl split", ["data", "clean", "--input", str(out / "csl" / "csl.jsonl"), "--output",
                             str(out / "csl" / "split")])  # fmt: skip
    split = out / "csl" / "split"
    if not (split / "train.jsonl").is_file():
        return finish(out, summary, t_start)
    counts = {n: sum(1 for ln in (split / f"{n}.jsonl").read_text().splitlines() if ln.strip()) for n in
              ("train", "val", "test")}  # fmt: skip
    summary["csl_papers"] = counts
    csl_text = conversations_text(split / "train.jsonl", out / "csl_train.txt")

    # 2-3. tokenizer and shards on the novels + CSL train text
    corpus = [*corpus_files(data, out / "corpus", prof["max_chars"]), csl_text]
    inputs = [str(p) for p in corpus]
    budget.run("tokenizer", ["tokenizer", "train", "--input", *inputs, "--vocab-size", str(prof["vocab"]),
                             "--output", str(out / "tokenizer"), "--compare"])  # fmt: skip
    report = out / "tokenizer" / "training_report.json"
    if report.is_file():
        summary["tokenizer"] = json.loads(report.read_text())
    budget.run("shards", ["data", "tokenize", "--input", *inputs, "--tokenizer", str(out / "tokenizer"),
                          "--output", str(out / "shards")])  # fmt: skip
    if not (out / "shards" / "index.json").is_file():
        return finish(out, summary, t_start)
    summary["shards"] = json.loads((out / "shards" / "index.json").read_text()).get("num_tokens")

    # 4. pretraining
    pt = prof["pt"]
    pt_yaml = write_yaml(
        out / "pretrain.yaml",
        {
            "model": {"name_or_path": "scratch", "init": prof["init"]},
            "data": {"shards": str(out / "shards"), "val_rows": 0.01, "max_length": pt["max_length"]},
            "template": {"name": "chatml"},
            "peft": {"finetuning": "full"},
            "train": {
                "stage": "pt",
                "batching": "packed",
                "max_steps": pt["max_steps"],
                "batch_size": pt["batch_size"],
                "learning_rate": pt["learning_rate"],
                "warmup_steps": pt["warmup_steps"],
                "weight_decay": 0.1,
                "adam_beta2": 0.95,
                "eval_every": pt["eval_every"],
                "log_every": max(1, pt["max_steps"] // 20),
                "sample_prompts": SAMPLE_PROMPTS,
                "sample_max_new_tokens": 32,
                "tensorboard": False,
            },
            "output": {"dir": str(out / "pretrain")},
        },
    )
    budget.run("pretrain", ["train", str(pt_yaml), *prof["speed"]])
    pt_summary = out / "pretrain" / "summary.json"
    if not pt_summary.is_file():
        return finish(out, summary, t_start)
    summary["pretrain"] = _train_numbers(out / "pretrain")

    # 5. SFT on CSL summaries as dialogues
    sft = prof["sft"]
    train_keys = {k: v for k, v in sft.items() if k != "max_length"}
    sft_yaml = write_yaml(
        out / "sft.yaml",
        {
            "model": {"name_or_path": str(out / "pretrain")},
            "data": {
                "train": [str(split / "train.jsonl")],
                "val": [str(split / "val.jsonl")],
                "max_length": sft["max_length"],
            },  # fmt: skip
            "template": {"name": "chatml"},
            "peft": {"finetuning": "full"},
            "train": {
                "stage": "sft",
                "batching": "length_grouped",
                "weight_decay": 0.1,
                "warmup_ratio": 0.05,
                "tensorboard": False,
                **train_keys,
            },  # fmt: skip
            "output": {"dir": str(out / "sft")},
        },
    )
    budget.run("sft", ["train", str(sft_yaml), *prof["speed"]])
    if not (out / "sft" / "summary.json").is_file():
        return finish(out, summary, t_start)
    summary["sft"] = _train_numbers(out / "sft")

    # 6. ROUGE on the test papers
    ev = prof["eval"]
    eval_yaml = write_yaml(
        out / "eval.yaml",
        {
            "model": {"name_or_path": str(out / "sft")},
            "data": {"val": [str(split / "test.jsonl")], "max_length": 1024},
            "eval": {"tasks": ["generate", "lm"], "zh_tokenize": "char", **ev},
            "output": {"dir": str(out / "eval")},
        },
    )
    budget.run("eval", ["eval", str(eval_yaml)])
    rep = out / "eval" / "report.json"
    if rep.is_file():
        report = json.loads(rep.read_text())
        summary["rouge"] = {k: find_metric(report, k) for k in ("rouge1", "rouge2", "rougeL", "bleu4")}
        summary["test_ppl"] = find_metric(report, "perplexity")
        summary["seed004_rouge1"] = 0.567
    return finish(out, summary, t_start)


def _train_numbers(run: Path) -> dict:
    s = json.loads((run / "summary.json").read_text())
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    curve = [(r["step"], round(r["val_loss"], 4), round(r.get("val_ppl", 0.0), 2)) for r in rows if r["kind"] == "eval"]
    keys = ("steps", "tokens", "time_s", "steady_tok_per_s", "mfu", "warmup_s", "compile_steps", "compile_events",
            "final_train_loss", "final_val_loss", "total_parameters", "peak_gpu_memory_gib", "device", "precision")  # fmt: skip
    numbers = {k: s.get(k) for k in keys}
    numbers["val_curve"] = curve  # (step, val_loss, val_ppl)
    samples = run / "samples.jsonl"
    if samples.is_file():
        numbers["last_samples"] = [json.loads(ln) for ln in samples.read_text().splitlines() if ln.strip()][-3:]
    return numbers


def finish(out: Path, summary: dict, t_start: float) -> int:
    summary["wall_s"] = round(time.perf_counter() - t_start, 1)
    (out / "seed004_summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2), encoding="utf-8")
    print(json.dumps({k: v for k, v in summary.items() if k != "tokenizer"}, ensure_ascii=False, indent=2))
    ok = all(s.get("status") == "ok" for s in summary["stages"].values()) and "rouge" in summary
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
