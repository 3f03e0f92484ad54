"""Size presets: the named shapes, overrides, and exact parameter counts (checked against transformers on `meta`)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from chatforge.errors import ChatforgeError
from chatforge.models.presets import PRESETS, REFERENCE_VOCAB, apply_preset, count_parameters, describe


def real_count(fields: dict) -> int:
    with torch.device("meta"):
        return LlamaForCausalLM(LlamaConfig(**fields)).num_parameters()


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_counts_match_transformers_and_their_names(name):
    vocab = REFERENCE_VOCAB[name]
    fields = apply_preset({"preset": name}, vocab)
    assert "preset" not in fields and fields["vocab_size"] == vocab
    n = count_parameters(fields, vocab)
    assert n == real_count(fields)
    assert round(n / 1e6) == int(name.split("-")[1].rstrip("m"))  # the name is the count at the reference vocab


def test_seed_004_shape():
    f = apply_preset({"preset": "llama-43m"}, 32000)
    assert (f["hidden_size"], f["num_hidden_layers"], f["num_attention_heads"]) == (256, 12, 8)
    g = apply_preset({"preset": "llama-124m"}, 50257)
    assert (g["hidden_size"], g["num_hidden_layers"], g["num_attention_heads"], g["tie_word_embeddings"]) == (
        768, 12, 12, True,
    )  # fmt: skip


def test_fields_override_the_preset_and_counts_follow():
    f = apply_preset({"preset": "llama-43m", "num_hidden_layers": 4, "tie_word_embeddings": True}, 5000)
    assert f["num_hidden_layers"] == 4 and f["hidden_size"] == 256
    assert count_parameters(f, 5000) == real_count(f)
    # Changing the head count re-derives head_dim and the KV heads (no stale 32-wide heads).
    g = apply_preset({"preset": "llama-43m", "num_attention_heads": 4}, 5000)
    assert "head_dim" not in g and "num_key_value_heads" not in g
    assert count_parameters(g, 5000) == real_count(g)
    # The init's own vocab_size wins over the tokenizer's.
    assert apply_preset({"preset": "llama-43m", "vocab_size": 6000}, 5000)["vocab_size"] == 6000


@pytest.mark.parametrize(
    "fields",
    [
        dict(hidden_size=96, intermediate_size=200, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2),
        dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            attention_bias=True,
            mlp_bias=True,
            tie_word_embeddings=True,
        ),  # fmt: skip
    ],
)
def test_count_parameters_without_preset(fields):
    f = apply_preset(fields, 777)
    assert count_parameters(f) == real_count(f)


def test_bad_preset_and_bad_shape_are_clear_errors():
    with pytest.raises(ChatforgeError, match="did you mean 'llama-43m'"):
        apply_preset({"preset": "lama-43m"}, 100)
    with pytest.raises(ChatforgeError, match="not divisible"):
        apply_preset({"preset": "llama-43m", "hidden_size": 250}, 100)


def test_describe_prints_the_count():
    f = apply_preset({"preset": "llama-43m"}, 64793)
    assert "42.8M parameters" in describe(f, preset="llama-43m")


def test_vocab_multiple_pads_the_vocabulary():
    f = apply_preset({"preset": "llama-124m", "vocab_multiple": 64}, 50257)
    assert f["vocab_size"] == 50304 and "vocab_multiple" not in f
    assert count_parameters(f) == real_count(f)
    assert apply_preset({"vocab_multiple": 64, "vocab_size": 1000}, 50257)["vocab_size"] == 1000
    with pytest.raises(ChatforgeError, match="positive integer"):
        apply_preset({"preset": "llama-43m", "vocab_multiple": 0}, 100)
