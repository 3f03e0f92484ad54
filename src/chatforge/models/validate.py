"""Structural checks of model files before a loader touches them: a truncated, random or hand-edited GGUF or
safetensors file gets one clear `ChatforgeError` (what is wrong, at which byte) instead of a `struct.error`,
`SafetensorError` or an out-of-memory crash inside a third-party parser.

    check_gguf_file(path)          -> GGUFSummary (version, tensor count, metadata keys, architecture)
    check_safetensors_file(path)   -> SafetensorsSummary (tensor count, data bytes)
    check_model_folder(folder)     -> checks config.json and every *.safetensors file in an HF folder

Both checks read only the headers plus the file size (never the tensor data), so they cost milliseconds even for
multi-GB files. Every length read from the file is checked against the bytes that remain before it is used, so a
corrupt length field can never make us allocate gigabytes.

Formats, from their specifications: GGUF (ggml's docs/gguf.md: magic "GGUF", version, tensor and metadata counts,
typed key/value metadata, tensor infos with ggml type and offset, aligned data section) and safetensors
(8-byte little-endian header length, a JSON header of name -> dtype/shape/data_offsets, then one flat byte buffer).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from chatforge.errors import ChatforgeError

__all__ = [
    "GGML_BLOCK_SIZES",
    "GGUFSummary",
    "SafetensorsSummary",
    "check_gguf_file",
    "check_model_folder",
    "check_safetensors_file",
]

# ggml tensor type id -> (elements per block, bytes per block), as the GGUF spec's ggml_type enum defines them.
GGML_BLOCK_SIZES: dict[int, tuple[int, int]] = {
    0: (1, 4),  # F32
    1: (1, 2),  # F16
    2: (32, 18),  # Q4_0
    3: (32, 20),  # Q4_1
    6: (32, 22),  # Q5_0
    7: (32, 24),  # Q5_1
    8: (32, 34),  # Q8_0
    9: (32, 40),  # Q8_1
    10: (256, 84),  # Q2_K
    11: (256, 110),  # Q3_K
    12: (256, 144),  # Q4_K
    13: (256, 176),  # Q5_K
    14: (256, 210),  # Q6_K
    15: (256, 292),  # Q8_K
    16: (256, 66),  # IQ2_XXS
    17: (256, 74),  # IQ2_XS
    18: (256, 98),  # IQ3_XXS
    19: (256, 50),  # IQ1_S
    20: (32, 18),  # IQ4_NL
    21: (256, 110),  # IQ3_S
    22: (256, 82),  # IQ2_S
    23: (256, 136),  # IQ4_XS
    24: (1, 1),  # I8
    25: (1, 2),  # I16
    26: (1, 4),  # I32
    27: (1, 8),  # I64
    28: (1, 8),  # F64
    29: (256, 56),  # IQ1_M
    30: (1, 2),  # BF16
    34: (256, 54),  # TQ1_0
    35: (256, 66),  # TQ2_0
    39: (32, 17),  # MXFP4
}

# GGUF metadata value types: id -> (struct format, size); 8 = string, 9 = array are handled apart.
_SCALARS = {
    0: ("<B", 1),
    1: ("<b", 1),
    2: ("<H", 2),
    3: ("<h", 2),
    4: ("<I", 4),
    5: ("<i", 4),
    6: ("<f", 4),
    7: ("<?", 1),
    10: ("<Q", 8),
    11: ("<q", 8),
    12: ("<d", 8),
}
_STRING, _ARRAY = 8, 9
_MAX_DIMS = 4  # GGML_MAX_DIMS
_MAX_COUNT = 10_000_000  # tensors or metadata entries; real files hold a few thousand
_KEEP_VALUES = ("general.architecture", "general.name", "general.alignment")


@dataclass
class GGUFSummary:
    path: Path
    version: int
    tensor_count: int
    metadata: dict[str, Any] = field(default_factory=dict)  # scalar and string values (arrays: their length)
    data_offset: int = 0

    @property
    def architecture(self) -> str | None:
        arch = self.metadata.get("general.architecture")
        return arch if isinstance(arch, str) else None


@dataclass
class SafetensorsSummary:
    path: Path
    tensor_count: int
    data_bytes: int
    metadata: dict[str, str] = field(default_factory=dict)


class _Reader:
    """Bounded little-endian reads from a file; every failure names the file, the byte offset and what was read."""

    def __init__(self, fh: BinaryIO, path: Path, size: int, kind: str):
        self.fh, self.path, self.size, self.kind = fh, path, size, kind

    @property
    def pos(self) -> int:
        return self.fh.tell()

    def fail(self, message: str) -> ChatforgeError:
        return ChatforgeError(f"{self.path}: not a valid {self.kind} file: {message}")

    def read(self, n: int, what: str) -> bytes:
        if n < 0 or n > self.size - self.pos:
            raise self.fail(
                f"truncated at byte {self.pos} while reading {what} ({n} bytes needed, "
                f"{max(self.size - self.pos, 0)} left; the file is {self.size} bytes)"
            )
        data = self.fh.read(n)
        if len(data) != n:  # the file shrank while we read it
            raise self.fail(f"truncated at byte {self.pos} while reading {what}")
        return data

    def unpack(self, fmt: str, what: str) -> Any:
        return struct.unpack(fmt, self.read(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        length = self.unpack("<Q", f"the length of {what}")
        if length > self.size - self.pos:
            raise self.fail(f"{what} claims {length} bytes at byte {self.pos - 8}, beyond the end of the file")
        raw = self.read(length, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.fail(f"{what} at byte {self.pos - length} is not UTF-8 ({e.reason})") from None


def _open(path: str | Path, kind: str) -> tuple[Path, int]:
    path = Path(path)
    if not path.is_file():
        raise ChatforgeError(f"{kind} file not found: {path}")
    try:
        size = path.stat().st_size
    except OSError as e:
        raise ChatforgeError(f"{path}: cannot read: {e.strerror or e}") from None
    return path, size


def _gguf_value(r: _Reader, vtype: int, key: str, depth: int = 0) -> Any:
    if vtype in _SCALARS:
        fmt, _ = _SCALARS[vtype]
        return r.unpack(fmt, f"the value of {key!r}")
    if vtype == _STRING:
        return r.string(f"the string value of {key!r}")
    if vtype == _ARRAY:
        if depth > 2:
            raise r.fail(f"metadata {key!r} nests arrays too deeply")
        item_type = r.unpack("<I", f"the array type of {key!r}")
        count = r.unpack("<Q", f"the array length of {key!r}")
        if item_type in _SCALARS:
            nbytes = count * _SCALARS[item_type][1]
            if nbytes > r.size - r.pos:
                raise r.fail(f"array {key!r} claims {count} items ({nbytes} bytes), beyond the end of the file")
            r.fh.seek(nbytes, 1)  # the values are not needed: skip them without reading
            return count
        if item_type not in (_STRING, _ARRAY):
            raise r.fail(f"array {key!r} has unknown item type {item_type}")
        if count * 8 > r.size - r.pos:  # every string/array item takes at least 8 bytes
            raise r.fail(f"array {key!r} claims {count} items, more than the file can hold")
        if item_type == _STRING:  # e.g. a 150k-token vocabulary: check and skip each string without decoding it
            fh, size, unpack = r.fh, r.size, struct.Struct("<Q").unpack
            for j in range(count):
                head = fh.read(8)
                if len(head) < 8:
                    raise r.fail(f"truncated at byte {fh.tell()} in item {j} of array {key!r}")
                (length,) = unpack(head)
                if length > size - fh.tell():
                    raise r.fail(f"item {j} of array {key!r} claims {length} bytes, beyond the end of the file")
                fh.seek(length, 1)
            return count
        for _ in range(count):
            _gguf_value(r, item_type, key, depth + 1)
        return count
    raise r.fail(f"metadata {key!r} has unknown value type {vtype} (at byte {r.pos - 4})")


def check_gguf_file(path: str | Path) -> GGUFSummary:
    """Parse a GGUF file's header, metadata and tensor infos; check every tensor's data lies inside the file.

    Raises ChatforgeError naming the file and the first problem (bad magic, unsupported version, truncation at a
    byte offset, impossible counts or shapes, unknown tensor types, tensor data past the end of the file).
    """
    path, size = _open(path, "GGUF")
    with path.open("rb") as fh:
        r = _Reader(fh, path, size, "GGUF")
        magic = r.read(4, "the magic number") if size >= 4 else b""
        if magic != b"GGUF":
            raise r.fail(f"it does not start with the GGUF magic (got {magic[:4]!r}; the file is {size} bytes)")
        version = r.unpack("<I", "the version")
        if version not in (1, 2, 3):
            raise r.fail(f"unsupported GGUF version {version} (1, 2 and 3 exist)")
        count_fmt = "<I" if version == 1 else "<Q"
        n_tensors = r.unpack(count_fmt, "the tensor count")
        n_kv = r.unpack(count_fmt, "the metadata count")
        for what, n in (("tensors", n_tensors), ("metadata entries", n_kv)):
            if n > _MAX_COUNT:
                raise r.fail(f"it claims {n} {what}, which no real model has (corrupt header?)")
        summary = GGUFSummary(path, version, n_tensors)
        for i in range(n_kv):
            key = r.string(f"metadata key #{i}")
            vtype = r.unpack("<I", f"the type of {key!r}")
            value = _gguf_value(r, vtype, key)
            if key in _KEEP_VALUES or not isinstance(value, str) or len(value) < 256:
                summary.metadata[key] = value
        alignment = summary.metadata.get("general.alignment", 32)
        if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0 or alignment % 8:
            raise r.fail(f"general.alignment must be a positive multiple of 8, got {alignment!r}")
        extents = []
        for i in range(n_tensors):
            name = r.string(f"the name of tensor #{i}")
            n_dims = r.unpack("<I", f"the dimension count of {name!r}")
            if not 1 <= n_dims <= _MAX_DIMS:
                raise r.fail(f"tensor {name!r} has {n_dims} dimensions (1 to {_MAX_DIMS} allowed)")
            dims = [r.unpack("<Q", f"the shape of {name!r}") for _ in range(n_dims)]
            ggml_type = r.unpack("<I", f"the type of {name!r}")
            offset = r.unpack("<Q", f"the data offset of {name!r}")
            if ggml_type not in GGML_BLOCK_SIZES:
                raise r.fail(f"tensor {name!r} has unknown ggml type {ggml_type}")
            block, block_bytes = GGML_BLOCK_SIZES[ggml_type]
            elements = math.prod(dims)
            if dims and dims[0] % block:
                raise r.fail(f"tensor {name!r}: first dimension {dims[0]} is not a multiple of its block size {block}")
            if offset % alignment:
                raise r.fail(f"tensor {name!r}: data offset {offset} is not aligned to {alignment}")
            extents.append((offset, elements // block * block_bytes, name))
        data_offset = -(-r.pos // alignment) * alignment
        summary.data_offset = data_offset
    data_size = size - data_offset
    for offset, nbytes, name in sorted(extents):
        if offset + nbytes > data_size:
            raise ChatforgeError(
                f"{path}: not a valid GGUF file: truncated: tensor {name!r} needs bytes {data_offset + offset} to "
                f"{data_offset + offset + nbytes} but the file is {size} bytes"
            )
    ends = sorted(extents)
    for (o1, n1, a), (o2, _, b) in zip(ends, ends[1:]):
        if o1 + n1 > o2:
            raise ChatforgeError(f"{path}: not a valid GGUF file: the data of tensors {a!r} and {b!r} overlap")
    return summary


# safetensors dtype -> bytes per element (the dtypes of the safetensors spec)
_ST_DTYPES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "F8_E8M0": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
_ST_SUBBYTE = {"F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}  # bits per element
_MAX_HEADER = 100_000_000  # the safetensors spec's limit on the JSON header


def check_safetensors_file(path: str | Path) -> SafetensorsSummary:
    """Parse a safetensors header and check it against the file: JSON object, known dtypes, shapes matching the byte
    ranges, ranges inside the data buffer and covering it without overlap. Raises ChatforgeError on the first
    problem."""
    path, size = _open(path, "safetensors")

    def fail(message: str) -> ChatforgeError:
        return ChatforgeError(f"{path}: not a valid safetensors file: {message}")

    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise fail(f"only {size} bytes; it must start with an 8-byte header length")
        n = struct.unpack("<Q", head)[0]
        if n > _MAX_HEADER or n > size - 8:
            raise fail(f"the header claims {n} bytes but the file is {size} bytes (truncated, or not safetensors)")
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise fail(f"the {n}-byte header is not valid JSON ({type(e).__name__})") from None
    if not isinstance(header, dict):
        raise fail("the header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise fail("__metadata__ must map strings to strings")
    data_bytes = size - 8 - n
    extents = []
    for name, info in header.items():
        if not isinstance(info, dict):
            raise fail(f"tensor {name!r}: entry is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in _ST_DTYPES and dtype not in _ST_SUBBYTE:
            raise fail(f"tensor {name!r}: unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                   for d in shape):  # fmt: skip
            raise fail(f"tensor {name!r}: shape must be a list of non-negative integers, got {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise fail(f"tensor {name!r}: data_offsets must be [begin, end] with 0 <= begin <= end, got {offsets!r}")
        elements = math.prod(shape)
        if dtype in _ST_DTYPES:
            want = elements * _ST_DTYPES[dtype]
        else:
            want = -(-elements * _ST_SUBBYTE[dtype] // 8)
        if offsets[1] - offsets[0] != want:
            raise fail(
                f"tensor {name!r}: {dtype} {shape} needs {want} bytes but data_offsets span {offsets[1] - offsets[0]}"
            )
        if offsets[1] > data_bytes:
            raise fail(
                f"truncated: tensor {name!r} needs data bytes up to {offsets[1]} but the file holds {data_bytes} "
                f"after its header (the file is {size} bytes)"
            )
        extents.append((offsets[0], offsets[1], name))
    extents.sort()
    for (_, e1, a), (b2, _, b) in zip(extents, extents[1:]):
        if e1 > b2:
            raise fail(f"the data of tensors {a!r} and {b!r} overlap")
    return SafetensorsSummary(path, len(extents), data_bytes, dict(meta))


def check_model_folder(folder: str | Path) -> list[SafetensorsSummary]:
    """An HF model folder: config.json is a JSON object, and every *.safetensors file passes the header check."""
    folder = Path(folder)
    config = folder / "config.json"
    if config.is_file():
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
        except (ValueError, RecursionError) as e:
            where = f" (line {e.lineno})" if isinstance(e, json.JSONDecodeError) else ""
            raise ChatforgeError(f"{config}: not valid JSON{where}: {e}") from None
        if not isinstance(data, dict):
            raise ChatforgeError(f"{config}: must hold a JSON object")
    return [check_safetensors_file(p) for p in sorted(folder.glob("*.safetensors"))]
