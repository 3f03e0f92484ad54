"""The generation engine: batched decoding equals one-at-a-time and HF generate, sampling, stops, streaming."""

from __future__ import annotations

import pytest
import torch
from conftest import PLAIN_REPLY, TOOL_SPEC

from chatforge.data.schema import Conversation, Message
from chatforge.errors import ChatforgeError
from chatforge.models.tiny import tiny_llama
from chatforge.serving.engine import REPLACEMENT_CHAR, Engine, SamplingParams, Sequence, sample_next


def _convs(n: int, tools: bool = False) -> list[Conversation]:
    return [
        Conversation([Message("user", "hello world " * (i + 1) + "北京")], [TOOL_SPEC] if tools else [])
        for i in range(n)
    ]


def test_batched_greedy_matches_single_and_hf_generate(tiny_tok):
    model = tiny_llama(len(tiny_tok))
    engine = Engine(model, tiny_tok, "chatml")
    convs = _convs(5)
    params = SamplingParams(max_new_tokens=12)
    batched = engine.generate(convs, params, batch_size=3)  # rows of different lengths, refilled as others finish
    for conv, got in zip(convs, batched):
        single = engine.generate([conv], params)[0]
        assert got.text == single.text
        ids = engine.encode(conv)
        ref = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=12,
            do_sample=False,
            eos_token_id=sorted(engine.stop_ids),
            pad_token_id=0,
        )[0, len(ids) :].tolist()
        ref = [t for t in ref if t not in engine.stop_ids]
        expected = tiny_tok.decode(ref, skip_special_tokens=False)
        if got.finish_reason == "length":  # a character cut off at the limit is dropped, not shown as U+FFFD
            expected = expected.rstrip(REPLACEMENT_CHAR)
        assert got.text == expected
        assert got.prompt_tokens == len(ids)
        assert got.completion_tokens == len(ref)


def test_sequence_joining_a_running_batch_gets_the_same_tokens(tiny_tok):
    """Continuous batching: a prompt merged into a batch mid-decode (cache left-padded) decodes as if alone."""
    engine = Engine(tiny_llama(len(tiny_tok)), tiny_tok, "chatml")
    params = SamplingParams(max_new_tokens=10)
    long_conv, short_conv = _convs(4)[3], _convs(1)[0]
    alone = [engine.generate([c], params)[0].text for c in (long_conv, short_conv)]
    batch = engine.new_batch()
    first = engine.new_sequence(engine.encode(long_conv), params)
    second = engine.new_sequence(engine.encode(short_conv), params)
    batch.add([first])
    for _ in range(4):
        batch.step()
    batch.add([second])
    while len(batch):
        batch.step()
    assert [first.text, second.text] == alone


def test_stream_never_splits_a_multibyte_character(plain_model):
    model, tok = plain_model
    engine = Engine(model, tok, "chatml")
    deltas = list(engine.stream(_convs(1)[0], SamplingParams(max_new_tokens=50)))
    assert "".join(deltas) == PLAIN_REPLY
    assert all(REPLACEMENT_CHAR not in d for d in deltas)
    # 很 arrives as three single-byte tokens and must come out whole, in one delta.
    assert "很" in deltas and "。" in deltas
    assert engine.last_sequence.finish_reason == "stop"


def test_stop_strings_cut_the_text_and_never_stream_past_it(plain_model):
    model, tok = plain_model
    engine = Engine(model, tok, "chatml")
    params = SamplingParams(stop=["capital"])
    deltas = list(engine.stream(_convs(1)[0], params))
    assert "".join(deltas) == "Paris is the "
    done = engine.generate(_convs(2), SamplingParams(stop=["酒店很"]))
    assert [c.text for c in done] == ["Paris is the capital of France. 北京"] * 2
    assert all(c.finish_reason == "stop" for c in done)


def test_max_new_tokens_gives_length_finish(plain_model):
    model, tok = plain_model
    out = Engine(model, tok, "chatml").generate(_convs(1), SamplingParams(max_new_tokens=2))[0]
    assert out.finish_reason == "length" and out.completion_tokens == 2
    assert out.text == "Paris is the capital of France. 北京酒店"  # the lone first byte of 很 is dropped, not U+FFFD
    deltas = list(Engine(model, tok, "chatml").stream(_convs(1)[0], SamplingParams(max_new_tokens=3)))
    assert deltas == ["Paris is the capital of France. 北京酒店"]


def test_end_of_turn_stop_and_tool_call_parsing(tool_model):
    model, tok = tool_model
    out = Engine(model, tok, "chatml").generate(_convs(3, tools=True), SamplingParams(max_new_tokens=40))
    for c in out:
        assert c.finish_reason == "stop"
        assert c.message.content == ""
        assert [(t.name, t.arguments) for t in c.message.tool_calls] == [("search_hotels", {"city": "Beijing"})]


def test_seeded_sampling_is_reproducible_and_top_k_1_is_greedy(tiny_tok):
    engine = Engine(tiny_llama(len(tiny_tok)), tiny_tok, "chatml")
    conv = _convs(1)
    hot = SamplingParams(max_new_tokens=16, temperature=1.5, seed=7)
    a, b = engine.generate(conv, hot)[0].text, engine.generate(conv, hot)[0].text
    others = {
        engine.generate(conv, SamplingParams(max_new_tokens=16, temperature=1.5, seed=s))[0].text for s in range(4)
    }
    assert a == b
    assert len(others) > 1
    greedy = engine.generate(conv, SamplingParams(max_new_tokens=16))[0].text
    top1 = engine.generate(conv, SamplingParams(max_new_tokens=16, temperature=1.0, top_k=1, seed=3))[0].text
    assert top1 == greedy


def _seq(**kw) -> Sequence:
    return Sequence([0, 1], SamplingParams(**kw), stop_ids=set(), stop_strings=[])


def test_top_p_and_repetition_penalty():
    logits = torch.tensor([0.0, 5.0, 4.9, -1.0])
    # top_p small keeps only the best token, whatever the seed.
    assert {sample_next(logits.clone(), _seq(temperature=1.0, top_p=0.1, seed=s)) for s in range(20)} == {1}
    # top_p 0.9 keeps the two near-equal best tokens and nothing else.
    assert {sample_next(logits.clone(), _seq(temperature=1.0, top_p=0.9, seed=s)) for s in range(40)} == {1, 2}
    # A strong repetition penalty on seen token 1 (the prompt) makes token 2 the greedy choice.
    assert sample_next(logits.clone(), _seq(repetition_penalty=2.0)) == 2
    assert sample_next(logits.clone(), _seq()) == 1


def test_openai_penalties_min_p_bias_and_extreme_values():
    logits = torch.tensor([0.0, 5.0, 4.9, -1.0])
    seq = _seq(frequency_penalty=0.1)
    seq.counts.update({1: 2})  # token 1 generated twice: 5.0 - 2 * 0.1 = 4.8 < 4.9
    assert sample_next(logits.clone(), seq) == 2
    seq = _seq(presence_penalty=0.05)
    seq.counts.update({1: 5})  # presence counts once: 5.0 - 0.05 = 4.95 > 4.9
    assert sample_next(logits.clone(), seq) == 1
    # min_p 0.5 keeps tokens with p >= half the best one: 1 and 2 (near-equal), never 0 or 3.
    assert {sample_next(logits.clone(), _seq(temperature=1.0, min_p=0.5, seed=s)) for s in range(40)} == {1, 2}
    assert sample_next(logits.clone(), _seq(logit_bias={3: 100.0})) == 3
    # Values that used to overflow float32 into NaN now sample (greedy in the limit).
    for kw in (dict(temperature=1e-300), dict(temperature=1e-40), dict(temperature=1.0, repetition_penalty=1e-40)):
        assert sample_next(logits.clone(), _seq(**kw)) == 1, kw
    for bad in (dict(temperature=float("nan")), dict(top_p=float("inf")), dict(seed=2**64), dict(min_p=2.0)):
        with pytest.raises(ChatforgeError):
            SamplingParams(**bad).validate()


def test_logprobs_are_recorded_without_the_stop_token(plain_model):
    model, tok = plain_model
    engine = Engine(model, tok, "chatml")
    seq = engine.new_sequence(engine.encode(_convs(1)[0]), SamplingParams(max_new_tokens=50, top_logprobs=2))
    batch = engine.new_batch()
    batch.add([seq])
    while len(batch):
        batch.step()
    assert [lp.token for lp in seq.logprobs] == seq.generated
    assert all(lp.logprob <= 0 and len(lp.top) == 2 and lp.top[0][0] == lp.token for lp in seq.logprobs)
