"""`POST /v1/score` for `chatforge serve` on a reward model (trained with `train.stage: rm`).

Body: `{"model": NAME, "messages": [...]}` scores one conversation, `{"model": NAME, "conversations": [[...], ...]}`
scores several (at most `MAX_CONVERSATIONS`). Each conversation is an OpenAI-style message list that ends with the
assistant reply being judged; it is rendered with the training template exactly as stage rm encodes a pair's side
(`templates.encode_conversation`), and the score is the model's score head at the last non-pad token. Answer:
`{"object": "list", "model", "data": [{"object": "score", "index", "score"}], "usage": {"prompt_tokens",
"total_tokens"}}`.

A reward model has no LM head, so on such a server the chat, completion and embedding endpoints answer 400
`reward_model` naming /v1/score; on a causal LM server /v1/score answers 400 `not_a_reward_model`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import torch
from fastapi import FastAPI, Request

from chatforge.serving.openai_schema import APIError, ChatRequest, parse_json_body, to_conversation, validate

MAX_CONVERSATIONS = 64
SCORE_KEYS = {"model", "messages", "conversations"}
GENERATION_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")


def is_reward_engine(engine: Any) -> bool:
    from chatforge.evaluation.reward import is_score_model

    return is_score_model(engine.model)


def parse_score_body(data: Any) -> tuple[str | None, list[list[Any]], list[str]]:
    """(model, message lists, the param name of each) from a parsed body; APIError 400 naming the bad field."""
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object", "invalid_request")
    unknown = sorted(set(data) - SCORE_KEYS)
    if unknown:
        raise APIError(
            400,
            f"unknown parameter {unknown[0]!r} (expected model, messages or conversations)",
            "unknown_parameter",
            param=unknown[0],
        )
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise APIError(400, "model must be a string", "invalid_value", param="model")
    if ("messages" in data) == ("conversations" in data):
        raise APIError(
            400, "give exactly one of 'messages' (one conversation) or 'conversations' (a list)", "invalid_request"
        )
    if "messages" in data:
        convs, params = [data["messages"]], ["messages"]
    else:
        raw = data["conversations"]
        if not isinstance(raw, list) or not raw:
            raise APIError(
                400, "conversations must be a non-empty list of message lists", "invalid_value", param="conversations"
            )
        if len(raw) > MAX_CONVERSATIONS:
            raise APIError(
                400,
                f"at most {MAX_CONVERSATIONS} conversations per request, got {len(raw)}",
                "invalid_value",
                param="conversations",
            )
        convs, params = raw, [f"conversations[{i}]" for i in range(len(raw))]
    for msgs, param in zip(convs, params):
        if not isinstance(msgs, list) or not msgs:
            raise APIError(400, "a conversation must be a non-empty list of messages", "invalid_value", param=param)
    return model, convs, params


def conversation_of(msgs: list[Any], param: str):
    """A validated Conversation ending with an assistant reply; errors carry `param` (e.g. conversations[2][0])."""
    last = msgs[-1]
    if not isinstance(last, dict) or last.get("role") != "assistant":
        raise APIError(
            400,
            "the last message must be the assistant reply to score",
            "invalid_value",
            param=f"{param}[{len(msgs) - 1}]",
        )
    if len(msgs) < 2:
        raise APIError(400, "a conversation needs a prompt before the reply", "invalid_value", param=param)
    # The chat checks want a conversation that ends with the user's turn: a placeholder turn is appended for them
    # (so the reply's tool calls are converted as any assistant turn's are) and dropped again.
    try:
        req = validate(ChatRequest, {"model": "score", "messages": [*msgs, {"role": "user", "content": "."}]})
        conv = to_conversation(req)
    except APIError as err:
        inner = str(err.param or "")
        inner = inner[len("messages") :] if inner.startswith("messages") else (f".{inner}" if inner else "")
        raise APIError(err.status, f"{param}: {err.message}", err.code, param=f"{param}{inner}") from None
    conv.messages.pop()
    return conv


def add_score_routes(
    app: FastAPI,
    engine: Any,
    *,
    check_key: Callable[[Request], None],
    check_model: Callable[[str], Any],
    read_body: Callable[[Request], Awaitable[bytes]],
    max_prompt: int,
) -> None:
    """Register POST /v1/score; on a reward model also the refusals of the generation routes (registered first, so
    they answer before the generation handlers)."""
    reward = is_reward_engine(engine)
    lock = threading.Lock()  # one scoring batch at a time next to anything else using the model
    encode_tok = engine.tokenizer

    if reward:
        for path in GENERATION_ROUTES:

            async def refuse(request: Request, path: str = path):
                check_key(request)
                raise APIError(
                    400,
                    f"this server serves a reward model (a score head, no language-model head): {path} is not "
                    "available; score conversations with POST /v1/score",
                    "reward_model",
                )

            app.post(path)(refuse)

    @app.post("/v1/score")
    async def score(request: Request):
        check_key(request)
        if not reward:
            raise APIError(
                400,
                "this model is not a reward model: /v1/score needs one trained with train.stage=rm "
                "(a score head); serve that model or adapter",
                "not_a_reward_model",
            )
        model, convs, params = parse_score_body(parse_json_body(await read_body(request)))
        if model is not None:
            check_model(model)
        rows = []
        for msgs, param in zip(convs, params):
            conv = conversation_of(msgs, param)
            ids = await asyncio.to_thread(_encode, conv, encode_tok, engine.template, lock)
            if len(ids) > max_prompt:
                raise APIError(
                    413,
                    f"{param} is {len(ids)} tokens; the limit is {max_prompt}",
                    "context_length_exceeded",
                    param=param,
                )
            rows.append(ids)
        scores = await asyncio.to_thread(score_ids, engine.model, rows, engine.tokenizer.pad_token_id, lock)
        tokens = sum(len(r) for r in rows)
        return {
            "object": "list",
            "model": model,
            "data": [{"object": "score", "index": i, "score": s} for i, s in enumerate(scores)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }


def _encode(conv, tokenizer, template, lock: threading.Lock) -> list[int]:
    from chatforge.templates import encode_conversation

    with lock:
        return list(encode_conversation(conv, tokenizer, template).input_ids)


@torch.no_grad()
def score_ids(
    model, rows: list[list[int]], pad_id: int | None, lock: threading.Lock, batch_size: int = 16
) -> list[float]:
    """The score of each token row, in right-padded batches (the head reads the last non-pad token)."""
    from chatforge.training.packing import pad_batch
    from chatforge.training.reward import sequence_scores

    pad = 0 if pad_id is None else pad_id
    device = next(model.parameters()).device
    out: list[float] = []
    with lock:
        for s in range(0, len(rows), batch_size):
            batch = pad_batch([(r, r) for r in rows[s : s + batch_size]], pad)
            batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            out.extend(sequence_scores(model, batch).cpu().tolist())
    return out
