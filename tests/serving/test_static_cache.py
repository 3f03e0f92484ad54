"""The static-cache decode batch gives the same greedy tokens as the dynamic one (CPU: eager; GPU: CUDA graphs)."""

from __future__ import annotations

import pytest
import torch

from chatforge.data.schema import Conversation, Message
from chatforge.errors import ChatforgeError
from chatforge.models.tiny import tiny_llama
from chatforge.serving.engine import Engine, SamplingParams
from chatforge.serving.static_cache import StaticDecodeBatch


def _model(tok, device: str = "cpu"):
    torch.manual_seed(0)
    model = tiny_llama(len(tok))
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)  # spread logits: float noise between cache layouts cannot flip a greedy pick
    return model.to(device).eval()


def _convs(n: int) -> list[Conversation]:
    return [Conversation([Message("user", "hello world " * (i + 1) + "北京")]) for i in range(n)]


def _engines(tok, device: str = "cpu", max_cache_len: int = 256, compile: str = "off"):
    model = _model(tok, device)
    dynamic, static = Engine(model, tok, "chatml"), Engine(model, tok, "chatml")
    static.use_static_cache(slots=3, max_cache_len=max_cache_len, compile=compile)
    dynamic.max_total = static.max_total  # the same context limit for both
    for e in (dynamic, static):
        e.stop_ids = set()  # every row runs to its max_new_tokens (or the context), so rows overlap in time
    return dynamic, static


def test_static_cache_generates_the_same_greedy_tokens(tiny_tok):
    dynamic, static = _engines(tiny_tok)
    convs = _convs(7)  # 7 prompts of different lengths through 3 rows: rows finish and new prompts join mid-decode
    params = SamplingParams(max_new_tokens=16)
    want = dynamic.generate(convs, params, batch_size=3)
    got = static.generate(convs, params, batch_size=3)
    assert [c.text for c in got] == [c.text for c in want]
    assert [c.completion_tokens for c in got] == [16] * 7
    assert isinstance(static.new_batch(), StaticDecodeBatch)


def test_a_long_prompt_joining_shifts_the_running_rows(tiny_tok):
    dynamic, static = _engines(tiny_tok)
    params = SamplingParams(max_new_tokens=12)
    short, long = (static.encode(c) for c in _convs(6)[::5])
    results = []
    for engine in (dynamic, static):
        batch = engine.new_batch()
        a = engine.new_sequence(short, params, chat=False)
        b = engine.new_sequence(long, params, chat=False)
        batch.add([a])
        for _ in range(3):
            batch.step()
        batch.add([b])  # longer than the columns used so far: the static batch shifts row a right
        while len(batch):
            batch.step()
        results.append((a.generated, b.generated))
    assert results[0] == results[1]


def test_a_full_cache_drops_shared_padding_then_ends_rows_at_the_context(tiny_tok):
    """A tiny cache: the static batch must compact leading padding and end a full row with 'length', as the
    dynamic batch ends it at the same context limit."""
    dynamic, static = _engines(tiny_tok, max_cache_len=60)
    params = SamplingParams(max_new_tokens=40)
    short, long = (static.encode(c) for c in _convs(4)[::3])
    assert len(long) < 60 < len(long) + 40
    out = []
    for engine in (dynamic, static):
        batch = engine.new_batch()
        b = engine.new_sequence(long, params, chat=False)
        a = engine.new_sequence(short, params, chat=False)
        batch.add([b])
        for _ in range(5):
            batch.step()
        batch.add([a])
        while len(batch):
            batch.step()
        out.append([(s.generated, s.finish_reason) for s in (a, b)])
    assert out[0] == out[1]
    assert out[1][1][1] == "length" and len(long) + len(out[1][1][0]) == 60


def test_streaming_and_prefix_adapter_on_the_static_cache(tiny_tok):
    from peft import PrefixTuningConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(tiny_llama(len(tiny_tok)), PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    with torch.no_grad():
        for p in model.prompt_encoder.parameters():
            p.mul_(8.0)
        model.base_model.lm_head.weight.mul_(20.0)
    model.eval()
    dynamic, static = Engine(model, tiny_tok, "chatml"), Engine(model, tiny_tok, "chatml")
    static.use_static_cache(slots=2, max_cache_len=128, compile="off")
    dynamic.max_total = static.max_total
    for e in (dynamic, static):
        e.stop_ids = set()
    conv = _convs(3)[2]
    params = SamplingParams(max_new_tokens=10)
    assert "".join(static.stream(conv, params)) == "".join(dynamic.stream(conv, params))
    assert static.last_sequence.generated == dynamic.last_sequence.generated
    assert len(static.last_sequence.generated) == 10


def test_static_batch_refuses_more_rows_than_slots_and_prompts_longer_than_the_cache(tiny_tok):
    _, static = _engines(tiny_tok, max_cache_len=32)
    batch = static.new_batch(slots=1)
    params = SamplingParams(max_new_tokens=4)
    prompts = [static.encode(c) for c in _convs(2)]
    with pytest.raises(ChatforgeError, match="free rows"):
        batch.add([static.new_sequence(p, params) for p in prompts])
    with pytest.raises(ChatforgeError, match="context"):
        static.new_sequence(static.encode(_convs(8)[7]), params)  # longer than the 32-column cache


def test_a_drained_static_batch_is_reused_with_the_same_cache(tiny_tok):
    """A captured graph keeps the cache's addresses: the engine hands out the same batch again once it drained."""
    _, static = _engines(tiny_tok)
    static.generate(_convs(2), SamplingParams(max_new_tokens=3), batch_size=2)
    used = static._static_batches[2]
    assert not used.reserved and len(used) == 0
    assert static.new_batch(slots=2) is used
    assert static.new_batch(slots=2) is not used  # held now: a second caller gets a batch of its own


@pytest.mark.gpu
def test_cuda_graph_decode_equals_the_dynamic_cache_on_gpu(tiny_tok):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    dynamic, static = _engines(tiny_tok, device="cuda", compile="on")
    convs = _convs(7)
    params = SamplingParams(max_new_tokens=24)
    want = [c.text for c in dynamic.generate(convs, params, batch_size=3)]
    for _ in range(2):  # the second run replays the recorded graphs
        assert [c.text for c in static.generate(convs, params, batch_size=3)] == want


def test_serve_with_static_cache_answers_concurrent_requests(plain_model):
    """`chatforge serve --static-cache`: the flags reach the engine (rows = --max-batch) and the scripted reply
    comes back whole for several requests decoded together."""
    from concurrent.futures import ThreadPoolExecutor

    from conftest import LOCAL, PLAIN_REPLY
    from fastapi.testclient import TestClient

    from chatforge.serving.server import build_parser, configure_static_cache, create_app

    model, tok = plain_model
    engine = Engine(model, tok, "chatml")
    args = build_parser().parse_args(
        ["--model", "x", "--static-cache", "--static-cache-len", "96", "--max-batch", "4", "--compile", "off"]
    )
    configure_static_cache(engine, args)
    assert engine.static == {"slots": 4, "max_cache_len": 96, "compile": "off"} and engine.max_total == 96
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    with TestClient(create_app(engine, "tiny", max_batch=4), base_url=LOCAL) as client:
        with ThreadPoolExecutor(6) as pool:
            replies = list(pool.map(lambda _: client.post("/v1/chat/completions", json=body), range(6)))
    assert [r.status_code for r in replies] == [200] * 6
    assert {r.json()["choices"][0]["message"]["content"] for r in replies} == {PLAIN_REPLY}
    with pytest.raises(ChatforgeError, match="needs --static-cache"):
        configure_static_cache(
            Engine(model, tok, "chatml"), build_parser().parse_args(["--model", "x", "--static-cache-len", "9"])
        )


@pytest.mark.integration
def test_compiled_decode_step_traces_once_and_matches_on_cpu(tiny_tok):
    """The same torch.compile(mode="reduce-overhead") path the GPU uses (without the CUDA graphs), ~1-2 min on CPU:
    the decode step compiles without graph breaks into one graph that later runs reuse."""
    from torch._dynamo.utils import counters

    dynamic, static = _engines(tiny_tok, max_cache_len=128, compile="on")
    convs = _convs(5)
    params = SamplingParams(max_new_tokens=12)
    want = [c.text for c in dynamic.generate(convs, params, batch_size=3)]
    assert [c.text for c in static.generate(convs, params, batch_size=3)] == want
    graphs = counters["stats"]["unique_graphs"]
    assert [c.text for c in static.generate(convs, params, batch_size=3)] == want
    assert counters["stats"]["unique_graphs"] == graphs  # no recompilation for the second run
    assert not counters["graph_break"]
