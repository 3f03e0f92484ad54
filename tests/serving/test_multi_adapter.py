"""Several LoRA adapters on one base in one engine: rows for different adapters (and the bare base) decode in one
batch and each gets exactly what an engine with only that adapter gives; the server routes by the request's model."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the serving extras (fastapi) are not installed")
import torch
from conftest import LOCAL
from fastapi.testclient import TestClient

from chatforge.data.schema import Conversation, Message
from chatforge.errors import ChatforgeError
from chatforge.models.tiny import tiny_llama, tiny_tokenizer
from chatforge.serving.engine import BASE_ADAPTER, Engine, SamplingParams
from chatforge.serving.server import create_app, parse_adapters

CONV = Conversation([Message("user", "hello world")])


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("adapters")
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    base = tiny_llama(len(tok))
    base.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    for i, name in enumerate(("a", "b")):
        cfg = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
        model = tiny_llama(len(tok))
        torch.manual_seed(10 + i)  # after tiny_llama, which seeds itself: the two adapters must differ
        peft_model = get_peft_model(model, cfg)
        peft_model.base_model.model.load_state_dict(base.state_dict(), strict=False)
        with torch.no_grad():
            for n, p in peft_model.named_parameters():
                if "lora_B" in n:
                    p.mul_(20.0)  # make each adapter change the greedy text
        peft_model.save_pretrained(root / name)
    return root


def _multi(root) -> Engine:
    engine = Engine.load(str(root / "base"), adapter=str(root / "a"), template="chatml")
    engine.adapters["a"] = "default"
    engine.add_adapter("b", str(root / "b"))
    return engine


def test_mixed_adapter_batch_matches_single_adapter_engines(folders):
    params = SamplingParams(max_new_tokens=10)
    refs = {
        "a": Engine.load(str(folders / "base"), adapter=str(folders / "a"), template="chatml"),
        "b": Engine.load(str(folders / "base"), adapter=str(folders / "b"), template="chatml"),
        BASE_ADAPTER: Engine.load(str(folders / "base"), template="chatml"),
    }
    expected = {k: e.generate([CONV], params)[0].text for k, e in refs.items()}
    assert len(set(expected.values())) == 3  # the adapters really change the output
    engine = _multi(folders)
    batch = engine.new_batch()
    seqs = {}
    for name, peft_name in (("a", "default"), ("b", "b"), (BASE_ADAPTER, BASE_ADAPTER)):
        seqs[name] = engine.new_sequence(engine.encode(CONV), params)
        seqs[name].adapter = peft_name
    batch.add([seqs["a"], seqs["b"]])
    batch.step()
    batch.add([seqs[BASE_ADAPTER]])  # joins the running batch mid-decode
    while len(batch):
        batch.step()
    assert {k: s.text for k, s in seqs.items()} == expected


def test_server_routes_by_model(folders):
    engine = _multi(folders)
    ref_b = Engine.load(str(folders / "base"), adapter=str(folders / "b"), template="chatml")
    want = ref_b.generate([CONV], SamplingParams(max_new_tokens=6))[0].text
    with TestClient(create_app(engine, "base"), base_url=LOCAL) as c:
        assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["base", "a", "b"]
        body = {
            "model": "b",
            "messages": [{"role": "user", "content": "hello world"}],
            "max_tokens": 6,
            "temperature": 0,
        }
        r = c.post("/v1/chat/completions", json=body).json()
        assert r["model"] == "b" and r["choices"][0]["message"]["content"] == want
        assert c.post("/v1/chat/completions", json={**body, "model": "c"}).status_code == 404
        e = c.post("/v1/embeddings", json={"model": "a", "input": "x"}).json()["data"][0]["embedding"]
        e0 = c.post("/v1/embeddings", json={"model": "base", "input": "x"}).json()["data"][0]["embedding"]
        assert e != e0


def test_adapter_flag_parsing():
    assert parse_adapters(["/x"]) == [(None, "/x")]
    assert parse_adapters(["a=/x", "b=/y"]) == [("a", "/x"), ("b", "/y")]
    for bad in (["a=/x", "/y"], ["a=/x", "a=/y"], ["=/x", "b=/y"]):
        with pytest.raises(ChatforgeError):
            parse_adapters(bad)


@pytest.mark.integration
def test_official_client_picks_the_adapter(folders):
    openai = pytest.importorskip("openai")
    from conftest import serve_in_thread

    engine = _multi(folders)
    want = {
        name: Engine.load(str(folders / "base"), adapter=str(folders / name), template="chatml")
        .generate([CONV], SamplingParams(max_new_tokens=5))[0]
        .text
        for name in ("a", "b")
    }
    with serve_in_thread(create_app(engine, "base")) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=60)
        assert sorted(m.id for m in client.models.list().data) == ["a", "b", "base"]
        for name in ("a", "b"):
            out = client.chat.completions.create(
                model=name, messages=[{"role": "user", "content": "hello world"}], max_tokens=5, temperature=0
            )
            assert out.model == name and out.choices[0].message.content == want[name]
