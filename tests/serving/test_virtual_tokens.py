"""Prefix / prompt / P-tuning adapters decode with the KV cache exactly as PeftModel's own forward without a cache.

PeftModel.forward adds the virtual tokens on every call, so a cached decode loop must add them once at prefill (the
engine does, see `serving.virtual_tokens`). The reference here is the slow, obviously-right loop: the whole sequence
through `PeftModel.forward` (no cache) at every step, greedy. The adapters' weights are scaled up so that a decoder
which dropped or repeated the virtual tokens produces different tokens (checked against the base model too).
"""

from __future__ import annotations

import pytest
import torch

from chatforge.data.schema import Conversation, Message
from chatforge.models.tiny import tiny_llama
from chatforge.serving.engine import Engine, SamplingParams
from chatforge.serving.virtual_tokens import VirtualTokens, cache_keyword

METHODS = ["prefix", "prompt", "p_tuning"]
NEW = 10


def _peft_model(method: str, vocab: int):
    from peft import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, get_peft_model

    torch.manual_seed(0)
    config = {
        "prompt": PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
        "p_tuning": PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, encoder_hidden_size=16),
        "prefix": PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
    }[method]
    model = get_peft_model(tiny_llama(vocab), config)
    with torch.no_grad():
        for p in model.prompt_encoder.parameters():
            p.mul_(8.0)  # strong virtual tokens: ignoring them (or adding them twice) changes the greedy tokens
        model.base_model.lm_head.weight.mul_(20.0)  # spread the logits: no near-ties between implementations
    return model.eval()


def _reference(model, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            x = torch.tensor([ids])
            logits = model(input_ids=x, attention_mask=torch.ones_like(x)).logits
            ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt) :]


def _engine(model, tok) -> Engine:
    engine = Engine(model, tok, "chatml")
    engine.stop_ids = set()  # every row decodes exactly NEW tokens
    return engine


def _prompts(engine: Engine) -> list[list[int]]:
    texts = ["hello", "hello world " * 3 + "北京", "The quick brown fox"]
    return [engine.encode(Conversation([Message("user", t)])) for t in texts]


@pytest.mark.parametrize("method", METHODS)
def test_cached_decoding_equals_peft_forward_without_cache(method, tiny_tok):
    model = _peft_model(method, len(tiny_tok))
    engine = _engine(model, tiny_tok)
    prompts = _prompts(engine)
    want = [_reference(model, p, NEW) for p in prompts]
    # One at a time, then all three left-padded in one batch: both equal the reference.
    params = SamplingParams(max_new_tokens=NEW)
    for prompt, expected in zip(prompts, want):
        batch = engine.new_batch()
        seq = engine.new_sequence(prompt, params, chat=False)
        batch.add([seq])
        while len(batch):
            batch.step()
        assert seq.generated == expected
    seqs = [engine.new_sequence(p, params, chat=False) for p in prompts]
    batch = engine.new_batch()
    batch.add(seqs)
    while len(batch):
        batch.step()
    assert [s.generated for s in seqs] == want
    # The adapter really matters for these prompts (a decoder that ignored it would not pass).
    base = model.get_base_model()
    with model.disable_adapter():
        assert [_reference(base, p, NEW) for p in prompts] != want


@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_a_row_joining_a_running_batch_keeps_its_virtual_tokens(method, tiny_tok):
    model = _peft_model(method, len(tiny_tok))
    engine = _engine(model, tiny_tok)
    long, short = _prompts(engine)[1], _prompts(engine)[0]
    params = SamplingParams(max_new_tokens=NEW)
    first = engine.new_sequence(long, params, chat=False)
    second = engine.new_sequence(short, params, chat=False)
    batch = engine.new_batch()
    batch.add([first])
    for _ in range(3):
        batch.step()
    batch.add([second])  # merged into the cache mid-decode (left-padded, its virtual columns included)
    while len(batch):
        batch.step()
    assert first.generated == _reference(model, long, NEW)
    assert second.generated == _reference(model, short, NEW)


def test_saved_prefix_adapter_reloads_through_engine_load(tmp_path, tiny_tok):
    """The path `chatforge chat/serve --adapter` takes: assembly loads the saved adapter, the engine decodes it."""
    model = _peft_model("prefix", len(tiny_tok))
    model.get_base_model().save_pretrained(tmp_path / "base")
    tiny_tok.save_pretrained(tmp_path / "base")
    model.save_pretrained(tmp_path / "adapter")
    engine = Engine.load(str(tmp_path / "base"), adapter=str(tmp_path / "adapter"), template="chatml", device="cpu")
    engine.stop_ids = set()
    assert VirtualTokens.of(engine.model) is not None
    prompt = _prompts(engine)[1]
    got = engine.generate([Conversation([Message("user", "hello world " * 3 + "北京")])], SamplingParams(NEW))[0]
    assert got.completion_tokens == NEW
    seq = engine.new_sequence(prompt, SamplingParams(max_new_tokens=NEW), chat=False)
    batch = engine.new_batch()
    batch.add([seq])
    while len(batch):
        batch.step()
    assert seq.generated == _reference(engine.model, prompt, NEW)


def test_cache_keyword_follows_the_installed_forward_signature(tiny_tok):
    """`cache` where the forward has it (transformers >= 5.x), else the older `past_key_values`."""
    import inspect

    model = tiny_llama(len(tiny_tok))
    params = inspect.signature(type(model).forward).parameters
    assert cache_keyword(model) == ("cache" if "cache" in params else "past_key_values")

    class Old(torch.nn.Module):
        def forward(self, input_ids=None, past_key_values=None, use_cache=None):
            raise AssertionError("not called")

    class New(torch.nn.Module):
        def forward(self, input_ids=None, cache=None, use_cache=None):
            raise AssertionError("not called")

    assert cache_keyword(Old()) == "past_key_values"
    assert cache_keyword(New()) == "cache"


def test_decoding_passes_no_deprecated_cache_keyword(tiny_tok):
    """The model never receives `past_key_values=` (removed in transformers 5.40) where it takes `cache=`."""
    model = tiny_llama(len(tiny_tok))
    seen: list[set[str]] = []
    model.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(set(kwargs)), with_kwargs=True)
    engine = _engine(model, tiny_tok)
    engine.generate([Conversation([Message("user", "hello")])], SamplingParams(max_new_tokens=4))
    assert len(seen) == 4  # one prefill, three decode steps
    keyword = cache_keyword(model)
    assert all(keyword in kw for kw in seen)
    if keyword == "cache":
        assert not any("past_key_values" in kw for kw in seen)


@pytest.mark.parametrize("method", METHODS)
def test_embeddings_are_conditioned_on_the_virtual_tokens(method, tiny_tok):
    """/v1/embeddings on such an adapter: the mean over the prompt's positions of PeftModel's own last hidden state."""
    model = _peft_model(method, len(tiny_tok))
    engine = _engine(model, tiny_tok)
    prompts = _prompts(engine)[:2]
    got = engine.embed(prompts)
    for row, prompt in zip(got, prompts):
        x = torch.tensor([prompt])
        with torch.no_grad():
            hidden = model(input_ids=x, attention_mask=torch.ones_like(x), output_hidden_states=True).hidden_states[-1]
        want = torch.nn.functional.normalize(hidden[0, -len(prompt) :].float().mean(0), dim=-1)
        torch.testing.assert_close(row, want, rtol=1e-4, atol=1e-5)
