"""Training data: read files, encode them with the chat template (SFT) or as raw text (continued pretraining), and
split off a validation set. Batching and batch order live in `training.batching`.

An example is `(input_ids, labels)` with labels -100 on untrained tokens (HF models shift labels internally).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from chatforge.data.schema import Conversation, TextDoc
from chatforge.errors import ChatforgeError, DataError

IGNORE = -100
Example = tuple[list[int], list[int]]


@dataclass
class TrainData:
    train: list[Example]
    val: list[Example]
    # What happened to the records on the way (truncated, dropped with no trained tokens, skipped by the reader...).
    stats: Counter = field(default_factory=Counter)

    def fingerprint(self) -> str:
        """Identifies the encoded training set; a resumed run refuses to continue on different data."""
        h = hashlib.sha256()
        for ids, labels in self.train:
            h.update(np.asarray(ids, dtype=np.int64).tobytes())
            h.update(np.asarray(labels, dtype=np.int64).tobytes())
        return h.hexdigest()[:16]


def read_files(paths: list[str], *, data_cfg) -> tuple[list, Counter]:
    """All records of the given files (or dataset_info names), with the reader's skip counts."""
    from chatforge.data.readers import read_records

    records: list = []
    skipped: Counter = Counter()
    for path in paths:
        # Readers detect the format (incl. `.txt` / `{"text": ...}` for pretraining) unless data.format says it.
        result = read_records(
            path,
            format=data_cfg.format,
            on_error=data_cfg.on_error,
            dataset_info=data_cfg.dataset_info,
            dataset_dir=data_cfg.dataset_dir,
        )
        recs = list(result.records)
        if data_cfg.max_samples is not None:
            recs = recs[: data_cfg.max_samples]
        records.extend(recs)
        for reason, n in result.skipped.items():
            skipped[f"skipped {reason} ({path})"] += n
    return records, skipped


def split_records(records: list, val_size: float, seed: int) -> tuple[list, list]:
    """Deterministic random hold-out of `val_size` (a fraction) of the records."""
    if val_size <= 0 or len(records) < 2:
        return records, []
    order = np.random.default_rng(seed).permutation(len(records))
    n_val = max(1, int(round(len(records) * val_size)))
    val_idx = set(order[:n_val].tolist())
    train = [r for i, r in enumerate(records) if i not in val_idx]
    val = [r for i, r in enumerate(records) if i in val_idx]
    return train, val


def encode_sft(
    records: list, tokenizer, template, *, mask: str, max_length: int, stats: Counter, num_proc: int = 1
) -> list[Example]:
    """Encode conversations through the tokenization cache (`chatforge.data.token_cache`: keyed by the records,
    tokenizer, template and mask, so a re-run or a resumed run skips tokenizing). Over-long conversations are
    truncated (counted); ones left without trained tokens are dropped (counted and reported, never silently)."""
    from chatforge.data.token_cache import cached_tokenize

    for i, conv in enumerate(records):
        if not isinstance(conv, Conversation):
            source = getattr(conv, "meta", {}).get("file")
            raise DataError(
                f"stage sft needs conversations, got {type(conv).__name__} (use train.stage=pt for raw text)",
                file=source,
                record=i,
            )
    if not records:
        return []
    # The cache stores whole conversations; truncation happens here so the counts above stay exact.
    tokenized = cached_tokenize(records, tokenizer, template, mask, None, num_proc)
    if tokenized.info.get("from_cache"):
        stats["tokenized examples loaded from cache"] += len(tokenized)
    out: list[Example] = []
    for i in range(len(tokenized)):
        enc = tokenized.encoded(i)
        ids, labels = list(enc.input_ids), list(enc.labels())
        if len(ids) > max_length:
            stats["truncated to max_length"] += 1
            ids, labels = ids[:max_length], labels[:max_length]
        # labels[0] is never predicted (nothing precedes it), so it does not count as a trained token.
        if not any(lab != IGNORE for lab in labels[1:]):
            stats["dropped: no trained tokens within max_length"] += 1
            continue
        out.append((ids, labels))
    return out


def encode_pt(records: list, tokenizer, *, max_length: int, stats: Counter) -> list[Example]:
    """Encode raw text (text + EOS) and cut long documents into `max_length` blocks; every token trains."""
    from chatforge.templates import encode_text

    out: list[Example] = []
    for i, rec in enumerate(records):
        if isinstance(rec, TextDoc):
            text = rec.text
        elif isinstance(rec, Conversation):
            # Conversations in a pretraining run are trained as their concatenated text.
            text = "\n\n".join(m.content for m in rec.messages if m.content)
        else:
            raise DataError(f"stage pt needs text documents, got {type(rec).__name__}", record=i)
        ids = list(encode_text(text, tokenizer))
        if len(ids) > max_length:
            stats["documents split into max_length blocks"] += 1
        for start in range(0, len(ids), max_length):
            block = ids[start : start + max_length]
            if len(block) >= 2:
                out.append((block, list(block)))
    return out


@dataclass
class RawData:
    """The records of a run, read (and split) before any model is loaded, so bad data fails in seconds."""

    train: list
    val: list
    stats: Counter


def read_data(cfg) -> RawData:
    """Read and split the configured training (and validation) files."""
    dcfg = cfg.data
    if not dcfg.train:
        raise ChatforgeError("data.train: no training files given")
    train_recs, stats = read_files(list(dcfg.train), data_cfg=dcfg)
    if dcfg.val:
        val_recs, val_skipped = read_files(list(dcfg.val), data_cfg=dcfg)
        stats.update(val_skipped)
    else:
        train_recs, val_recs = split_records(train_recs, dcfg.val_size, dcfg.seed)
    if not train_recs:
        raise ChatforgeError(f"data.train: the files hold no records ({dict(stats) or 'they are empty'})")
    return RawData(train_recs, val_recs, stats)


def encode_data(raw: RawData, encode: Callable[[list, Counter], list[Example]]) -> TrainData:
    """`encode(records, stats)` the training and validation records."""
    stats = Counter(raw.stats)
    train = encode(raw.train, stats)
    val = encode(raw.val, stats)
    if not train:
        raise ChatforgeError(f"data.train: no usable training examples ({dict(stats) or 'files are empty'})")
    return TrainData(train, val, stats)


@dataclass
class PairExample:
    """One preference pair as two encoded sequences sharing the prompt; labels only on the reply's tokens."""

    chosen: Example
    rejected: Example


@dataclass
class PairData(TrainData):
    """TrainData whose examples are `PairExample`s (stage dpo)."""

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for pair in self.train:
            for ids, labels in (pair.chosen, pair.rejected):
                h.update(np.asarray(ids, dtype=np.int64).tobytes())
                h.update(np.asarray(labels, dtype=np.int64).tobytes())
                h.update(b"|")
        return h.hexdigest()[:16]


def encode_preferences(
    records: list, tokenizer, template, *, mask: str, max_length: int, stats: Counter
) -> list[PairExample]:
    """Encode preference pairs: prompt + chosen and prompt + rejected through the SFT template and mask, with every
    prompt message marked untrained, so only the reply's tokens count. A reply cut away entirely by `max_length`
    (the prompt alone fills it) drops the pair, counted."""
    from dataclasses import replace

    from chatforge.data.schema import PreferencePair
    from chatforge.templates import encode_conversation

    out: list[PairExample] = []
    for i, rec in enumerate(records):
        if not isinstance(rec, PreferencePair):
            source = getattr(rec, "meta", {}).get("file")
            raise DataError(
                f"stage dpo needs preference pairs (chosen/rejected), got {type(rec).__name__}", file=source, record=i
            )
        prompt = [replace(m, train=False) for m in rec.prompt.messages]
        sides = []
        for reply in (rec.chosen, rec.rejected):
            conv = Conversation([*prompt, replace(reply, train=None)], tools=rec.prompt.tools, meta=rec.prompt.meta)
            enc = encode_conversation(conv, tokenizer, template, mask)
            sides.append((list(enc.input_ids), list(enc.labels())))
        if any(len(ids) > max_length for ids, _ in sides):
            stats["pairs truncated to max_length (prompt cut from the left, reply from the right)"] += 1
            sides = _truncate_pair(sides, max_length)
        if any(all(t == IGNORE for t in lab[1:]) for _, lab in sides):
            stats["pairs dropped: a reply has no trained tokens (prompt fills max_length?)"] += 1
            continue
        out.append(PairExample(*sides))
    return out


def _truncate_pair(sides: list[Example], max_length: int) -> list[Example]:
    """Fit both sequences of a pair into `max_length`: each reply keeps at least half of it (or all of itself), the
    prompt keeps its end (the question and the assistant header) with one budget for both sides."""
    split = [next((k for k, t in enumerate(lab) if t != IGNORE), len(lab)) for _, lab in sides]
    reply_len = [len(ids) - k for (ids, _), k in zip(sides, split)]
    keep_reply = [min(n, max(max_length - k, max_length // 2)) for n, k in zip(reply_len, split)]
    prompt_budget = max_length - max(keep_reply)
    out: list[Example] = []
    for (ids, lab), k, r in zip(sides, split, keep_reply):
        start = max(0, k - prompt_budget)
        out.append((ids[start : k + r], lab[start : k + r]))
    return out
