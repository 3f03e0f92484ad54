"""`SHA256SUMS` for exported folders and `chatforge verify DIR`, which re-hashes them.

The file uses the `sha256sum` format (`<hex>  <relative path>`, one line per file), so `sha256sum -c SHA256SUMS` works
too; `chatforge verify` additionally reports files that are present but not listed (`sha256sum -c` ignores those).

    chatforge verify exported/demo        # exit 0: all files match; exit 1: missing / extra / changed files
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from chatforge.errors import ChatforgeError
from chatforge.paths import sha256_file

SUMS_NAME = "SHA256SUMS"
_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


def _listed_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != SUMS_NAME)


def write_checksums(folder: Path) -> Path:
    """Write `folder/SHA256SUMS` listing every other file under `folder` (relative POSIX paths, sorted)."""
    lines = [f"{sha256_file(p)}  {p.relative_to(folder).as_posix()}" for p in _listed_files(folder)]
    out = folder / SUMS_NAME
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.chmod(out, 0o644)
    return out


@dataclass
class VerifyResult:
    ok_files: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # listed but absent
    extra: list[str] = field(default_factory=list)  # present but not listed
    changed: list[str] = field(default_factory=list)  # listed with another hash

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.changed)


def read_checksums(sums: Path) -> dict[str, str]:
    """{relative path: sha256} from a SHA256SUMS file; a malformed line is an error naming the file and line."""
    entries: dict[str, str] = {}
    for number, raw in enumerate(sums.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        match = _LINE.match(raw)
        if not match:
            raise ChatforgeError(f"{sums}, line {number}: expected '<64 hex digits>  <path>', got {raw[:80]!r}")
        digest, name = match.group(1).lower(), match.group(2)
        if name.startswith("/") or ".." in Path(name).parts:
            raise ChatforgeError(f"{sums}, line {number}: path {name!r} leaves the folder")
        if name in entries:
            raise ChatforgeError(f"{sums}, line {number}: {name!r} is listed twice")
        entries[name] = digest
    return entries


def verify_folder(folder: str | Path) -> VerifyResult:
    """Re-hash every file of `folder` against its SHA256SUMS."""
    folder = Path(folder)
    sums = folder / SUMS_NAME
    if not folder.is_dir():
        raise ChatforgeError(f"{folder} is not a folder")
    if not sums.is_file():
        raise ChatforgeError(f"{folder} has no {SUMS_NAME} file (chatforge export writes one)")
    expected = read_checksums(sums)
    present = {p.relative_to(folder).as_posix(): p for p in _listed_files(folder)}
    result = VerifyResult()
    for name, digest in sorted(expected.items()):
        path = present.get(name)
        if path is None:
            result.missing.append(name)
        elif sha256_file(path) != digest:
            result.changed.append(name)
        else:
            result.ok_files.append(name)
    result.extra = sorted(set(present) - set(expected))
    return result


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="chatforge verify", description="re-hash an exported folder against its SHA256SUMS"
    )
    ap.add_argument("folder", help="a folder written by chatforge export")
    args = ap.parse_args(argv)
    result = verify_folder(args.folder)
    for label, names in (
        ("missing", result.missing),
        ("extra (not listed)", result.extra),
        ("changed", result.changed),
    ):
        for name in names:
            print(f"{label}: {name}")
    if result.ok:
        print(f"OK: {len(result.ok_files)} files match {Path(args.folder) / SUMS_NAME}")
        return 0
    print(
        f"FAILED: {len(result.changed)} changed, {len(result.missing)} missing, {len(result.extra)} extra "
        f"({len(result.ok_files)} ok)"
    )
    return 1
