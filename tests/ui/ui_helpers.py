"""UI test helpers: a workspace with a tiny model folder and a small chat dataset, and the UI app under a real uvicorn
server on a free loopback port. (Not a conftest.py: tests/serving's `from conftest import ...` must find its own.)"""

from __future__ import annotations

import json
import random
from pathlib import Path

from live_server import free_port, serve_in_thread  # noqa: F401  (re-exported to the tests)

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
