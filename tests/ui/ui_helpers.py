"""UI test helpers: a workspace with a tiny model folder and a small chat dataset, and the UI app under a real uvicorn
server on a free loopback port. (Not a conftest.py: tests/serving's `from conftest import ...` must find its own.)"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from chatforge.models.tiny import tiny_llama, tiny_tokenizer

WORDS = ["hello", "world", "fox", "dog", "capital", "Paris", "Berlin", "quick", "lazy", "brown"]


def make_workspace(root: Path) -> Path:
    """models/tiny-model (a random 2-layer Llama + the tiny tokenizer) and data/chat.jsonl (reverse the words)."""
    model = root / "models" / "tiny-model"
    model.mkdir(parents=True)
    tok = tiny_tokenizer()
    tiny_llama(len(tok)).save_pretrained(model)
    tok.save_pretrained(model)
    (root / "data").mkdir()
    rng = random.Random(0)
    with open(root / "data" / "chat.jsonl", "w") as fh:
        for _ in range(24):
            words = [rng.choice(WORDS) for _ in range(rng.randint(2, 8))]
            conv = {
                "messages": [
                    {"role": "user", "content": "reverse: " + " ".join(words)},
                    {"role": "assistant", "content": " ".join(reversed(words))},
                ]
            }
            fh.write(json.dumps(conv) + "\n")
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_in_thread(app) -> Iterator[str]:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
