"""Tokenization cache: tokenized + masked datasets stored once under a content key and reloaded in about a second.

    ds = cached_tokenize(records, tokenizer, "smollm2", mask="all_assistant", max_length=1024, num_proc=2,
                         data_files=["train.jsonl"], config={"format": "auto"})
    ds.input_ids[i], ds.trained[i], len(ds)

The key hashes everything the token ids depend on: the data (file bytes when `data_files` is given, which lets a hit
skip reading and parsing the data entirely; otherwise the records' JSON), the tokenizer (its full `tokenizer.json`
state plus special tokens), the template (its whole definition, not just the name), the mask mode, `max_length`, any
extra `config` the caller says matters, and a format version. Stored under `chatforge.paths.cache_dir("tokenized")/
<key>/`: `data.safetensors` (flat int32 ids, uint8 trained flags, int64 offsets) and `meta.json`; written to a
temporary folder and renamed, so a killed run never leaves a half cache that later looks complete.

Tokenization batches the rendered conversations through the Rust tokenizer's `encode_batch` and computes the trained
mask from character offsets with numpy, which gives exactly the ids and mask of `templates.encode_conversation` (a test
checks this); `num_proc > 1` splits the records over forked worker processes. In a distributed run
(`torch.distributed` initialised) rank 0 tokenizes and writes while the other ranks wait at a barrier, then all load.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from chatforge.data.schema import Conversation, PreferencePair, TextDoc
from chatforge.errors import NotSupportedError
from chatforge.io import TMP_PREFIX, clean_leftovers, fsync_dir, fsync_tree
from chatforge.paths import cache_dir, sha256_file
from chatforge.templates import encode_text, get_template
from chatforge.templates.encode import Encoded, encode_segments, has_forged_marker, special_strings, trained_flags
from chatforge.templates.render import render_segments

CACHE_VERSION = 1


class Ragged:
    """A read-only list of variable-length rows over one flat numpy array (row i = flat[offsets[i]:offsets[i+1]])."""

    def __init__(self, flat: np.ndarray, offsets: np.ndarray):
        self.flat, self.offsets = flat, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.flat[self.offsets[i] : self.offsets[i + 1]]

    def __iter__(self):
        return (self[i] for i in range(len(self)))


@dataclass
class TokenizedDataset:
    """Token ids and trained flags per record (`input_ids[i]`: int32 array, `trained[i]`: bool array)."""

    input_ids: Ragged
    trained: Ragged
    info: dict[str, Any] = field(default_factory=dict)  # key, counts, timings, whether it came from the cache
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.input_ids)

    def lengths(self) -> np.ndarray:
        return np.diff(self.input_ids.offsets)

    def encoded(self, i: int) -> Encoded:
        return Encoded(self.input_ids[i].tolist(), self.trained[i].tolist())


# ------------------------------------------------------------------------------------------------------------ keying


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of the tokenizer's full state: vocab, merges, normalizer, pre-tokenizer, added and special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    state = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    extra = json.dumps(
        {"special": tokenizer.all_special_tokens, "eos": tokenizer.eos_token, "bos": tokenizer.bos_token},
        sort_keys=True,
    )
    return hashlib.sha256((state + extra).encode("utf-8")).hexdigest()


def records_digest(records: Sequence) -> str:
    """Hash of records' content (used when the caller has no data files to hash)."""
    from chatforge.data.clean import record_to_dict

    h = hashlib.sha256()
    for rec in records:
        h.update(json.dumps(record_to_dict(rec), ensure_ascii=False, sort_keys=True).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def cache_key(
    data_digest: str, tokenizer, template, mask: str, max_length: int | None, config: dict[str, Any] | None
) -> str:
    tpl = get_template(template)
    parts = {
        "version": CACHE_VERSION,
        "data": data_digest,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "template": asdict(tpl),
        "mask": mask,
        "max_length": max_length,
        "config": config or {},
    }
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


# -------------------------------------------------------------------------------------------------------- tokenizing

_STATE: dict[str, Any] = {}  # what forked workers inherit (records, tokenizer, template): nothing gets pickled


def _encode_range(bounds: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Encode records[start:end] -> (flat ids int32, flat trained uint8, lengths int64)."""
    start, end = bounds
    records, tokenizer, template, mask, max_length = (
        _STATE[k] for k in ("records", "tokenizer", "template", "mask", "max_length")
    )
    specials = _STATE["specials"]
    backend = tokenizer.backend_tokenizer
    ids_out: list[np.ndarray] = []
    trained_out: list[np.ndarray] = []
    batch_texts, batch_segs, slots = [], [], []
    results: list[tuple[np.ndarray, np.ndarray] | None] = [None] * (end - start)
    for k, rec in enumerate(records[start:end]):
        if isinstance(rec, TextDoc):
            ids = np.asarray(encode_text(rec.text, tokenizer), dtype=np.int32)
            results[k] = (ids, np.ones(len(ids), dtype=np.uint8))
            continue
        if not isinstance(rec, Conversation):
            kind = "preference pairs" if isinstance(rec, PreferencePair) else type(rec).__name__
            raise NotSupportedError(f"the tokenization cache holds conversations and text documents, not {kind}")
        segs = render_segments(rec, template, mask)
        if has_forged_marker(segs, specials):
            # Content that spells a special token takes the careful piecewise path of the templates package.
            enc = encode_segments(segs, tokenizer)
            results[k] = (np.asarray(enc.input_ids, np.int32), np.asarray(enc.trained, np.uint8))
            continue
        batch_texts.append("".join(s.text for s in segs))
        batch_segs.append(segs)
        slots.append(k)
    encodings = backend.encode_batch(batch_texts, add_special_tokens=False) if batch_texts else []
    for k, segs, enc in zip(slots, batch_segs, encodings):
        results[k] = (np.asarray(enc.ids, dtype=np.int32), trained_flags(segs, enc))
    for ids, trained in results:
        if max_length is not None and len(ids) > max_length:
            ids, trained = ids[:max_length], trained[:max_length]
        ids_out.append(ids)
        trained_out.append(trained)
    lengths = np.fromiter((len(x) for x in ids_out), dtype=np.int64, count=len(ids_out))
    empty_i, empty_u = np.zeros(0, np.int32), np.zeros(0, np.uint8)
    return (
        np.concatenate(ids_out) if ids_out else empty_i,
        np.concatenate(trained_out) if trained_out else empty_u,
        lengths,
    )


def tokenize_dataset(
    records: Sequence[Conversation | TextDoc],
    tokenizer,
    template,
    mask: str = "all_assistant",
    max_length: int | None = None,
    num_proc: int = 1,
    chunk_size: int = 2048,
) -> TokenizedDataset:
    """Tokenize and mask records (no cache). Equal to `encode_conversation` per record, truncated to max_length."""
    t0 = time.perf_counter()
    _STATE.update(
        records=records,
        tokenizer=tokenizer,
        template=get_template(template),
        mask=mask,
        max_length=max_length,
        specials=special_strings(tokenizer),
    )
    bounds = [(s, min(s + chunk_size, len(records))) for s in range(0, len(records), chunk_size)]
    try:
        if num_proc > 1 and len(bounds) > 1 and "fork" in mp.get_all_start_methods():
            # Each worker runs its own single-threaded Rust tokenizer; fork shares the records without pickling.
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
            with mp.get_context("fork").Pool(num_proc) as pool:
                parts = pool.map(_encode_range, bounds)
        else:
            parts = [_encode_range(b) for b in bounds]
    finally:
        _STATE.clear()
    ids = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int32)
    trained = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.uint8)
    lengths = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    per_record_trained = np.add.reduceat(trained, offsets[:-1]) if len(trained) else np.zeros(len(lengths))
    per_record_trained = np.where(lengths > 0, per_record_trained, 0)
    info = {
        "records": len(lengths),
        "tokens": int(lengths.sum()),
        "trained_tokens": int(trained.sum()),
        "truncated": int((lengths == max_length).sum()) if max_length else 0,
        "records_without_trained_tokens": int((per_record_trained == 0).sum()),
        "tokenize_seconds": round(time.perf_counter() - t0, 3),
        "num_proc": num_proc,
    }
    return TokenizedDataset(Ragged(ids, offsets), Ragged(trained.view(np.bool_), offsets), info)


# ----------------------------------------------------------------------------------------------------------- caching


def save_tokenized(ds: TokenizedDataset, folder: Path) -> Path:
    """Write atomically: a temporary sibling folder, fsynced, then renamed into place (`chatforge.io`); temp folders
    of killed runs (`.tmp-*`, untouched for an hour) are removed first."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(folder.parent, older_than=3600)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{folder.name}-", dir=folder.parent))
    try:
        save_file(
            {
                "input_ids": ds.input_ids.flat,
                "trained": ds.trained.flat.view(np.uint8),
                "offsets": ds.input_ids.offsets,
            },
            str(tmp / "data.safetensors"),
        )
        (tmp / "meta.json").write_text(json.dumps(ds.info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o755)
        fsync_tree(tmp)
        if folder.exists() and not (folder / "meta.json").exists():
            shutil.rmtree(folder)  # not a cache this module wrote (it renames complete folders only): replace it
        try:
            os.replace(tmp, folder)
        except OSError:
            if not (folder / "meta.json").exists():  # another process won the race with a complete cache: fine
                raise
        fsync_dir(folder.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_tokenized(folder: Path) -> TokenizedDataset:
    arrays = load_file(str(folder / "data.safetensors"))
    info = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    offsets = arrays["offsets"]
    return TokenizedDataset(
        Ragged(arrays["input_ids"], offsets), Ragged(arrays["trained"].view(np.bool_), offsets), info, folder
    )


def _cache_intact(folder: Path) -> bool:
    """Whether a cache folder's files are whole: the safetensors header matches the file, meta.json is an object."""
    from chatforge.errors import ChatforgeError
    from chatforge.models.validate import check_safetensors_file

    try:
        check_safetensors_file(folder / "data.safetensors")
        return isinstance(json.loads((folder / "meta.json").read_text(encoding="utf-8")), dict)
    except (ChatforgeError, OSError, ValueError):
        return False


def _dist() -> tuple[Any, int, int]:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch is a dependency
        return None, 0, 1
    if dist.is_available() and dist.is_initialized():
        return dist, dist.get_rank(), dist.get_world_size()
    return None, 0, 1


def cached_tokenize(
    records: Sequence[Conversation | TextDoc] | Callable[[], Sequence[Conversation | TextDoc]],
    tokenizer,
    template,
    mask: str = "all_assistant",
    max_length: int | None = None,
    num_proc: int = 1,
    *,
    data_files: Sequence[str | Path] | None = None,
    config: dict[str, Any] | None = None,
    root: str | Path | None = None,
) -> TokenizedDataset:
    """`tokenize_dataset` through the cache. `records` may be a callable so a cache hit never loads the data; then
    `data_files` (hashed by bytes) must identify the data, and `config` should hold the reader settings."""
    t0 = time.perf_counter()
    if data_files:
        data_digest = hashlib.sha256("".join(sha256_file(p) for p in data_files).encode()).hexdigest()
    else:
        if callable(records):
            records = records()
        data_digest = records_digest(records)
    key = cache_key(data_digest, tokenizer, template, mask, max_length, config)
    folder = Path(root) / key if root else cache_dir("tokenized") / key
    dist, rank, world = _dist()
    built = None
    if rank == 0 and (folder / "meta.json").exists() and not _cache_intact(folder):
        # A cache damaged after it was written (disk full, a copy cut short, a hand edit): rebuild, never load it.
        print(f"chatforge: tokenization cache {folder} is damaged; rebuilding it", file=sys.stderr)
        shutil.rmtree(folder, ignore_errors=True)
    if rank == 0 and not (folder / "meta.json").exists():
        recs = records() if callable(records) else records
        built = tokenize_dataset(recs, tokenizer, template, mask, max_length, num_proc)
        built.info.update(key=key, template=get_template(template).name, mask=mask, max_length=max_length)
        save_tokenized(built, folder)
    if dist is not None and world > 1:
        dist.barrier()  # every rank passes exactly one barrier: the others wait here until rank 0 has written
    if built is not None:
        built.path = folder
        built.info["from_cache"] = False
        return built
    ds = load_tokenized(folder)
    ds.info["from_cache"] = True
    ds.info["load_seconds"] = round(time.perf_counter() - t0, 3)
    return ds
