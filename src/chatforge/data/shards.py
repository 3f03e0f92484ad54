"""Token shards for pretraining on corpora larger than memory: written once, then streamed as packed rows.

    chatforge data tokenize --input a.txt b.jsonl.gz --tokenizer DIR --output shards/ [--num-proc N]

    ds = ShardDataset("shards/", val_rows=0.01)
    for row_ids, boundaries in ds.packed_rows(seq_len=1024, seed=0, start_position=k): ...

Layout of a shard folder (written to a temporary sibling folder and renamed into place when complete, so a killed run
never leaves a folder that looks finished; `index.json` is the last file written):

- `shard_00000.bin`, ...: the token stream, raw little-endian uint16 (vocabulary <= 65536) or uint32. Every document
  is its tokens followed by one end-of-text token (the tokenizer's EOS); the shards concatenated are one stream.
- `docs.bin`: int64, the stream offset where each document starts (memory-mapped for per-row boundaries).
- `index.json`: format/version, dtype, per-shard file/token/document counts and stream offset, totals, the
  tokenizer's fingerprint (`token_cache.tokenizer_fingerprint`), its EOT id, the input files and how documents were cut.
- `tokenizer/`: a copy of the tokenizer, so a shard folder is self-describing.

Documents: `.jsonl` lines (the `--text-field`, default `text`), `.txt` cut per blank-line-separated paragraph (as
`chatforge.data.readers` does), per line, or one document per file; `.gz` of either. Input is streamed: the reader holds
one chunk of documents per worker in flight, never the corpus. Tokenization runs in `num_proc` worker processes (default
all cores), results are written in input order, so the output is identical for any `num_proc`.

Reading (`ShardDataset`) memory-maps every file; a row is a `seq_len` window of the stream (rows do not overlap; the
tail shorter than one row is unused). A fixed, seed-independent pseudo-random set of rows is held out for validation
(`val_rows`: a count or a fraction). Training rows are visited in a fresh permutation per epoch derived from
(seed, epoch), so position k (rows already consumed) fully determines what comes next: resuming at k yields exactly the
rows an uninterrupted iteration yields after its first k. Each row comes with its document boundaries (segment starts
inside the row, first = 0) so the loop can restart positions and build block-diagonal attention per document.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chatforge.errors import ChatforgeError, DataError

FORMAT = "chatforge-token-shards"
VERSION = 1
INDEX = "index.json"
DOCS = "docs.bin"
TEXT_UNITS = ("paragraph", "line", "file")
# A document read as one file is tokenized in pieces of about this many characters (cut at line ends), so a huge
# single-document file never sits in memory whole.
FILE_PIECE_CHARS = 1 << 20
VAL_SEED = 0x5EED  # the validation rows do not depend on the training seed


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocabulary of at most 65536 tokens), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


# ---------------------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Piece:
    """Text to tokenize; `ends_doc` is False only for a non-final piece of a document read in pieces."""

    text: str
    ends_doc: bool = True


class _Source:
    """One input file opened for streaming text, with its byte position for the progress bar."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.raw = open(path, "rb")  # noqa: SIM115 - closed in close()
        except OSError as e:
            raise DataError(f"cannot read: {e.strerror}", file=str(path), reason="unreadable") from None
        binary = gzip.GzipFile(fileobj=self.raw) if path.suffix.lower() == ".gz" else self.raw
        # Universal newlines: CRLF files (common for Chinese text) read as LF.
        self.text = io.TextIOWrapper(binary, encoding="utf-8-sig", newline=None)
        self.line = 0

    def lines(self) -> Iterator[str]:
        try:
            for line in self.text:
                self.line += 1
                yield line
        except UnicodeDecodeError as e:
            raise DataError(
                f"not UTF-8 text ({e.reason})", file=str(self.path), line=self.line + 1, reason="encoding"
            ) from None
        except (OSError, EOFError) as e:
            raise DataError(f"cannot read: {e}", file=str(self.path), line=self.line + 1, reason="unreadable") from None

    def position(self) -> int:
        return self.raw.tell()

    def close(self) -> None:
        self.text.close()
        self.raw.close()  # GzipFile does not close a file object it was given


def _ext(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def iter_pieces(
    path: str | Path, *, text_unit: str = "paragraph", text_field: str = "text", source: _Source | None = None
) -> Iterator[Piece]:
    """Stream the documents of one `.txt`/`.jsonl` file (optionally `.gz`) as pieces, reading line by line.

    Empty documents are not yielded (an empty JSON Lines text is an error, a blank paragraph is just a separator)."""
    path = Path(path)
    if text_unit not in TEXT_UNITS:
        raise ChatforgeError(f"unknown text unit {text_unit!r}; choose one of: {', '.join(TEXT_UNITS)}")
    ext = _ext(path)
    if ext not in (".txt", ".jsonl", ".json"):
        raise DataError(f"unsupported file type {ext!r} for token shards; use .txt or .jsonl (optionally .gz)",
                        file=str(path), reason="unsupported")  # fmt: skip
    src = source or _Source(path)
    try:
        if ext in (".jsonl", ".json"):
            yield from _jsonl_pieces(src, text_field)
        elif text_unit == "line":
            for line in src.lines():
                if line.strip():
                    yield Piece(line.rstrip("\n"))
        elif text_unit == "paragraph":
            block: list[str] = []
            for line in src.lines():
                if line.strip():
                    block.append(line.rstrip("\n"))
                elif block:
                    yield Piece("\n".join(block))
                    block = []
            if block:
                yield Piece("\n".join(block))
        else:
            yield from _file_pieces(src)
    finally:
        if source is None:
            src.close()


def _jsonl_pieces(src: _Source, text_field: str) -> Iterator[Piece]:
    for line in src.lines():
        if not line.strip():
            continue
        where = dict(file=str(src.path), line=src.line)
        if src.line == 1 and line.lstrip().startswith("["):
            raise DataError("a JSON array cannot be streamed; write one JSON object per line (.jsonl)",
                            reason="wrong_type", **where)  # fmt: skip
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"malformed JSON line: {e.msg} (column {e.colno})", reason="malformed_json", **where
            ) from None
        if not isinstance(record, dict):
            raise DataError(f"expected a JSON object, got {type(record).__name__}", reason="wrong_type", **where)
        if text_field not in record:
            raise DataError(f"missing (keys: {sorted(record)[:8]}); set --text-field", field=text_field,
                            reason="missing_field", **where)  # fmt: skip
        text = record[text_field]
        if not isinstance(text, str):
            raise DataError(f"expected a string, got {type(text).__name__}", field=text_field, reason="wrong_type",
                            **where)  # fmt: skip
        if not text.strip():
            raise DataError("empty text", field=text_field, reason="empty", **where)
        yield Piece(text)


def _file_pieces(src: _Source) -> Iterator[Piece]:
    """The whole file as one document, in pieces cut at line ends (the last piece ends the document)."""
    buf: list[str] = []
    size = 0
    pending: str | None = None
    for line in src.lines():
        buf.append(line)
        size += len(line)
        if size >= FILE_PIECE_CHARS:
            if pending is not None:
                yield Piece(pending, ends_doc=False)
            pending, buf, size = "".join(buf), [], 0
    tail = "".join(buf)
    if pending is not None and not tail.strip():
        yield Piece(pending + tail)
    elif pending is not None:
        yield Piece(pending, ends_doc=False)
        yield Piece(tail)
    elif tail.strip():
        yield Piece(tail)


# ---------------------------------------------------------------------------------------------------------- workers

_WORKER: dict[str, Any] = {}


def _init_worker(tokenizer_json: str, threads: bool) -> None:
    from tokenizers import Tokenizer

    if not threads:
        # One process per core: the Rust tokenizer's own thread pool would only oversubscribe the cores.
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    tok = Tokenizer.from_str(tokenizer_json)
    tok.encode_special_tokens = True  # text that spells a special token stays plain text (cannot forge EOT)
    _WORKER["tok"] = tok


def _encode_chunk(texts: list[str], ends: list[bool], eot: int, dtype: str) -> tuple[bytes, list[int], list[bool]]:
    """Token bytes of a chunk (EOT after each piece that ends a document) and the token count of each piece."""
    tok = _WORKER["tok"]
    encodings = tok.encode_batch_fast(texts, add_special_tokens=False)
    arrays, counts = [], []
    for enc, end in zip(encodings, ends):
        ids = enc.ids + [eot] if end else enc.ids
        arrays.append(np.asarray(ids, dtype=np.int64))
        counts.append(len(ids))
    flat = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
    if flat.size and int(flat.max()) > np.iinfo(dtype).max:
        raise ChatforgeError(f"token id {int(flat.max())} does not fit the shard dtype {dtype}")
    return flat.astype(dtype).tobytes(), counts, ends


def bounded_ordered_map(fn: Callable, items: Iterable, pool, max_inflight: int) -> Iterator:
    """`pool.apply_async(fn, item)` over `items`, results in input order, with at most `max_inflight` submitted and
    not yet consumed: unlike `Pool.imap` (whose feeder thread drains the whole input), memory stays bounded."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.apply_async(fn, item))
        if len(pending) >= max_inflight:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


class _Inline:
    """A stand-in pool that runs tasks in this process (num_proc=1)."""

    class _Done:
        def __init__(self, value):
            self.value = value

        def get(self):
            return self.value

    def apply_async(self, fn, args):
        return self._Done(fn(*args))


# ---------------------------------------------------------------------------------------------------------- writing


@dataclass
class TokenizeResult:
    output: Path
    documents: int
    tokens: int
    shards: int
    seconds: float
    input_bytes: int

    def summary(self) -> str:
        rate = self.tokens / self.seconds if self.seconds else 0.0
        return (
            f"wrote {self.tokens:,} tokens in {self.documents:,} documents to {self.shards} shard(s) in {self.output} "
            f"({self.seconds:.1f} s, {rate:,.0f} tokens/s, {self.input_bytes / max(1, self.tokens):.2f} bytes/token)"
        )


def tokenize_to_shards(
    files: list[str | Path],
    tokenizer,
    output: str | Path,
    *,
    num_proc: int | None = None,
    text_unit: str = "paragraph",
    text_field: str = "text",
    shard_tokens: int = 100_000_000,
    chunk_chars: int = 1 << 20,
    dtype: str | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
) -> TokenizeResult:
    """Tokenize `files` into a shard folder at `output` (see the module docstring). `tokenizer` is a fast HF tokenizer.

    `shard_tokens`: a new shard starts at the first document end past this many tokens. `chunk_chars`: characters per
    task sent to a worker (memory in flight is about 2 * num_proc * chunk_chars)."""
    from chatforge.data.token_cache import tokenizer_fingerprint

    started = time.time()
    paths = [Path(f) for f in files]
    if not paths:
        raise ChatforgeError("no input files given")
    for p in paths:
        if not p.is_file():
            raise DataError("input file not found", file=str(p), reason="missing")
        if _ext(p) not in (".txt", ".jsonl", ".json"):
            raise DataError(f"unsupported file type {_ext(p)!r}; use .txt or .jsonl (optionally .gz)", file=str(p))
    output = Path(output)
    if output.exists() and not overwrite and (not output.is_dir() or any(output.iterdir())):
        raise ChatforgeError(f"output {output} already exists and is not empty; pass --overwrite to replace it")
    eot = tokenizer.eos_token_id
    if eot is None:
        raise ChatforgeError("the tokenizer has no EOS token to put between documents; set eos_token in its config")
    vocab = len(tokenizer)
    np_dtype = token_dtype(vocab) if dtype is None else np.dtype(dtype)
    if np_dtype not in (np.dtype(np.uint16), np.dtype(np.uint32)):
        raise ChatforgeError(f"shard dtype must be uint16 or uint32, not {dtype}")
    if vocab > np.iinfo(np_dtype).max + 1:
        raise ChatforgeError(f"a vocabulary of {vocab} tokens does not fit {np_dtype.name}; use uint32")
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ChatforgeError("chatforge needs a fast (Rust `tokenizers`) tokenizer; this one has no backend_tokenizer")
    num_proc = max(1, int(num_proc or os.cpu_count() or 1))

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    total_bytes = sum(p.stat().st_size for p in paths)
    bar = _progress(total_bytes, progress)
    try:
        sources: list[dict[str, Any]] = []
        writer = _ShardWriter(tmp, np_dtype, shard_tokens)

        def chunks() -> Iterator[tuple]:
            done = 0
            for path in paths:
                src = _Source(path)
                texts, ends, size = [], [], 0
                try:
                    for piece in iter_pieces(path, text_unit=text_unit, text_field=text_field, source=src):
                        texts.append(piece.text)
                        ends.append(piece.ends_doc)
                        size += len(piece.text)
                        if size >= chunk_chars:
                            yield (texts, ends, eot, np_dtype.name)
                            texts, ends, size = [], [], 0
                            bar.update(done + src.position() - bar.n)
                    if texts:
                        yield (texts, ends, eot, np_dtype.name)
                finally:
                    src.close()
                done += path.stat().st_size
                bar.update(done - bar.n)
                stat = path.stat()
                sources.append({"file": str(path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns})

        if num_proc == 1:
            _init_worker(backend.to_str(), threads=True)
            pool, ctx = _Inline(), None
        else:
            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            ctx = mp.get_context(method).Pool(num_proc, initializer=_init_worker, initargs=(backend.to_str(), False))
            pool = ctx
        ok = False
        try:
            for data, counts, ends in bounded_ordered_map(_encode_chunk, chunks(), pool, max_inflight=2 * num_proc):
                writer.write(data, counts, ends)
            ok = True
        finally:
            if ctx is not None:
                # On an error (or Ctrl-C) queued chunks are dropped rather than waited for.
                if ok:
                    ctx.close()
                else:
                    ctx.terminate()
                ctx.join()
            _WORKER.clear()
            writer.close()
        bar.close()
        if writer.documents == 0:
            raise ChatforgeError("the input files hold no documents (all empty)")
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        seconds = time.time() - started
        index = {
            "format": FORMAT,
            "version": VERSION,
            "complete": True,
            "dtype": np_dtype.name,
            "documents": writer.documents,
            "tokens": writer.total,
            "shards": writer.shards,
            "docs_file": DOCS,
            "eot_id": int(eot),
            "eot_token": tokenizer.eos_token,
            "vocab_size": vocab,
            "tokenizer_hash": tokenizer_fingerprint(tokenizer),
            "tokenizer_name": str(getattr(tokenizer, "name_or_path", "") or ""),
            "text_unit": text_unit,
            "text_field": text_field,
            "sources": sources,
            "seconds": round(seconds, 3),
        }
        (tmp / INDEX).write_text(json.dumps(index, ensure_ascii=False, indent=1), encoding="utf-8")
        if output.exists():
            old = output.with_name(f".{output.name}.old-{os.getpid()}")
            output.rename(old)
            tmp.rename(output)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(output)
    except BaseException:
        bar.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return TokenizeResult(output, writer.documents, writer.total, len(writer.shards), seconds, total_bytes)


class _ShardWriter:
    """Appends token bytes to the current shard, starts a new one at a document end past `shard_tokens`."""

    def __init__(self, folder: Path, dtype: np.dtype, shard_tokens: int):
        self.folder, self.dtype, self.limit = folder, dtype, max(1, int(shard_tokens))
        self.shards: list[dict[str, Any]] = []
        self.total = 0  # tokens written
        self.documents = 0
        self.doc_open = False  # the last piece did not end its document
        self.docs = open(folder / DOCS, "wb")  # noqa: SIM115
        self.fh = None

    def _start_shard(self) -> None:
        name = f"shard_{len(self.shards):05d}.bin"
        self.fh = open(self.folder / name, "wb")  # noqa: SIM115
        self.shards.append({"file": name, "offset": self.total, "tokens": 0, "documents": 0})

    def write(self, data: bytes, counts: list[int], ends: list[bool]) -> None:
        # Pieces are written one at a time so a shard can end at any document end.
        pos, item, starts = 0, self.dtype.itemsize, []
        for n, end in zip(counts, ends):
            if self.fh is None:
                self._start_shard()
            if not self.doc_open:
                starts.append(self.total)
                self.documents += 1
                self.shards[-1]["documents"] += 1
            self.fh.write(data[pos : pos + n * item])
            pos += n * item
            self.total += n
            self.shards[-1]["tokens"] += n
            self.doc_open = not end
            if end and self.shards[-1]["tokens"] >= self.limit:
                self._end_shard()
        if starts:
            self.docs.write(np.asarray(starts, dtype=np.int64).tobytes())

    def _end_shard(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None

    def close(self) -> None:
        self._end_shard()
        if not self.docs.closed:
            self.docs.close()


def _progress(total: int, enabled: bool | None):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc="tokenize", disable=(not sys.stderr.isatty()) if enabled
                is None else not enabled, dynamic_ncols=True)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------- streaming


def is_shard_dir(path: str | Path) -> bool:
    """True for a complete shard folder (its index.json names this format)."""
    index = Path(path) / INDEX
    if not index.is_file():
        return False
    try:
        return json.loads(index.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, json.JSONDecodeError):
        return False


class ShardDataset:
    """Read-only, memory-mapped access to a shard folder, and its packed rows (see the module docstring).

    `val_rows`: rows held out for validation, an int (count) or a float in (0, 1) (fraction of all rows of a given
    `seq_len`); they are the same for every training seed."""

    def __init__(self, path: str | Path, val_rows: int | float = 0):
        self.path = Path(path)
        index_path = self.path / INDEX
        if not index_path.is_file():
            partial = sorted(self.path.parent.glob(f".{self.path.name}.partial-*"))
            hint = (
                f" (an unfinished run left {partial[0].name}; run `chatforge data tokenize` again)" if partial else ""
            )
            raise ChatforgeError(f"{self.path} is not a token shard folder: no {INDEX}{hint}")
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"malformed index: {e.msg}", file=str(index_path), line=e.lineno) from None
        if index.get("format") != FORMAT or index.get("version") != VERSION or not index.get("complete"):
            raise ChatforgeError(f"{index_path} is not a complete {FORMAT} v{VERSION} index")
        self.index = index
        self.dtype = np.dtype(index["dtype"])
        self.eot_id: int = int(index["eot_id"])
        self.vocab_size: int = int(index["vocab_size"])
        self.tokenizer_hash: str = index["tokenizer_hash"]
        self.num_tokens: int = int(index["tokens"])
        self.num_documents: int = int(index["documents"])
        self._maps: list[np.memmap] = []
        self._offsets = np.zeros(len(index["shards"]) + 1, dtype=np.int64)
        for i, shard in enumerate(index["shards"]):
            file = self.path / shard["file"]
            expected = int(shard["tokens"]) * self.dtype.itemsize
            if not file.is_file() or file.stat().st_size != expected:
                raise ChatforgeError(f"shard {file} is missing or truncated (expected {expected} bytes)")
            self._maps.append(np.memmap(file, dtype=self.dtype, mode="r", shape=(int(shard["tokens"]),)))
            self._offsets[i + 1] = self._offsets[i] + int(shard["tokens"])
        if self._offsets[-1] != self.num_tokens:
            raise ChatforgeError(f"{index_path}: shard token counts do not add up to {self.num_tokens}")
        docs = self.path / index.get("docs_file", DOCS)
        if not docs.is_file() or docs.stat().st_size != self.num_documents * 8:
            raise ChatforgeError(f"{docs} is missing or truncated (expected {self.num_documents} document offsets)")
        self.doc_starts = np.memmap(docs, dtype=np.int64, mode="r", shape=(self.num_documents,))
        self.val_spec = val_rows

    def tokenizer_path(self) -> Path:
        """The copy of the tokenizer saved with the shards."""
        return self.path / "tokenizer"

    def check_tokenizer(self, tokenizer) -> None:
        """Raise unless `tokenizer` is the one the shards were written with (same fingerprint)."""
        from chatforge.data.token_cache import tokenizer_fingerprint

        if tokenizer_fingerprint(tokenizer) != self.tokenizer_hash:
            raise ChatforgeError(
                f"the shards in {self.path} were tokenized with a different tokenizer "
                f"({self.index.get('tokenizer_name') or 'see its tokenizer/ folder'}); use that one or tokenize again"
            )

    def tokens(self, start: int, end: int) -> np.ndarray:
        """Stream tokens [start, end) as a new array (reads only those bytes, across shard ends if needed)."""
        if not 0 <= start <= end <= self.num_tokens:
            raise IndexError(f"token range [{start}, {end}) outside [0, {self.num_tokens})")
        first = int(np.searchsorted(self._offsets, start, side="right")) - 1
        parts, pos, i = [], start, max(0, first)
        while pos < end:
            lo = pos - int(self._offsets[i])
            hi = min(end, int(self._offsets[i + 1])) - int(self._offsets[i])
            if hi > lo:
                parts.append(np.asarray(self._maps[i][lo:hi]))
                pos += hi - lo
            i += 1
        return np.concatenate(parts) if len(parts) != 1 else parts[0].copy()

    def document(self, i: int) -> np.ndarray:
        """The tokens of document i, its trailing EOT included."""
        end = int(self.doc_starts[i + 1]) if i + 1 < self.num_documents else self.num_tokens
        return self.tokens(int(self.doc_starts[i]), end)

    def num_rows(self, seq_len: int) -> int:
        return self.num_tokens // int(seq_len)

    def val_row_indices(self, seq_len: int) -> np.ndarray:
        """The held-out rows (sorted row numbers) for this `seq_len`; independent of any training seed."""
        n = self.num_rows(seq_len)
        spec = self.val_spec
        if isinstance(spec, float) and not 0 <= spec < 1:
            raise ChatforgeError(f"val_rows as a fraction must be in [0, 1), got {spec}")
        count = int(round(spec * n)) if isinstance(spec, float) else int(spec)
        if count < 0 or count >= n:
            raise ChatforgeError(f"cannot hold out {count} validation rows of {n} (seq_len {seq_len})")
        if count == 0:
            return np.zeros(0, dtype=np.int64)
        return np.sort(np.random.default_rng(VAL_SEED).permutation(n)[:count]).astype(np.int64)

    def train_row_indices(self, seq_len: int) -> np.ndarray:
        n = self.num_rows(seq_len)
        keep = np.ones(n, dtype=bool)
        keep[self.val_row_indices(seq_len)] = False
        return np.flatnonzero(keep).astype(np.int64)

    def row(self, r: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Row r: (token ids int64 [seq_len], segment starts int32, first 0) -- a segment per document piece."""
        a = int(r) * seq_len
        b = a + seq_len
        ids = self.tokens(a, b).astype(np.int64)
        lo = int(np.searchsorted(self.doc_starts, a, side="right"))
        hi = int(np.searchsorted(self.doc_starts, b, side="left"))
        inner = np.asarray(self.doc_starts[lo:hi], dtype=np.int64) - a
        return ids, np.concatenate([[0], inner]).astype(np.int32)

    def packed_rows(
        self,
        seq_len: int,
        seed: int = 0,
        start_position: int | dict = 0,
        *,
        split: str = "train",
        shuffle: bool = True,
        epochs: int | None = None,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Rows of `seq_len` tokens with their document boundaries, in a deterministic, resumable order.

        Training rows: epoch e visits every training row once, in the permutation of rng(seed, e) (or in stream order
        with shuffle=False); endless unless `epochs` is given. `start_position` = rows already consumed (an int, or
        `{"epoch": e, "row": i}` as from `position_dict`). split="val": the held-out rows once, in order."""
        seq_len = int(seq_len)
        if seq_len < 1:
            raise ChatforgeError(f"seq_len must be positive, got {seq_len}")
        if split == "val":
            rows = self.val_row_indices(seq_len)
            for r in rows[self._as_int(start_position, len(rows)) :]:
                yield self.row(int(r), seq_len)
            return
        if split != "train":
            raise ChatforgeError(f"split must be 'train' or 'val', not {split!r}")
        rows = self.train_row_indices(seq_len)
        if len(rows) == 0:
            raise ChatforgeError(
                f"{self.path}: {self.num_tokens} tokens make no training row of {seq_len} tokens; use a smaller seq_len"
            )
        k = self._as_int(start_position, len(rows))
        epoch, i = divmod(k, len(rows))
        while epochs is None or epoch < epochs:
            order = self._epoch_order(rows, seed, epoch) if shuffle else rows
            for r in order[i:]:
                yield self.row(int(r), seq_len)
            epoch, i = epoch + 1, 0

    @staticmethod
    def _epoch_order(rows: np.ndarray, seed: int, epoch: int) -> np.ndarray:
        return rows[np.random.default_rng([int(seed), int(epoch)]).permutation(len(rows))]

    @staticmethod
    def _as_int(position: int | dict, rows_per_epoch: int) -> int:
        if isinstance(position, dict):
            try:
                return int(position["epoch"]) * rows_per_epoch + int(position["row"])
            except (KeyError, TypeError, ValueError):
                msg = f"a data position must be an int or {{'epoch': e, 'row': i}}, got {position}"
                raise ChatforgeError(msg) from None
        if int(position) < 0:
            raise ChatforgeError(f"a data position must be >= 0, got {position}")
        return int(position)

    def position_dict(self, position: int, seq_len: int) -> dict[str, int]:
        """`{"epoch", "row"}` for a row count (for checkpoints that want a readable position)."""
        epoch, row = divmod(int(position), len(self.train_row_indices(seq_len)))
        return {"epoch": epoch, "row": row}


def segment_positions(boundaries: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(segment id per token, position id restarting at 0 per segment) for a row's boundaries: what a loop needs for
    document masking (block-diagonal attention: attend only where segment ids are equal) and per-document RoPE."""
    b = np.asarray(boundaries, dtype=np.int64)
    seg = np.zeros(seq_len, dtype=np.int64)
    seg[b[1:]] = 1
    seg = np.cumsum(seg)
    pos = np.arange(seq_len, dtype=np.int64) - b[seg]
    return seg, pos


def as_packed_row(ids: np.ndarray, boundaries: np.ndarray, document_mask: bool = True):
    """A `training.packing.PackedRow` for a shard row, ready for `packing.collate`: with `document_mask`, one sample per
    document piece (positions restart, attention stays inside it, no label crosses a boundary); without, the row is
    one sample (plain causal attention over the whole row, as GPT-2/llm.c pretrain)."""
    from chatforge.training.packing import PackedRow

    tokens = [int(t) for t in ids]
    if document_mask:
        lengths = np.diff(np.append(np.asarray(boundaries, dtype=np.int64), len(tokens))).tolist()
    else:
        lengths = [len(tokens)]
    return PackedRow(input_ids=tokens, labels=list(tokens), lengths=[int(n) for n in lengths])


# ---------------------------------------------------------------------------------------------------------- the CLI


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="chatforge data tokenize",
        description="Tokenize text files once into memory-mapped token shards for pretraining (data.shards: DIR).",
    )
    parser.add_argument("--input", nargs="+", required=True, help=".txt / .jsonl files (optionally .gz)")
    parser.add_argument(
        "--tokenizer", required=True, help="a tokenizer folder or model spec (chatforge tokenizer train)"
    )
    parser.add_argument("--output", required=True, help="the shard folder to write")
    parser.add_argument("--num-proc", type=int, default=None, help="worker processes (default: all cores)")
    parser.add_argument(
        "--text-unit",
        choices=TEXT_UNITS,
        default="paragraph",
        help=".txt documents: per blank-line paragraph (default), per line, or one per file",
    )
    parser.add_argument("--text-field", default="text", help=".jsonl field holding the text (default: text)")
    parser.add_argument("--shard-tokens", type=int, default=100_000_000, help="tokens per shard (default 1e8)")
    parser.add_argument("--dtype", choices=("uint16", "uint32"), default=None, help="default: by vocabulary size")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)  # fmt: skip

    from chatforge.models.loading import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer)
    result = tokenize_to_shards(
        args.input,
        tokenizer,
        args.output,
        num_proc=args.num_proc,
        text_unit=args.text_unit,
        text_field=args.text_field,
        shard_tokens=args.shard_tokens,
        dtype=args.dtype,
        overwrite=args.overwrite,
        progress=False if args.no_progress else None,
    )
    print(result.summary())
    return 0
