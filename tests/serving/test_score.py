"""POST /v1/score on a reward model trained here (tiny, CPU): served scores equal the model's own, rank held-out
pairs above chance, one or many conversations per request; bad bodies get clear 400s; chat endpoints refuse on a
reward model and /v1/score refuses on a causal LM."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serving extras (fastapi) are not installed")
pytest.importorskip("httpx", reason="the serving extras (httpx) are not installed")
import httpx  # noqa: E402
import torch  # noqa: E402
from live_server import serve_in_thread  # noqa: E402

from chatforge.data.schema import Conversation, Message  # noqa: E402
from chatforge.models.tiny import tiny_llama, tiny_tokenizer
from chatforge.serving.engine import Engine
from chatforge.serving.server import create_app
from chatforge.templates import encode_conversation
from chatforge.training import train
from chatforge.training.config import load_train_config

WORDS = ["hello", "world", "fox", "dog"]


def _pair_records(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6)))
        out.append(
            {
                "messages": [{"role": "user", "content": "answer: " + words}],
                "chosen": "Paris " + words,
                "rejected": "Berlin " + words,
            }
        )
    return out


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("score")
    base = tmp / "tiny-model"
    tok = tiny_tokenizer()
    tiny_llama(len(tok)).save_pretrained(base)
    tok.save_pretrained(base)
    data = tmp / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _pair_records(40, 0)))
    cfg = load_train_config(
        None,
        [
            f"model.name_or_path={base}",
            f"data.train=[{data}]",
            "data.val_size=0",
            "data.max_length=64",
            "template.name=chatml",
            f"output.dir={tmp / 'rm'}",
            "train.stage=rm",
            "peft.finetuning=full",
            "train.num_threads=1",
            "train.batch_size=4",
            "train.max_steps=15",
            "train.learning_rate=1e-3",
            "train.scheduler=constant",
            "train.progress=false",
            "train.tensorboard=false",
        ],
    )
    return base, train(cfg).output_dir


@pytest.fixture(scope="module")
def served(reward_model):
    _, out = reward_model
    engine = Engine.load(str(out), template="chatml", device="cpu")
    with serve_in_thread(create_app(engine, "rm")) as url:
        yield url, engine


def _msgs(rec: dict, reply: str) -> list[dict]:
    return [*rec["messages"], {"role": "assistant", "content": reply}]


def test_scores_equal_the_model_and_rank_held_out_pairs(served):
    url, engine = served
    held = _pair_records(20, 9)
    convs = [_msgs(r, r["chosen"]) for r in held] + [_msgs(r, r["rejected"]) for r in held]
    r = httpx.post(f"{url}/v1/score", json={"model": "rm", "conversations": convs}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    scores = [d["score"] for d in body["data"]]
    assert [d["index"] for d in body["data"]] == list(range(40))
    accuracy = sum(scores[i] > scores[i + 20] for i in range(20)) / 20
    assert accuracy > 0.9  # chance is 0.5
    # one conversation alone, against the model's own forward on the training encoding
    conv = Conversation([Message("user", "answer: fox dog"), Message("assistant", "Paris fox dog")])
    ids = encode_conversation(conv, engine.tokenizer, engine.template).input_ids
    with torch.no_grad():
        want = float(engine.model(input_ids=torch.tensor([ids])).logits[0, 0])
    one = httpx.post(
        f"{url}/v1/score",
        json={"messages": _msgs({"messages": [{"role": "user", "content": "answer: fox dog"}]}, "Paris fox dog")},
    ).json()
    assert one["data"][0]["score"] == pytest.approx(want, abs=1e-5)
    assert one["usage"]["prompt_tokens"] == len(ids)


@pytest.mark.parametrize(
    "body,param,code",
    [
        ([1, 2], None, "invalid_request"),
        ({"messages": [], "model": "rm"}, "messages", "invalid_value"),
        ({"model": "rm"}, None, "invalid_request"),
        ({"messages": [{"role": "user", "content": "x"}], "conversations": [[]]}, None, "invalid_request"),
        ({"conversations": "hi"}, "conversations", "invalid_value"),
        ({"conversations": [[{"role": "user", "content": "q"}]]}, "conversations[0][0]", "invalid_value"),
        ({"messages": [{"role": "wizard", "content": "q"}]}, "messages", "invalid_value"),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "temperature": 1},
            "temperature",
            "unknown_parameter",
        ),
        (
            {"model": "other", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
            "model",
            "model_not_found",
        ),
    ],
    ids=[
        "not-object",
        "empty-messages",
        "neither",
        "both",
        "conversations-not-list",
        "no-reply",
        "bad-role",
        "unknown-key",
        "unknown-model",
    ],
)
def test_bad_bodies_get_clear_errors(served, body, param, code):
    url, _ = served
    r = httpx.post(f"{url}/v1/score", json=body)
    assert r.status_code in (400, 404), r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"]
    if param is not None:
        assert (err["param"] or "").startswith(param)


def test_chat_endpoints_refuse_on_a_reward_model(served):
    url, _ = served
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        r = httpx.post(f"{url}{path}", json={"model": "rm", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 400 and r.json()["error"]["code"] == "reward_model"
        assert "/v1/score" in r.json()["error"]["message"]


def test_score_refuses_on_a_causal_lm(reward_model):
    base, _ = reward_model
    engine = Engine.load(str(base), template="chatml", device="cpu")
    with serve_in_thread(create_app(engine, "lm")) as url:
        r = httpx.post(f"{url}/v1/score", json={"messages": [{"role": "user", "content": "q"}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "not_a_reward_model"


def test_the_engine_refuses_to_generate_with_a_reward_model(served):
    from chatforge.errors import NotSupportedError
    from chatforge.serving.engine import SamplingParams

    _, engine = served
    conv = Conversation([Message("user", "hi")])
    with pytest.raises(NotSupportedError, match="reward model"):
        engine.generate([conv], SamplingParams(max_new_tokens=4))
