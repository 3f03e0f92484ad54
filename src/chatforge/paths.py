"""Filesystem helpers: where chatforge keeps its caches ($CHATFORGE_HOME, default ~/.cache/chatforge), file hashing."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def chatforge_home() -> Path:
    """The user cache root; created on first use."""
    root = Path(os.environ.get("CHATFORGE_HOME") or Path.home() / ".cache" / "chatforge")
    root.mkdir(parents=True, exist_ok=True)
    return root


def cache_dir(kind: str) -> Path:
    """A sub-folder of the cache for one kind of artefact (models, tokenized, ...)."""
    path = chatforge_home() / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """sha256 of a file's bytes, read in chunks (large model files never sit in memory whole)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()
