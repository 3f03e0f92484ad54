"""`chatforge data augment`: every op against chatforge's own server on a scripted tiny Llama, retries and failures
against a fake server, and resuming (no record lost or written twice) after failures and a half-written line."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("httpx", reason="data augment needs the `augment` extra (httpx)")
pytest.importorskip("fastapi", reason="the test servers need fastapi")

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from live_server import serve_in_thread  # noqa: E402

from chatforge.data.augment import AugmentOptions, main, read_done, run_augment  # noqa: E402
from chatforge.data.readers import read_records  # noqa: E402
from chatforge.data.schema import Conversation, Message  # noqa: E402
from chatforge.errors import ChatforgeError  # noqa: E402


def _serving_conftest():
    # tests/serving/conftest.py builds the scripted tiny Llama; loaded by path (another conftest holds the name).
    path = Path(__file__).resolve().parents[1] / "serving" / "conftest.py"
    spec = importlib.util.spec_from_file_location("serving_conftest", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def conv(i):
    return Conversation([Message("user", f"Question number {i}?"), Message("assistant", f"Answer {i}.")])


def rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def tiny_server():
    from chatforge.serving.engine import Engine
    from chatforge.serving.server import create_app

    sc = _serving_conftest()
    model, tok = sc.scripted_model("plain")
    with serve_in_thread(create_app(Engine(model, tok, "chatml"), "tiny", max_tokens_limit=200)) as base:
        yield base + "/v1", sc.PLAIN_REPLY


@pytest.mark.integration
@pytest.mark.parametrize("op", ["rephrase", "answer", "follow_up", "closing"])
def test_every_op_against_chatforge_serve(tmp_path, tiny_server, op):
    base, reply = tiny_server
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(conv(i).to_dict()) + "\n" for i in range(3)), encoding="utf-8")
    out = tmp_path / "aug.jsonl"
    argv = ["--input", str(src), "--output", str(out), "--base-url", base, "--model", "tiny", "--op", op]
    assert main([*argv, "--concurrency", "2", "--max-tokens", "64"]) == 0
    got = sorted(rows(out), key=lambda r: r["id"])
    assert [r["id"] for r in got] == [f"{i}:{op}" for i in range(3)]
    for i, r in enumerate(got):
        assert r["meta"]["origin"] == {
            "op": op,
            "model": "tiny",
            "base_url": base,
            "source": str(src),
            "source_index": i,
        }
        msgs = [(m["role"], m["content"]) for m in r["messages"]]
        if op == "rephrase":
            assert msgs == [("user", reply), ("assistant", f"Answer {i}.")]
        elif op == "answer":
            assert msgs == [("user", f"Question number {i}?"), ("assistant", reply)]
        else:
            assert msgs[:2] == [("user", f"Question number {i}?"), ("assistant", f"Answer {i}.")]
            assert msgs[2:] == [("user", reply), ("assistant", reply)]
    assert len(read_records(out).records) == 3  # the readers accept every generated record
    assert main([*argv]) == 0  # a rerun finds everything done and writes nothing
    assert len(rows(out)) == 3


def flaky_app(fail_first: dict[str, int], always_fail: set[str], status: int = 503) -> FastAPI:
    """Answers 'echo: <prompt>'; a prompt listed in fail_first fails that many times first, one in always_fail
    fails every time (with `status`)."""
    app = FastAPI()
    seen: dict[str, int] = {}

    @app.post("/v1/chat/completions")
    async def chat(req: Request):
        body = await req.json()
        text = body["messages"][-1]["content"]
        key = next((k for k in [*fail_first, *always_fail] if k in text), None)
        seen[text] = seen.get(text, 0) + 1
        if key in always_fail or (key in fail_first and seen[text] <= fail_first[key]):
            return JSONResponse({"error": {"message": "boom"}}, status_code=status)
        return {"model": "fake-1", "choices": [{"message": {"role": "assistant", "content": f"echo: {text[-20:]}"}}]}

    app.state.seen = seen
    return app


def opts(base, **kw):
    return AugmentOptions(base_url=base + "/v1", model="fake", op="answer", backoff=0.01, concurrency=3, **kw)


def test_retries_then_failed_file_then_resume(tmp_path):
    out = tmp_path / "aug.jsonl"
    recs = [conv(i) for i in range(6)]
    app = flaky_app({"number 1?": 2}, {"number 4?"})
    with serve_in_thread(app) as base:
        s = asyncio.run(run_augment(recs, out, opts(base, retries=3)))
    assert s["written"] == 5 and s["failed"] == 1 and s["retries"] == 2 + 3
    assert sorted(r["id"] for r in rows(out)) == [f"{i}:answer" for i in (0, 1, 2, 3, 5)]
    assert all(r["meta"]["origin"]["model"] == "fake-1" for r in rows(out))
    failed = rows(Path(s["failed_file"]))
    assert [f["id"] for f in failed] == ["4:answer"] and "HTTP 503" in failed[0]["error"]
    # The endpoint recovers: the rerun does only the failed record, and the failed file goes away.
    with serve_in_thread(flaky_app({}, set())) as base:
        s2 = asyncio.run(run_augment(recs, out, opts(base)))
    assert s2["written"] == 1 and s2["skipped_done"] == 5 and s2["requests"] == 1
    ids = [r["id"] for r in rows(out)]
    assert sorted(ids) == [f"{i}:answer" for i in range(6)] and len(set(ids)) == 6
    assert not Path(s["failed_file"]).exists()


def test_client_errors_are_not_retried(tmp_path):
    out = tmp_path / "aug.jsonl"
    with serve_in_thread(flaky_app({}, {"number 0?"}, status=400)) as base:
        s = asyncio.run(run_augment([conv(0)], out, opts(base, retries=5)))
    assert s["failed"] == 1 and s["requests"] == 1 and s["retries"] == 0


def test_unreachable_endpoint_fails_after_retries(tmp_path):
    from live_server import free_port

    out = tmp_path / "aug.jsonl"
    o = AugmentOptions(base_url=f"http://127.0.0.1:{free_port()}/v1", model="m", op="answer", retries=2, backoff=0.01)
    s = asyncio.run(run_augment([conv(0), conv(1)], out, o))
    assert s["failed"] == 2 and s["requests"] == 6 and out.read_text() == ""


def test_half_written_line_is_cut_and_redone(tmp_path):
    out = tmp_path / "aug.jsonl"
    good = {"id": "0:answer", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    out.write_text(json.dumps(good) + "\n" + '{"id": "1:answer", "messa', encoding="utf-8")
    assert read_done(out) == {"0:answer"}
    assert out.read_text().endswith("}\n")
    with serve_in_thread(flaky_app({}, set())) as base:
        s = asyncio.run(run_augment([conv(0), conv(1)], out, opts(base)))
    assert s["written"] == 1 and [r["id"] for r in rows(out)] == ["0:answer", "1:answer"]
    out.write_text("not json\n", encoding="utf-8")
    with pytest.raises(ChatforgeError, match="line 1"):
        read_done(out)


def test_template_and_input_checks(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(conv(0).to_dict()) + "\n", encoding="utf-8")
    tpl = tmp_path / "t.txt"
    tpl.write_text("Paraphrase this.", encoding="utf-8")
    argv = ["--input", str(src), "--output", str(tmp_path / "o.jsonl"), "--base-url", "http://x/v1", "--model", "m"]
    with pytest.raises(ChatforgeError, match="neither"):
        main([*argv, "--op", "rephrase", "--template", str(tpl)])
    with pytest.raises(ChatforgeError, match="no such file"):
        main([*argv, "--op", "rephrase", "--template", str(tmp_path / "missing.txt")])
    # A custom template reaches the endpoint with braces in the text left alone.
    tpl.write_text('Say {text} differently; JSON stays {"a": 1}', encoding="utf-8")
    app = flaky_app({}, set())
    with serve_in_thread(app) as base:
        argv[5] = base + "/v1"
        assert main([*argv, "--op", "rephrase", "--template", str(tpl)]) == 0
    assert list(app.state.seen) == ['Say Question number 0? differently; JSON stays {"a": 1}']


@pytest.mark.integration
def test_killed_run_resumes_without_loss_or_duplicates(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(req: Request):
        body = await req.json()
        await asyncio.sleep(0.15)  # slow enough that the kill lands mid-run
        return {"model": "slow", "choices": [{"message": {"content": "re: " + body["messages"][-1]["content"]}}]}

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(conv(i).to_dict()) + "\n" for i in range(20)), encoding="utf-8")
    out = tmp_path / "aug.jsonl"
    with serve_in_thread(app) as base:
        argv = [sys.executable, "-m", "chatforge.cli", "data", "augment", "--input", str(src), "--output", str(out)]
        argv += ["--base-url", base + "/v1", "--model", "m", "--op", "answer", "--concurrency", "2"]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 4):
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        first = len(rows(out))
        assert 4 <= first < 20
        assert subprocess.run(argv, env=env, capture_output=True, timeout=300).returncode == 0
    ids = [r["id"] for r in rows(out)]
    assert len(ids) == 20 and sorted(ids) == sorted(f"{i}:answer" for i in range(20))
