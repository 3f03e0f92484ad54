"""Safe by default on localhost, against a real uvicorn server: Host (DNS rebinding), foreign Origin, non-JSON POSTs,
CORS for allowed origins, keep-alive connections that survive errors, and a busy port failing before the model loads."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import httpx
import pytest

pytest.importorskip("fastapi", reason="the serving extras (fastapi) are not installed")
from conftest import PLAIN_REPLY, serve_in_thread

from chatforge.serving.engine import Engine
from chatforge.serving.server import create_app
from chatforge.serving.toolbox import Toolbox

pytestmark = pytest.mark.integration

BODY = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}


@pytest.fixture(scope="module")
def base(plain_model):
    model, tok = plain_model
    ran = []
    toolbox = Toolbox({"touch": lambda: ran.append(1) or "done"}, [{"name": "touch", "parameters": {}}])
    app = create_app(Engine(model, tok, "chatml"), "tiny", toolbox=toolbox, allow_origins=["http://trusted.example"])
    app.state.tool_runs = ran

    @app.get("/boom")
    async def boom():  # a route with a bug: the error must be JSON and the connection must stay usable
        raise RuntimeError("bug")

    with serve_in_thread(app) as url:
        yield url, ran


def test_foreign_host_is_refused(base):
    url, _ = base
    r = httpx.post(f"{url}/v1/chat/completions", json=BODY, headers={"Host": "attacker.example:8000"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_host"
    ok = httpx.post(f"{url}/v1/chat/completions", json=BODY, headers={"Host": "localhost"})
    assert ok.status_code == 200


def test_cross_site_requests_cannot_run_tools_or_the_model(base):
    url, ran = base
    # What a foreign page can send without a preflight: a text/plain POST (no Origin check would stop this).
    r = httpx.post(f"{url}/v1/tools/touch", content=b"{}", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    for path in ("/v1/tools/touch", "/v1/chat/completions"):
        r = httpx.post(f"{url}{path}", json=BODY, headers={"Origin": "http://evil.example"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_origin"
    r = httpx.post(f"{url}/v1/chat/completions", json=BODY, headers={"Origin": "null"})
    assert r.status_code == 403
    assert ran == []
    # The page the server itself serves is same-origin, so it works.
    host = url.split("//")[1]
    r = httpx.post(f"{url}/v1/tools/touch", json={}, headers={"Origin": f"http://{host}"})
    assert r.status_code == 200 and ran == [1]


def test_allowed_origin_gets_cors(base):
    url, _ = base
    pre = httpx.options(
        f"{url}/v1/chat/completions",
        headers={"Origin": "http://trusted.example", "Access-Control-Request-Method": "POST"},
    )
    assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == "http://trusted.example"
    r = httpx.post(f"{url}/v1/chat/completions", json=BODY, headers={"Origin": "http://trusted.example"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://trusted.example"


def _raw_requests(url: str, requests: list[bytes]) -> list[bytes]:
    """Send HTTP/1.1 requests one after another on ONE connection; return each raw response."""
    host, port = url.split("//")[1].split(":")
    out = []
    with socket.create_connection((host, int(port)), timeout=30) as s:
        f = s.makefile("rb")
        for req in requests:
            s.sendall(req)
            status = f.readline()
            headers = {}
            while (line := f.readline()) not in (b"\r\n", b""):
                k, _, v = line.decode().partition(":")
                headers[k.strip().lower()] = v.strip()
            body = f.read(int(headers.get("content-length", 0)))
            out.append(status + body)
            assert headers.get("connection", "").lower() != "close", status
    return out


def _post(host: str, body: bytes, ctype: str = "application/json") -> bytes:
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: {ctype}\r\n"
    return head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body


def test_keep_alive_connection_survives_bad_requests_and_bugs(base):
    url, _ = base
    host = url.split("//")[1]
    good = _post(host, json.dumps(BODY).encode())
    answers = _raw_requests(
        url,
        [
            _post(host, b"[" * 10_000 + b"]" * 10_000),  # deep nesting: 400 before parsing
            good,
            _post(host, json.dumps({**BODY, "seed": 2**64}).encode()),  # seed out of int64: 400
            good,
            f"GET /boom HTTP/1.1\r\nHost: {host}\r\n\r\n".encode(),  # a bug in a route: JSON 503
            good,
        ],
    )
    statuses = [a.split(b" ", 2)[1] for a in answers]
    assert statuses == [b"400", b"200", b"400", b"200", b"503", b"200"]
    assert json.loads(answers[-1].split(b"\r\n", 1)[1])["choices"][0]["message"]["content"] == PLAIN_REPLY
    assert json.loads(answers[4].split(b"\r\n", 1)[1])["error"]["code"] == "internal_error"


def test_busy_port_fails_before_the_model_loads(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        cmd = [sys.executable, "-m", "chatforge.cli", "serve", "--model", str(tmp_path / "no-such-model")]
        env = {**os.environ, "CHATFORGE_HOME": str(tmp_path / "home")}
        proc = subprocess.run(cmd + ["--port", str(port)], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr and "Traceback" not in proc.stderr
