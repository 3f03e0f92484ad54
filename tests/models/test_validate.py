"""models.validate: valid GGUF/safetensors files pass; truncated, random and corrupted ones give one clear
ChatforgeError (never struct.error, SafetensorError, MemoryError) and are refused in milliseconds."""

from __future__ import annotations

import json
import random
import struct
import time

import numpy as np
import pytest
from safetensors.numpy import save_file

from chatforge.errors import ChatforgeError
from chatforge.models.tiny import tiny_llama
from chatforge.models.validate import (
    GGML_BLOCK_SIZES,
    check_gguf_file,
    check_model_folder,
    check_safetensors_file,
)


@pytest.fixture(scope="module")
def gguf_bytes(tmp_path_factory, tiny_tok):
    pytest.importorskip("gguf")
    from tiny_gguf import write_tiny_gguf  # tests/models is on sys.path

    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_tiny_gguf(path, tiny_llama(len(tiny_tok)), tiny_tok)
    return path.read_bytes()


@pytest.fixture(scope="module")
def st_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("st") / "model.safetensors"
    rng = np.random.default_rng(0)
    save_file(
        {"a": rng.standard_normal((16, 8)).astype(np.float32), "b": np.arange(10, dtype=np.int64), "c": np.zeros(0)},
        str(path),
        metadata={"format": "pt"},
    )
    return path.read_bytes()


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_block_sizes_match_the_gguf_package():
    gguf = pytest.importorskip("gguf")
    theirs = {int(k): tuple(v) for k, v in gguf.constants.GGML_QUANT_SIZES.items()}
    assert {k: v for k, v in theirs.items() if k in GGML_BLOCK_SIZES} == GGML_BLOCK_SIZES


def test_valid_files_pass(tmp_path, gguf_bytes, st_bytes):
    summary = check_gguf_file(_write(tmp_path, "ok.gguf", gguf_bytes))
    assert summary.version == 3 and summary.architecture == "llama" and summary.tensor_count > 10
    st = check_safetensors_file(_write(tmp_path, "ok.safetensors", st_bytes))
    assert st.tensor_count == 3 and st.metadata == {"format": "pt"}


def test_every_truncation_of_a_gguf_is_refused(tmp_path, gguf_bytes):
    cuts = sorted({0, 3, 4, 7, 8, 15, 16, 23, 24, *random.Random(0).sample(range(25, len(gguf_bytes) - 64), 60)})
    for cut in cuts:
        path = _write(tmp_path, "cut.gguf", gguf_bytes[:cut])
        with pytest.raises(ChatforgeError, match=r"cut\.gguf: not a valid GGUF file: "):
            check_gguf_file(path)


def test_every_truncation_of_a_safetensors_file_is_refused(tmp_path, st_bytes):
    for cut in range(0, len(st_bytes) - 1, 7):
        path = _write(tmp_path, "cut.safetensors", st_bytes[:cut])
        with pytest.raises(ChatforgeError, match=r"cut\.safetensors: not a valid safetensors file: "):
            check_safetensors_file(path)


@pytest.mark.parametrize("seed", range(20))
def test_random_bytes_are_refused(tmp_path, seed):
    data = random.Random(seed).randbytes(random.Random(seed).randrange(0, 5000))
    with pytest.raises(ChatforgeError):
        check_gguf_file(_write(tmp_path, "r.gguf", b"GGUF" + data if seed % 2 else data))
    with pytest.raises(ChatforgeError):
        check_safetensors_file(_write(tmp_path, "r.safetensors", data))


def test_header_bit_flips_never_escape_as_other_errors(tmp_path, gguf_bytes, st_bytes):
    """A flipped byte in the header either still parses or is a ChatforgeError: nothing else, and fast."""
    rng = random.Random(1)
    for _ in range(150):
        for name, data, check in (
            ("f.gguf", gguf_bytes, check_gguf_file),
            ("f.safetensors", st_bytes, check_safetensors_file),
        ):
            buf = bytearray(data)
            i = rng.randrange(0, min(len(buf), 4096))
            buf[i] ^= 1 << rng.randrange(8)
            t0 = time.perf_counter()
            try:
                check(_write(tmp_path, name, bytes(buf)))
            except ChatforgeError:
                pass
            assert time.perf_counter() - t0 < 2


def test_huge_claimed_lengths_are_refused_without_allocating(tmp_path):
    gguf = b"GGUF" + struct.pack("<IQQ", 3, 1, 1) + struct.pack("<Q", 2**62)  # a key 4 EiB long
    with pytest.raises(ChatforgeError, match="beyond the end of the file"):
        check_gguf_file(_write(tmp_path, "k.gguf", gguf))
    gguf = b"GGUF" + struct.pack("<IQQ", 3, 2**40, 0)
    with pytest.raises(ChatforgeError, match="no real model has"):
        check_gguf_file(_write(tmp_path, "n.gguf", gguf))
    with pytest.raises(ChatforgeError, match="unsupported GGUF version 7"):
        check_gguf_file(_write(tmp_path, "v.gguf", b"GGUF" + struct.pack("<IQQ", 7, 0, 0)))


def _st(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


@pytest.mark.parametrize(
    "header,data,words",
    [
        ({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, "truncated"),
        ({"t": {"dtype": "Q9", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 16, "unknown dtype"),
        ({"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}, b"\0" * 16, "needs 12 bytes"),
        ({"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}, b"", "non-negative"),
        ({"t": {"dtype": "F32", "shape": [4], "data_offsets": [16, 0]}}, b"\0" * 16, "data_offsets"),
        (
            {
                "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]},
            },
            b"\0" * 16,
            "overlap",
        ),
        ({"t": "x"}, b"", "not an object"),
        ({"__metadata__": {"a": 1}}, b"", "__metadata__"),
    ],
)
def test_inconsistent_safetensors_headers(tmp_path, header, data, words):
    with pytest.raises(ChatforgeError, match=words):
        check_safetensors_file(_write(tmp_path, "h.safetensors", _st(header, data)))


def test_model_folder_check(tmp_path, st_bytes):
    _write(tmp_path, "model.safetensors", st_bytes)
    _write(tmp_path, "config.json", b'{"model_type": "llama"}')
    assert len(check_model_folder(tmp_path)) == 1
    _write(tmp_path, "config.json", b'{"model_type": ')
    with pytest.raises(ChatforgeError, match="config.json: not valid JSON"):
        check_model_folder(tmp_path)
    _write(tmp_path, "config.json", b"{}")
    _write(tmp_path, "model.safetensors", st_bytes[:100])
    with pytest.raises(ChatforgeError, match="not a valid safetensors"):
        check_model_folder(tmp_path)


def test_missing_file(tmp_path):
    with pytest.raises(ChatforgeError, match="not found"):
        check_gguf_file(tmp_path / "none.gguf")


@pytest.mark.real_model
def test_the_embedded_gguf_passes(smollm2_available):
    from chatforge.models.loading import embedded_gguf_path

    summary = check_gguf_file(embedded_gguf_path())
    assert summary.architecture == "llama" and summary.tensor_count == 272
