"""How the semantic-dedup threshold behaves per encoder: nearest-neighbour cosine of the first N Alpaca records under
the MiniLM sentence encoder and under mean-pooled hidden states of a chat model, and how many records each threshold
would remove.

    OMP_NUM_THREADS=1 nice .venv/bin/python bench/semantic_thresholds.py [--data GZ] [--n 500] \
        [--encoders minilm,smollm2-135m-instruct] [--json out.json]

Records are read the way `chatforge data clean` sees them (instruction + input, then output, one message per line).
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "alpaca52k" / "alpaca_bilingual.json.gz"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(SHARED))
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--lang", default="en")
    p.add_argument("--encoders", default="minilm,smollm2-135m-instruct")
    p.add_argument("--json")
    a = p.parse_args()
    from chatforge.data.cleaning.semantic import Encoder, neighbours, resolve_encoder, semantic_duplicates

    rows = json.load(gzip.open(a.data, "rt", encoding="utf-8"))[: a.n]
    texts = []
    for r in rows:
        user = "\n".join(x for x in (r[f"{a.lang}_instruction"], r[f"{a.lang}_input"]) if x)
        texts.append(f"{user}\n{r[f'{a.lang}_output']}")
    results = {}
    for spec in a.encoders.split(","):
        path, kind = resolve_encoder(spec)
        t0 = time.perf_counter()
        vec = Encoder(path, kind).encode(texts)
        secs = time.perf_counter() - t0
        _, sims = neighbours(vec, 1, exact=True)
        nn = sims[:, 1]
        res = {
            "kind": kind,
            "seconds": round(secs, 1),
            "nearest_cosine_percentiles": {q: round(float(np.percentile(nn, q)), 4) for q in (5, 25, 50, 75, 95)},
            "removed_at": {t: len(semantic_duplicates(vec, t)) for t in (0.9, 0.95, 0.97, 0.99)},
        }
        dups = semantic_duplicates(vec, 0.95)
        res["examples_at_0.95"] = [
            {"kept": texts[j][:120], "removed": texts[i][:120], "cosine": round(s, 4)}
            for i, (j, s) in list(dups.items())[:3]
        ]
        results[spec] = res
        print(spec, json.dumps(res, ensure_ascii=False, indent=1), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(results, ensure_ascii=False, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
