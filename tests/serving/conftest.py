"""Serving test fixtures: tiny Llamas whose weights are set so greedy decoding emits a known reply.

Random weights give random text, which cannot test tool-call parsing or streaming honestly, and training a model in a
test is too slow. So `scripted_model` builds a real 2-layer Llama and sets its weights by hand: attention and MLP
outputs are zeroed (the residual stream stays the current token's embedding) and `lm_head` maps each token of a
script to the next one, a bigram chain. The chain starts at the last token of the generation prompt and ends with
`<|im_end|>`, so the reply goes through the real template, tokenizer, KV-cache decode loop, sampler and server.

Each script token must be unique (a bigram cannot tell two occurrences apart): long pieces are added to the tokenizer
as whole tokens, and the Chinese tail is fed as single raw-byte tokens, so multi-byte characters arrive split across
tokens and exercise the streaming hold-back.
"""

from __future__ import annotations

import pytest
import torch
from live_server import free_port, serve_in_thread  # noqa: F401  (re-exported to the tests)

from chatforge.data.schema import Conversation, Message
from chatforge.models.tiny import tiny_llama, tiny_tokenizer
from chatforge.templates import encode_prompt
from chatforge.templates.formats import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

PLAIN_HEAD = "Paris is the capital of France. 北京酒店"
PLAIN_TAIL = "很。"  # sent byte by byte: e5 be 88 e3 80 82, all distinct
PLAIN_REPLY = PLAIN_HEAD + PLAIN_TAIL
TOOL_JSON = '{"name": "search_hotels", "arguments": {"city": "Beijing"}}'
TOOL_REPLY = TOOL_CALL_OPEN + TOOL_JSON + TOOL_CALL_CLOSE
# Two calls whose arguments arrive over several tokens (every piece distinct, as a bigram chain needs).
FRAG_PIECES = [
    TOOL_CALL_OPEN,
    '{"name": "search_hotels", "arguments": ',
    '{"city": ',
    '"Beij',
    'ing"}}',
    TOOL_CALL_CLOSE + "\n" + TOOL_CALL_OPEN,
    '{"name": "get_weather", "arguments": ',
    '{"day": "to',
    'day"}}',
    TOOL_CALL_CLOSE,
]
WEATHER_SPEC = {
    "name": "get_weather",
    "description": "Weather for a day.",
    "parameters": {"type": "object", "properties": {"day": {"type": "string"}}, "required": ["day"]},
}
TOOL_SPEC = {
    "name": "search_hotels",
    "description": "Search hotels in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (the byte-level BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _byte_token_ids(tok, text: str) -> list[int]:
    table = _bytes_to_unicode()
    return [tok.convert_tokens_to_ids(table[b]) for b in text.encode("utf-8")]


def scripted_model(kind: str):
    """(model, tokenizer): a tiny Llama that answers every chatml prompt with PLAIN_REPLY ('plain'), TOOL_REPLY
    ('tool') or two tool calls streamed in fragments ('frag': the concatenation of FRAG_PIECES)."""
    tok = tiny_tokenizer()
    pieces = {"plain": [PLAIN_HEAD], "tool": [TOOL_CALL_OPEN, TOOL_JSON, TOOL_CALL_CLOSE], "frag": FRAG_PIECES}[kind]
    tok.add_tokens(pieces)
    script = [tok.convert_tokens_to_ids(p) for p in pieces]
    if kind == "plain":
        script += _byte_token_ids(tok, PLAIN_TAIL)
    script.append(tok.convert_tokens_to_ids("<|im_end|>"))
    start = encode_prompt(Conversation([Message("user", "hi")]), tok, "chatml")[-1]
    assert len(set([start, *script])) == len(script) + 1, "script tokens must be unique for a bigram chain"
    model = tiny_llama(len(tok))
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = model.model.embed_tokens.weight
        normed = emb / emb.pow(2).mean(-1, keepdim=True).sqrt()  # what the final RMSNorm makes of each embedding
        head = torch.zeros_like(model.lm_head.weight)
        prev = start
        for t in script:
            head[t] += normed[prev]
            prev = t
        model.lm_head.weight.copy_(head)
    return model.eval(), tok


def endless_model(tok):
    """A random tiny Llama that can never end a turn (its end-of-turn/EOS logits are pinned far below the rest)."""
    model = tiny_llama(len(tok))
    with torch.no_grad():
        for name in ("<|im_end|>", tok.eos_token):
            model.lm_head.weight[tok.convert_tokens_to_ids(name)] = 0.0
        model.lm_head.weight.mul_(50.0)  # random logits spread wide, so 0 is never the maximum in practice
    return model.eval()


@pytest.fixture(scope="session")
def plain_model():
    return scripted_model("plain")


@pytest.fixture(scope="session")
def tool_model():
    return scripted_model("tool")


@pytest.fixture(scope="session")
def frag_model():
    return scripted_model("frag")


LOCAL = "http://127.0.0.1:8000"  # TestClient base URL: the Host header the server accepts when bound to loopback
