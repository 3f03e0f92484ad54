"""`chatforge data clean --engine ray`: the per-record steps (normalise, PII, empty, blocklist, length, language,
quality) run on Ray Data in chunks; the steps that compare records (exact, near and semantic dedup, balance, split)
run on the driver as in the local engine.

Each chunk carries its start index and comes back with it; the driver sorts chunks by start before merging, so the
kept set, the split, `removed.jsonl` and the report's counts are the same as the local run's whatever order Ray
finishes chunks in (`tests/data/test_ray_engine.py` compares the two outputs byte for byte, timings aside). Chunks
travel pickled as single binary cells so Ray's Arrow blocks never see the records' nested structure.

`address` None starts a local Ray on this machine; "auto" or "ray://host:port" joins a running cluster, whose
workers need chatforge installed.
"""

from __future__ import annotations

import pickle
from typing import Any

from chatforge.errors import ChatforgeError


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as err:
        raise ChatforgeError("--engine ray needs Ray Data: pip install 'chatforge[ray]'") from err
    return ray


def make_ray_record_pass(address: str | None = None, chunk_size: int = 4096, num_cpus: int | None = None):
    """A `record_pass_fn` for `clean_records` that runs the per-record steps on Ray Data."""
    ray = _ray()
    if chunk_size < 1:
        raise ChatforgeError(f"--ray-chunk-size must be positive, not {chunk_size}")

    def ray_record_pass(records: list, cfg: Any, tokenizer: Any = None):
        from chatforge.data.clean import merge_passes, record_pass

        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address:
                kwargs["address"] = address
            elif num_cpus:
                kwargs["num_cpus"] = num_cpus
            ray.init(**kwargs)
        ray.data.DataContext.get_current().enable_progress_bars = False
        items = [
            {"start": s, "blob": pickle.dumps(records[s : s + chunk_size])} for s in range(0, len(records), chunk_size)
        ]

        # A tokenizer object is not shipped: each worker loads cfg.length.tokenizer itself when unit=tokens.
        def work(row: dict) -> dict:
            part = record_pass(pickle.loads(row["blob"]), int(row["start"]), cfg)
            return {"start": int(row["start"]), "blob": pickle.dumps(part)}

        ds = ray.data.from_items(items, override_num_blocks=max(1, len(items))).map(work)
        parts = [(int(r["start"]), pickle.loads(r["blob"])) for r in ds.take_all()]
        if sorted(p[0] for p in parts) != [it["start"] for it in items]:
            raise ChatforgeError("Ray returned an incomplete set of chunks; rerun, or use --engine local")
        return merge_passes(parts)

    return ray_record_pass
