"""The OpenAPI 3.1 document served at `/openapi.json`, built from the same pydantic models that validate requests.

The routes read their bodies themselves (size and depth are bounded before parsing), so FastAPI cannot infer the
schemas; this module states them, and a schemathesis fuzz test (tests/serving/test_fuzz.py) checks the server
against this document.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic.json_schema import models_json_schema

from chatforge.serving.openai_schema import ChatRequest, CompletionRequest, EmbeddingRequest

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


def _json_response(description: str, schema: dict | None = None) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema or {"type": "object"}}}}


def _errors(*codes: int) -> dict:
    return {str(c): _json_response("error", {"$ref": "#/components/schemas/Error"}) for c in codes}


def _post(summary: str, model: str, ok: dict, example: dict) -> dict:
    media = {"schema": {"$ref": f"#/components/schemas/{model}"}, "example": example}
    return {
        "post": {
            "summary": summary,
            "requestBody": {"required": True, "content": {"application/json": media}},
            "responses": {"200": ok, **_errors(400, 401, 403, 404, 413, 415, 429, 503)},
        }
    }


@lru_cache(maxsize=8)
def openapi_document(model_names: tuple[str, ...], with_tools: bool = False, with_score: bool = False) -> dict:
    """The document for a server serving `model_names` (the only values `model` may take); `with_score`: a reward
    model's server, which documents POST /v1/score (`serving.scoring`)."""
    model_name = model_names[0]
    _, top = models_json_schema(
        [(ChatRequest, "validation"), (CompletionRequest, "validation"), (EmbeddingRequest, "validation")],
        ref_template="#/components/schemas/{model}",
    )
    schemas = {**top.get("$defs", {}), "Error": ERROR}
    for name in ("ChatRequest", "CompletionRequest", "EmbeddingRequest"):
        schemas[name]["properties"]["model"] = {"type": "string", "enum": list(model_names), "title": "Model"}
    stream_or_json = {
        "description": "a completion (JSON), or server-sent events when stream is true",
        "content": {"application/json": {"schema": {"type": "object"}}, "text/event-stream": {"schema": {}}},
    }
    paths = {
        "/v1/chat/completions": _post(
            "Chat completion (OpenAI format)",
            "ChatRequest",
            stream_or_json,
            {"model": model_name, "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 8},
        ),
        "/v1/completions": _post(
            "Text completion (OpenAI legacy format)",
            "CompletionRequest",
            stream_or_json,
            {"model": model_name, "prompt": "Once upon a time", "max_tokens": 8},
        ),
        "/v1/embeddings": _post(
            "Embeddings: mean-pooled, L2-normalised last hidden state",
            "EmbeddingRequest",
            _json_response("embeddings"),
            {"model": model_name, "input": ["first text", "second text"]},
        ),
        "/v1/models": {
            "get": {"summary": "The served model", "responses": {"200": _json_response("models"), **_errors(401)}}
        },
        "/health": {"get": {"summary": "Liveness and load", "responses": {"200": _json_response("status")}}},
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }
    if with_score:
        message_list = {
            "type": "array",
            "minItems": 2,
            "items": schemas["ChatRequest"]["properties"]["messages"]["items"],
        }
        schemas["ScoreRequest"] = {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "model": {"type": "string", "enum": list(model_names)},
                "messages": message_list,
                "conversations": {"type": "array", "minItems": 1, "maxItems": 64, "items": message_list},
            },
        }
        paths["/v1/score"] = _post(
            "Reward-model scores of conversations ending with an assistant reply",
            "ScoreRequest",
            _json_response("scores"),
            {
                "model": model_name,
                "messages": [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hi there."}],
            },
        )
    if with_tools:
        paths["/v1/tools"] = {"get": {"summary": "The server's tools", "responses": {"200": _json_response("tools")}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "chatforge serve", "version": "1", "description": "An OpenAI-compatible API."},
        "paths": paths,
        "components": {"schemas": schemas},
    }
