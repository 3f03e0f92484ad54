"""`chatforge data clean --engine ray` gives the same files as the local engine: kept set, split, removed.jsonl and
the report's counts (timings aside), with chunks small enough that Ray runs many tasks."""

from __future__ import annotations

import json
import random

import pytest

pytest.importorskip("ray.data", reason="--engine ray needs the `ray` extra (ray[data])")

from chatforge.data.clean import main  # noqa: E402


def _rows(n: int) -> list[dict]:
    rng = random.Random(7)
    words = "alpha beta gamma delta river mountain bread hotel price city answer question".split()
    rows = []
    for i in range(n):
        q = " ".join(rng.choice(words) for _ in range(8)) + f" {i}?"
        a = " ".join(rng.choice(words) for _ in range(12)) + "."
        rows.append({"instruction": q, "output": a, "meta": {"kind": "ab"[i % 2]}})
    rows[5] = dict(rows[2])  # exact duplicate
    rows[9] = {**rows[3], "instruction": rows[3]["instruction"] + " "}  # equal after normalisation
    rows[11]["output"] = "Mail me at someone@example.com, <b>bold</b> answer."  # PII + HTML
    rows[13]["output"] = "As an AI language model, I cannot answer that."  # refusal
    rows[17]["output"] = " ".join(["again and again"] * 15)  # repetition
    rows[19]["output"] = "   "  # empty after normalisation
    return rows


def _strip_timings(obj):
    if isinstance(obj, dict):
        return {
            k: _strip_timings(v) for k, v in obj.items() if k not in ("seconds", "read_seconds", "engine", "inputs")
        }
    if isinstance(obj, list):
        return [_strip_timings(v) for v in obj]
    return obj


@pytest.mark.integration
def test_ray_engine_output_equals_local(tmp_path):
    import ray

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows(60)), encoding="utf-8")
    args = ["--input", str(data), "quality.enabled=true", "on_error=skip", "split.key=meta.kind", "seed=3"]
    local, dist = tmp_path / "local", tmp_path / "ray"
    assert main([*args, "--output", str(local)]) == 0
    try:
        assert main([*args, "--output", str(dist), "--engine", "ray", "--ray-chunk-size", "7"]) == 0
    finally:
        ray.shutdown()
    for name in ("train.jsonl", "val.jsonl", "test.jsonl", "removed.jsonl"):
        assert (local / name).read_bytes() == (dist / name).read_bytes(), name
    rl = json.loads((local / "report.json").read_text())
    rr = json.loads((dist / "report.json").read_text())
    assert rr["engine"] == "ray" and rl["engine"] == "local"
    assert _strip_timings(rl) == _strip_timings(rr)
    steps = {s["step"]: s for s in rl["steps"]}
    # The fixture really exercises the steps (otherwise equal outputs would prove little).
    assert steps["quality"]["removed"] == 2 and steps["exact_dedup"]["removed"] == 2 and steps["empty"]["removed"] == 0
    assert steps["pii"]["masked"] == {"email": 1}
    assert sum(len((local / f).read_text().splitlines()) for f in ("train.jsonl", "val.jsonl", "test.jsonl")) == 55
