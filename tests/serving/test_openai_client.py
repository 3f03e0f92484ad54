"""The official `openai` client against a running `chatforge serve` (a subprocess serving a scripted tiny model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serving extras (fastapi) are not installed")
pytest.importorskip("openai", reason="the serving extras (openai) are not installed")
import httpx  # noqa: E402
import openai  # noqa: E402
from conftest import TOOL_REPLY, TOOL_SPEC, endless_model, free_port, scripted_model, serve_in_thread

from chatforge.serving.engine import Engine
from chatforge.serving.server import create_app

pytestmark = pytest.mark.integration

KEY = "test-key"
TOOLS = [{"type": "function", "function": TOOL_SPEC}]
USER = [{"role": "user", "content": "Find me a hotel in Beijing"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`chatforge serve` on a saved tool-calling tiny model; yields (base_url, process)."""
    folder = tmp_path_factory.mktemp("tool-model")
    model, tok = scripted_model("tool")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    port = free_port()
    env = {**os.environ, "CHATFORGE_HOME": str(folder / "home"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "chatforge.cli", "serve", "--model", str(folder), "--template", "chatml"]
    cmd += ["--served-name", "tiny", "--port", str(port), "--api-key", KEY, "--threads", "1", "--max-batch", "8"]
    log = open(folder / "serve.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"chatforge serve exited early:\n{Path(folder / 'serve.log').read_text()}")
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail(f"chatforge serve did not come up:\n{Path(folder / 'serve.log').read_text()}")
    yield base
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=60)


def test_models_and_wrong_key(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    bad = openai.OpenAI(base_url=f"{server}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        bad.chat.completions.create(model="tiny", messages=USER)
    assert err.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=USER)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=USER, max_tokens=1_000_000)


def test_plain_and_streamed_text(client):
    # Without `tools` the reply is plain text: the raw tool-call markup this model always writes.
    out = client.chat.completions.create(model="tiny", messages=USER, temperature=0)
    assert out.choices[0].message.content == TOOL_REPLY and out.choices[0].finish_reason == "stop"
    assert out.usage.completion_tokens == 3
    stream = client.chat.completions.create(model="tiny", messages=USER, stream=True, temperature=0)
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces) == TOOL_REPLY and len([p for p in pieces if p]) == 3


def test_tool_calls_plain_and_streamed(client):
    out = client.chat.completions.create(model="tiny", messages=USER, tools=TOOLS, temperature=0)
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.function.name == "search_hotels" and json.loads(call.function.arguments) == {"city": "Beijing"}

    stream = client.chat.completions.create(model="tiny", messages=USER, tools=TOOLS, stream=True)
    calls: dict[int, dict] = {}
    finish = None
    for chunk in stream:
        delta = chunk.choices[0].delta
        assert not delta.content
        for tc in delta.tool_calls or []:
            cur = calls.setdefault(tc.index, {"id": tc.id, "name": "", "arguments": ""})
            cur["name"] += tc.function.name or ""
            cur["arguments"] += tc.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [("search_hotels", {"city": "Beijing"})]

    # The tool result goes back in; the server renders the whole exchange with the template.
    history = USER + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"total": 0, "hotels": []}'},
    ]
    again = client.chat.completions.create(model="tiny", messages=history, tools=TOOLS)
    assert again.choices[0].message.tool_calls


def test_concurrent_requests_are_batched_together(server, client):
    results: list[str] = []

    def one() -> None:
        s = client.chat.completions.create(model="tiny", messages=USER, stream=True, max_tokens=50)
        results.append("".join(c.choices[0].delta.content or "" for c in s if c.choices))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == [TOOL_REPLY] * 8
    assert httpx.get(f"{server}/health").json()["peak_running"] > 1


def test_client_disconnect_stops_generation(tiny_tok):
    engine = Engine(endless_model(tiny_tok), tiny_tok, "chatml")
    app = create_app(engine, "tiny", max_tokens_limit=100_000)
    with serve_in_thread(app) as base:
        body = {"model": "tiny", "messages": USER, "stream": True, "max_tokens": 100_000}
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=30) as r:
            lines = r.iter_lines()
            got = [next(lines) for _ in range(6)]
            assert any('"content"' in line for line in got)
            assert httpx.get(f"{base}/health").json()["running"] == 1
        deadline = time.time() + 15
        while time.time() < deadline and httpx.get(f"{base}/health").json()["running"]:
            time.sleep(0.1)
        assert httpx.get(f"{base}/health").json()["running"] == 0


# ---------------------------------------------------------------------------------------------------------------
# The features of issue #15, each through the official client against an in-process uvicorn server.


def _tok_id(piece: str) -> int:
    from chatforge.models.tiny import tiny_tokenizer

    return tiny_tokenizer().convert_tokens_to_ids(piece)


@pytest.fixture(scope="module")
def plain_client():
    from conftest import scripted_model as make

    model, tok = make("plain")
    with serve_in_thread(create_app(Engine(model, tok, "chatml"), "tiny", max_tokens_limit=200)) as base:
        yield openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=60)


def test_client_reassembles_streamed_tool_call_fragments():
    from conftest import WEATHER_SPEC
    from conftest import scripted_model as make

    model, tok = make("frag")
    tools = TOOLS + [{"type": "function", "function": WEATHER_SPEC}]
    with serve_in_thread(create_app(Engine(model, tok, "chatml"), "tiny")) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=60)
        with client.chat.completions.stream(model="tiny", messages=USER, tools=tools) as stream:
            argument_deltas = [e for e in stream if e.type == "tool_calls.function.arguments.delta"]
            final = stream.get_final_completion()
    assert len(argument_deltas) >= 5  # fragments, not one whole string per call
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    got = [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls]
    assert got == [("search_hotels", {"city": "Beijing"}), ("get_weather", {"day": "today"})]


def test_client_forced_tool_call_and_structured_output(plain_client):
    from typing import Literal

    from pydantic import BaseModel

    spec = {
        "name": "book",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"enum": ["Paris", "Rome"]},
                "nights": {"type": "integer", "minimum": 1, "maximum": 9},
            },
            "required": ["city", "nights"],
            "additionalProperties": False,
        },
    }
    out = plain_client.chat.completions.create(
        model="tiny",
        messages=USER,
        tools=[{"type": "function", "function": spec}],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=100,
    )
    (call,) = out.choices[0].message.tool_calls
    args = json.loads(call.function.arguments)
    assert call.function.name == "book" and args["city"] in ("Paris", "Rome") and 1 <= args["nights"] <= 9

    class Answer(BaseModel):
        ok: bool
        city: Literal["Paris", "Beijing"]

    parsed = plain_client.chat.completions.parse(model="tiny", messages=USER, response_format=Answer, max_tokens=100)
    answer = parsed.choices[0].message.parsed
    assert isinstance(answer, Answer) and answer.city in ("Paris", "Beijing")
    # json_object: the scripted model would write its sentence as a key forever; a bias on "}" ends the object, and
    # the grammar only lets "}" through where it closes it.
    brace = plain_client.chat.completions.create(
        model="tiny",
        messages=USER,
        response_format={"type": "json_object"},
        max_tokens=20,
        temperature=0,
        logit_bias={str(_tok_id("}")): 100},
    )
    assert brace.choices[0].message.content == "{}" and brace.choices[0].finish_reason == "stop"


def test_client_n_logprobs_completions_embeddings(plain_client):
    from conftest import PLAIN_REPLY

    out = plain_client.chat.completions.create(
        model="tiny",
        messages=USER,
        n=2,
        logprobs=True,
        top_logprobs=3,
        seed=5,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        logit_bias={"5": -100},
        extra_body={"min_p": 0.05},
    )
    assert len(out.choices) == 2
    for ch in out.choices:
        assert ch.message.content == PLAIN_REPLY  # the scripted reply never repeats a token: penalties change nothing
        assert len(ch.logprobs.content) == 7 and all(len(t.top_logprobs) == 3 for t in ch.logprobs.content)
    with pytest.raises(openai.BadRequestError) as err:
        plain_client.chat.completions.create(model="tiny", messages=USER, temperature=2.5)
    assert err.value.body["param"] == "temperature" and err.value.body["type"] == "invalid_request_error"

    text = plain_client.completions.create(model="tiny", prompt="hello", max_tokens=5, temperature=0, logprobs=2)
    assert text.choices[0].text and len(text.choices[0].logprobs.tokens) >= 1
    streamed = plain_client.completions.create(model="tiny", prompt="hello", max_tokens=5, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == text.choices[0].text

    emb = plain_client.embeddings.create(model="tiny", input=["hello", "hello", "bye"])  # base64 by default
    vecs = [d.embedding for d in emb.data]
    assert abs(sum(x * x for x in vecs[0]) - 1) < 1e-4 and vecs[0] == vecs[1] and vecs[0] != vecs[2]
    floats = plain_client.embeddings.create(model="tiny", input="hello", encoding_format="float")
    assert max(abs(a - b) for a, b in zip(floats.data[0].embedding, vecs[0])) < 1e-6
