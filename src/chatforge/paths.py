"""Where chatforge keeps its caches: $CHATFORGE_HOME, default ~/.cache/chatforge."""

from __future__ import annotations

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
