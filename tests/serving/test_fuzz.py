"""Fuzzing the API from its own OpenAPI document (schemathesis + hypothesis): schema-valid and schema-breaking bodies
for every endpoint; none may get a 5xx, an error must be OpenAI-style JSON. Bounded: a fixed number of examples per
endpoint, derandomized, on the scripted tiny model with max_tokens capped at 8 (about 20 s on a busy 2-core box)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi", reason="the serving extras (fastapi) are not installed")

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed (pip install '.[dev]')")
from conftest import scripted_model  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from chatforge.serving.engine import Engine  # noqa: E402
from chatforge.serving.server import create_app  # noqa: E402

pytestmark = pytest.mark.integration

_model, _tok = scripted_model("plain")
APP = create_app(
    Engine(_model, _tok, "chatml"), "tiny", max_tokens_limit=8, default_max_tokens=8, allowed_hosts=["testserver"]
)
APP.state.scheduler.start()  # the ASGI test transport does not run the lifespan
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)
def test_no_request_gets_a_server_error(case):
    response = case.call(headers={"Content-Type": "application/json"})
    assert response.status_code < 500, (case.body, response.text[:500])
    if response.status_code >= 400:
        err = json.loads(response.text)["error"]
        assert err["message"] and err["type"] == "invalid_request_error", err
