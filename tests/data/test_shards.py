"""Token shards: written once (EOT between documents, any num_proc, bounded memory, atomic), streamed as packed rows
(deterministic, exactly resumable, memory-mapped, with document boundaries and held-out validation rows)."""

from __future__ import annotations

import gzip
import itertools
import json
import random
from pathlib import Path

import numpy as np
import pytest

from chatforge.cli import main as cli_main
from chatforge.data import shards as shards_mod
from chatforge.data.shards import (
    ShardDataset,
    bounded_ordered_map,
    segment_positions,
    token_dtype,
    tokenize_to_shards,
)
from chatforge.errors import ChatforgeError, DataError
from chatforge.templates import encode_text

WORDS = "the quick brown fox jumps over a lazy dog 北京 上海 酒店 价格 你好 谢谢 1234567890 , . !".split()


def make_corpus(folder: Path, n_docs: int = 60, seed: int = 0) -> tuple[list[Path], list[str]]:
    """A .txt (paragraphs, CRLF) and a .jsonl file; returns the files and the documents they hold, in order."""
    rng = random.Random(seed)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40))) for _ in range(n_docs)]
    half = n_docs // 2
    txt = folder / "a.txt"
    txt.write_bytes("\r\n\r\n  \r\n".join(d.replace(" , ", "\r\n", 1) for d in docs[:half]).encode("utf-8"))
    docs[:half] = [d.replace(" , ", "\n", 1) for d in docs[:half]]
    docs[half] += " <|im_end|> </s>"  # marker text inside a document must stay plain text
    jsonl = folder / "b.jsonl"
    jsonl.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs[half:]), encoding="utf-8")
    return [txt, jsonl], docs


def stream(ds: ShardDataset) -> np.ndarray:
    return ds.tokens(0, ds.num_tokens)


def test_stream_is_each_document_then_eot(tmp_path, tiny_tok):
    files, docs = make_corpus(tmp_path)
    result = tokenize_to_shards(files, tiny_tok, tmp_path / "out", num_proc=1)
    ds = ShardDataset(tmp_path / "out")
    expected = [encode_text(d, tiny_tok) for d in docs]  # plain tokens + EOS, special-token text kept plain
    assert ds.num_documents == len(docs) == result.documents
    assert stream(ds).tolist() == list(itertools.chain.from_iterable(expected))
    assert [ds.document(i).tolist() for i in range(len(docs))] == expected
    eot = tiny_tok.eos_token_id
    assert ds.eot_id == eot and int((stream(ds) == eot).sum()) == len(docs)  # EOT only between documents
    assert ds.dtype == np.uint16 and ds.index["tokenizer_hash"]
    ds.check_tokenizer(tiny_tok)
    assert (tmp_path / "out" / "tokenizer" / "tokenizer.json").is_file()
    # The same files gzipped stream to the same tokens.
    gz = []
    for f in files:
        gz.append(tmp_path / (f.name + ".gz"))
        gz[-1].write_bytes(gzip.compress(f.read_bytes()))
    tokenize_to_shards(gz, tiny_tok, tmp_path / "gz", num_proc=2)
    assert np.array_equal(stream(ShardDataset(tmp_path / "gz")), stream(ds))


def test_output_is_identical_for_any_num_proc_and_shard_size(tmp_path, tiny_tok):
    files, _ = make_corpus(tmp_path, n_docs=80)
    tokenize_to_shards(files, tiny_tok, tmp_path / "one", num_proc=1, chunk_chars=200)
    tokenize_to_shards(files, tiny_tok, tmp_path / "two", num_proc=2, chunk_chars=50, shard_tokens=97)
    one, two = ShardDataset(tmp_path / "one"), ShardDataset(tmp_path / "two")
    assert len(two.index["shards"]) > 3 and len(one.index["shards"]) == 1
    assert np.array_equal(stream(one), stream(two))
    assert np.array_equal(one.doc_starts, two.doc_starts)
    # Shards end only at document ends.
    for shard in two.index["shards"][:-1]:
        assert shard["offset"] + shard["tokens"] in set(two.doc_starts.tolist())


def test_corpus_larger_than_the_buffer_streams_with_bounded_lookahead(tmp_path, tiny_tok):
    files, docs = make_corpus(tmp_path, n_docs=300)
    tokenize_to_shards(files, tiny_tok, tmp_path / "out", num_proc=2, chunk_chars=64, shard_tokens=500)
    ds = ShardDataset(tmp_path / "out")
    assert ds.num_documents == 300 and len(ds.index["shards"]) > 5
    assert stream(ds).tolist() == list(itertools.chain.from_iterable(encode_text(d, tiny_tok) for d in docs))

    # The writer's map never pulls more than max_inflight items ahead of what it has handed back.
    pulled, lead = [0], []

    def items():
        for i in range(100):
            pulled[0] += 1
            yield (i,)

    out = []
    for value in bounded_ordered_map(lambda x: x * 2, items(), shards_mod._Inline(), max_inflight=3):
        lead.append(pulled[0] - len(out))
        out.append(value)
    assert out == [2 * i for i in range(100)] and max(lead) <= 3


def test_one_document_per_file_read_in_pieces(tmp_path, tiny_tok, monkeypatch):
    monkeypatch.setattr(shards_mod, "FILE_PIECE_CHARS", 100)
    texts = ["第一回 宴桃园豪杰三结义\r\n\r\n    滚滚长江东逝水，浪花淘尽英雄。\r\n" * 20, "short file\n"]
    files = []
    for i, text in enumerate(texts):
        (tmp_path / f"{i}.txt").write_bytes(text.encode("utf-8"))
        files.append(tmp_path / f"{i}.txt")
    tokenize_to_shards(files, tiny_tok, tmp_path / "out", num_proc=1, text_unit="file")
    ds = ShardDataset(tmp_path / "out")
    assert ds.num_documents == 2
    for i, text in enumerate(texts):
        doc = ds.document(i).tolist()
        assert doc[-1] == tiny_tok.eos_token_id and tiny_tok.eos_token_id not in doc[:-1]
        assert tiny_tok.decode(doc[:-1]) == text.replace("\r\n", "\n")


def test_dtypes(tmp_path, tiny_tok):
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32
    files, _ = make_corpus(tmp_path, n_docs=10)
    tokenize_to_shards(files, tiny_tok, tmp_path / "u16", num_proc=1)
    tokenize_to_shards(files, tiny_tok, tmp_path / "u32", num_proc=1, dtype="uint32")
    a, b = ShardDataset(tmp_path / "u16"), ShardDataset(tmp_path / "u32")
    assert (a.dtype, b.dtype) == (np.uint16, np.uint32)
    assert (tmp_path / "u32" / "shard_00000.bin").stat().st_size == 2 * (
        tmp_path / "u16" / "shard_00000.bin"
    ).stat().st_size
    assert np.array_equal(stream(a), stream(b))

    class Huge:  # a 70k vocabulary cannot be stored as uint16
        eos_token_id = 0

        def __len__(self):
            return 70_000

    with pytest.raises(ChatforgeError, match="does not fit uint16"):
        tokenize_to_shards(files, Huge(), tmp_path / "x", dtype="uint16")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, tiny_tok):
    folder = tmp_path_factory.mktemp("shards")
    files, _ = make_corpus(folder, n_docs=120)
    tokenize_to_shards(files, tiny_tok, folder / "out", num_proc=1, shard_tokens=300)
    return folder / "out"


def rows(it, n):
    return [(ids.tolist(), b.tolist()) for ids, b in itertools.islice(it, n)]


def test_resume_is_exact_across_epochs(dataset):
    ds = ShardDataset(dataset, val_rows=3)
    per_epoch = len(ds.train_row_indices(16))
    n = 3 * per_epoch + 5
    full = rows(ds.packed_rows(16, seed=7), n)
    for k in (0, 1, per_epoch - 1, per_epoch, per_epoch + 2, 2 * per_epoch + 9):
        assert rows(ShardDataset(dataset, val_rows=3).packed_rows(16, seed=7, start_position=k), n - k) == full[k:]
    k = per_epoch + 4
    pos = ds.position_dict(k, 16)
    assert pos == {"epoch": 1, "row": 4}
    assert rows(ds.packed_rows(16, seed=7, start_position=pos), 6) == full[k : k + 6]


def test_order_is_deterministic_and_each_epoch_is_a_permutation(dataset):
    ds = ShardDataset(dataset, val_rows=0.1)
    n = len(ds.train_row_indices(16))
    a = rows(ds.packed_rows(16, seed=1), 2 * n)
    assert a == rows(ds.packed_rows(16, seed=1), 2 * n)
    assert a != rows(ds.packed_rows(16, seed=2), 2 * n)
    assert a[:n] != a[n:]  # a fresh order per epoch
    every_row = {tuple(ds.row(r, 16)[0].tolist()) for r in ds.train_row_indices(16)}
    assert {tuple(ids) for ids, _ in a[:n]} == every_row
    in_order = rows(ds.packed_rows(16, shuffle=False, epochs=1), n + 5)
    assert len(in_order) == n and [ids for ids, _ in in_order] == [
        ds.row(r, 16)[0].tolist() for r in ds.train_row_indices(16)
    ]


def test_validation_rows_are_fixed_and_disjoint(dataset):
    ds = ShardDataset(dataset, val_rows=0.1)
    val = ds.val_row_indices(16)
    assert len(val) == round(0.1 * ds.num_rows(16)) > 0
    assert not set(val.tolist()) & set(ds.train_row_indices(16).tolist())
    assert np.array_equal(val, ShardDataset(dataset, val_rows=0.1).val_row_indices(16))
    got = [ids.tolist() for ids, _ in ds.packed_rows(16, seed=99, split="val")]
    assert got == [ds.row(r, 16)[0].tolist() for r in val]
    with pytest.raises(ChatforgeError, match="cannot hold out"):
        ShardDataset(dataset, val_rows=10**9).val_row_indices(16)


def test_rows_carry_document_boundaries(dataset):
    ds = ShardDataset(dataset)
    eot = ds.eot_id
    seen_inner = 0
    for r in range(ds.num_rows(32)):
        ids, bounds = ds.row(r, 32)
        assert ids.dtype == np.int64 and len(ids) == 32
        # A document starts at row start or right after an EOT (EOT appears only at document ends).
        after_eot = [p for p in range(1, 32) if ids[p - 1] == eot]
        assert bounds[0] == 0 and bounds[1:].tolist() == after_eot
        seen_inner += len(after_eot)
        seg, pos = segment_positions(bounds, 32)
        assert seg[0] == 0 and seg[-1] == len(bounds) - 1
        assert all(pos[b] == 0 for b in bounds) and pos[-1] == 31 - bounds[-1]
    assert seen_inner > 10


def test_rows_become_packed_batches_with_document_masking(dataset):
    import torch

    from chatforge.data.shards import as_packed_row
    from chatforge.training.packing import IGNORE, collate

    ds = ShardDataset(dataset)
    got = list(itertools.islice(ds.packed_rows(32, seed=0), 4))
    batch = collate([as_packed_row(ids, b) for ids, b in got], pad_id=0)
    for k, (ids, bounds) in enumerate(got):
        assert torch.equal(batch["input_ids"][k], torch.from_numpy(ids))
        seg, pos = segment_positions(bounds, 32)
        assert torch.equal(batch["position_ids"][k], torch.from_numpy(pos))
        assert torch.equal(batch["document_ids"][k], torch.from_numpy(seg))
        assert all(int(batch["labels"][k, b]) == IGNORE for b in bounds)  # no label across a document boundary
    plain = collate([as_packed_row(ids, b, document_mask=False) for ids, b in got], pad_id=0)
    assert torch.equal(plain["position_ids"][0], torch.arange(32)) and int((plain["labels"] == IGNORE).sum()) == 4


def test_shards_are_memory_mapped_not_read(tmp_path, tiny_tok):
    files, _ = make_corpus(tmp_path, n_docs=10)
    out = tmp_path / "out"
    tokenize_to_shards(files, tiny_tok, out, num_proc=1)
    # Append a 1 GiB sparse shard (512Mi uint16 tokens of id 0): reading it fully would show in the process's RSS.
    index = json.loads((out / "index.json").read_text())
    big = 1 << 29
    with open(out / "shard_00001.bin", "wb") as fh:
        fh.truncate(2 * big)
    index["shards"].append({"file": "shard_00001.bin", "offset": index["tokens"], "tokens": big, "documents": 0})
    index["tokens"] += big
    (out / "index.json").write_text(json.dumps(index))

    def rss_mb() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        pytest.skip("no /proc/self/status")

    before = rss_mb()
    ds = ShardDataset(out)
    assert all(isinstance(m, np.memmap) for m in ds._maps)
    got = rows(ds.packed_rows(1 << 16, seed=0, start_position=3), 5)
    assert len(got) == 5 and all(len(ids) == 1 << 16 for ids, _ in got)
    assert rss_mb() - before < 150  # a full read would be > 1000 MB


def test_bad_input_is_a_located_error_and_leaves_no_output(tmp_path, tiny_tok):
    files, _ = make_corpus(tmp_path, n_docs=10)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": 3}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl, line 2, field 'text'"):
        tokenize_to_shards([*files, bad], tiny_tok, tmp_path / "out", num_proc=2)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))
    array = tmp_path / "array.json"
    array.write_text('[{"text": "a"}]', encoding="utf-8")
    with pytest.raises(DataError, match="array.json, line 1: a JSON array cannot be streamed"):
        tokenize_to_shards([array], tiny_tok, tmp_path / "out", num_proc=1)
    with pytest.raises(ChatforgeError, match="no index.json"):
        ShardDataset(tmp_path / "nothing")
    tokenize_to_shards(files, tiny_tok, tmp_path / "out", num_proc=1)
    with pytest.raises(ChatforgeError, match="--overwrite"):
        tokenize_to_shards(files, tiny_tok, tmp_path / "out", num_proc=1)


def test_cli(tmp_path, tiny_tok, capsys):
    files, docs = make_corpus(tmp_path, n_docs=20)
    tiny_tok.save_pretrained(str(tmp_path / "tok"))
    argv = ["data", "tokenize", "--input", *map(str, files), "--tokenizer", str(tmp_path / "tok"),
            "--output", str(tmp_path / "out"), "--num-proc", "1"]  # fmt: skip
    assert cli_main(argv) == 0
    assert "in 20 documents" in capsys.readouterr().out
    assert ShardDataset(tmp_path / "out").num_documents == len(docs)
    missing = ["data", "tokenize", "--input", str(tmp_path / "nope.txt"), "--tokenizer", str(tmp_path / "tok"),
               "--output", str(tmp_path / "o2")]  # fmt: skip
    assert cli_main(missing) == 2
    assert "nope.txt: input file not found" in capsys.readouterr().err
