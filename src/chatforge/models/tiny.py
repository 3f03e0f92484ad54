"""Tiny random Llama models and tiny tokenizers built in code: for hermetic tests and from-scratch pretraining.

Nothing here downloads anything. `tiny_tokenizer()` trains a small BPE on a built-in corpus in well under a second and
registers the role markers of every built-in template as special tokens.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

# Every marker any built-in template uses; a tokenizer made here knows them all as special tokens.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<s>",
    "</s>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]

_CORPUS = [
    "The quick brown fox jumps over the lazy dog. Hello world! How are you today?",
    "You are a helpful assistant. Answer the question using the context. I cannot tell from the context.",
    "user assistant system tool Human Assistant [INST] [/INST] <<SYS>> <</SYS>> function call arguments name",
    '{"name": "search_hotels", "arguments": {"city": "Beijing", "price_max": 500}} <tool_call> </tool_call>',
    "Paris is the capital of France. Berlin is the capital of Germany. 1234567890 + - * / = ( ) [ ] { } : ; , .",
    "北京 上海 酒店 价格 评分 你好 谢谢 请问 可以 我们 他们 这个 那个 什么 怎么 为什么 因为 所以",
]


def tiny_tokenizer(
    vocab_size: int = 512, corpus: Iterable[str] | None = None, style: str = "bytelevel"
) -> PreTrainedTokenizerFast:
    """A small fast tokenizer. style='bytelevel' (GPT-2/Llama-3/Qwen-like) or 'metaspace' (SentencePiece/Llama-2-like)."""
    if style == "bytelevel":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    elif style == "metaspace":
        tok = Tokenizer(models.BPE(byte_fallback=True, unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        )
        alphabet = [f"<0x{i:02X}>" for i in range(256)]
    else:
        raise ValueError(f"unknown tokenizer style {style!r}; use 'bytelevel' or 'metaspace'")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=alphabet if style == "bytelevel" else [],
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus or _CORPUS) * 4, trainer=trainer)
    if style == "metaspace":
        # Byte-fallback pieces must live in the BPE vocabulary itself (as in Llama-2's tokenizer), not as added tokens.
        import json

        state = json.loads(tok.to_str())
        vocab = state["model"]["vocab"]
        for piece in alphabet:
            vocab.setdefault(piece, len(vocab))
        tok = Tokenizer.from_str(json.dumps(state))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    return fast


def tiny_llama_config(vocab_size: int, **overrides) -> LlamaConfig:
    """2 layers, dim 64: the test-sized Llama. Override any field (e.g. hidden_size=256, num_hidden_layers=12)."""
    cfg = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    cfg.update(overrides)
    return LlamaConfig(**cfg)


def tiny_llama(vocab_size: int, seed: int = 0, **overrides) -> LlamaForCausalLM:
    """A randomly initialised small Llama (fp32, eval mode off)."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(vocab_size, **overrides))
    return model
