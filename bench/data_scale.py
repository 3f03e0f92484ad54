"""`chatforge data clean` at scale on the 52k Alpaca (../shared/data/alpaca52k): local engine vs `--engine ray`,
and semantic dedup, each through the real CLI in a subprocess, with wall time and peak memory.

    OMP_NUM_THREADS=1 nice .venv/bin/python bench/data_scale.py --data DIR_OR_GZ --out OUT \
        [--lang en] [--limit N] [--runs local,ray,semantic] [--json results.json]

The Alpaca file is first written as an alpaca-format JSONL of one language (`--limit` keeps the first N records).
Peak memory is the largest sum of RSS over the CLI process and all its descendants (Ray's raylet, GCS and workers
included), sampled every 0.1 s from /proc, so Ray's own processes count against it as they do on a real machine.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "alpaca52k"


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    return kids


def tree_rss(root: int) -> int:
    """Bytes of resident memory of `root` and every descendant."""
    kids, total, todo = _children(), 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(kids.get(pid, []))
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def run(cmd: list[str], log: Path) -> dict:
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(0.1)
    return {"rc": proc.returncode, "seconds": round(time.perf_counter() - t0, 1), "peak_mib": round(peak / 2**20)}


def prepare(data: Path, lang: str, limit: int | None, out: Path) -> Path:
    src = data / "alpaca_bilingual.json.gz" if data.is_dir() else data
    rows = json.load(gzip.open(src, "rt", encoding="utf-8"))[:limit]
    target = out / f"alpaca_{lang}_{len(rows)}.jsonl"
    with target.open("w", encoding="utf-8") as f:
        for r in rows:
            rec = {"instruction": r[f"{lang}_instruction"], "input": r[f"{lang}_input"], "output": r[f"{lang}_output"]}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return target


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(SHARED))
    p.add_argument("--out", required=True)
    p.add_argument("--lang", choices=["en", "zh"], default="en")
    p.add_argument("--limit", type=int)
    p.add_argument("--runs", default="local,ray", help="comma list of local, ray, semantic")
    p.add_argument("--semantic-args", default="", help="extra key=value overrides for the semantic run")
    p.add_argument("--json")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data = prepare(Path(a.data), a.lang, a.limit, out)
    base = [sys.executable, "-m", "chatforge.cli", "data", "clean", "--input", str(data), "on_error=skip"]
    base += ["quality.enabled=true", f"quality.reply_language={a.lang}", "--overwrite"]
    results: dict = {"data": str(data), "load_avg_start": os.getloadavg()}
    for name in a.runs.split(","):
        cmd = [*base, "--output", str(out / name)]
        if name == "ray":
            cmd += ["--engine", "ray"]
        elif name == "semantic":
            cmd += ["semantic.enabled=true", *a.semantic_args.split()]
        results[name] = run(cmd, out / f"{name}.log")
        report = out / name / "report.json"
        if report.is_file():
            rep = json.loads(report.read_text())
            results[name]["records_out"] = rep["records_out"]
            results[name]["removed"] = {s["step"]: s.get("removed") for s in rep["steps"] if "removed" in s}
        print(name, json.dumps(results[name]), flush=True)
    if {"local", "ray"} <= set(results):
        results["ray_equals_local"] = all(
            (out / "local" / f).read_bytes() == (out / "ray" / f).read_bytes()
            for f in ("train.jsonl", "val.jsonl", "test.jsonl", "removed.jsonl")
        )
        print("ray output identical to local:", results["ray_equals_local"])
    results["load_avg_end"] = os.getloadavg()
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
