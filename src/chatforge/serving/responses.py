"""Building the responses of `chatforge serve`: chat and text completion bodies, their SSE streams (content deltas,
tool-call fragments, logprobs, usage), and waiting for a request's sequences."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from chatforge.data.schema import ToolCall
from chatforge.serving.engine import Engine, Sequence
from chatforge.serving.openai_schema import APIError
from chatforge.serving.sse import DONE, ToolCallStreamer, chunk, error_event, new_call_id


def openai_tool_call(call: ToolCall) -> dict:
    return {
        "id": new_call_id(),
        "type": "function",
        "function": {"name": call.name, "arguments": json.dumps(call.arguments, ensure_ascii=False)},
    }


class RequestContext:
    """What the response builders need about one request."""

    def __init__(self, engine: Engine, rid: str, model: str, with_tools: bool, logprobs: bool):
        self.engine, self.rid, self.model, self.with_tools, self.logprobs = engine, rid, model, with_tools, logprobs
        self.created = int(time.time())
        self._token_cache: dict[int, tuple[str, bytes]] = {}

    def token(self, token_id: int) -> tuple[str, bytes]:
        """(text, exact bytes) of one token."""
        if token_id not in self._token_cache:
            raw = None
            try:
                raw = self.engine.constraints().token_bytes(token_id)
            except Exception:  # noqa: BLE001 - llguidance missing or the tokenizer not supported: decode instead
                raw = None
            if raw is None:
                text = self.engine.tokenizer.decode([token_id], skip_special_tokens=False)
                raw = text.encode("utf-8")
            self._token_cache[token_id] = (raw.decode("utf-8", errors="replace"), raw)
        return self._token_cache[token_id]

    def chat_logprobs(self, items) -> list[dict]:
        out = []
        for lp in items:
            text, raw = self.token(lp.token)
            top = []
            for tid, value in lp.top:
                t_text, t_raw = self.token(tid)
                top.append({"token": t_text, "logprob": value, "bytes": list(t_raw)})
            out.append({"token": text, "logprob": lp.logprob, "bytes": list(raw), "top_logprobs": top})
        return out

    def legacy_logprobs(self, items, offset: int = 0) -> dict:
        tokens, values, tops, offsets = [], [], [], []
        pos = offset
        for lp in items:
            text, _ = self.token(lp.token)
            tokens.append(text)
            values.append(lp.logprob)
            tops.append({self.token(t)[0]: v for t, v in lp.top})
            offsets.append(pos)
            pos += len(text)
        return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def _usage(seqs: list[Sequence]) -> dict:
    # The prompt is counted once per distinct prompt (n choices share it), as OpenAI does.
    seen: dict[int, int] = {}
    for s in seqs:
        seen.setdefault(id(s.prompt_ids), len(s.prompt_ids))
    p = sum(seen.values())
    c = sum(len(s.generated) for s in seqs)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _finish_reason(seq: Sequence, has_calls: bool) -> str:
    if has_calls:
        return "tool_calls"
    return "length" if seq.finish_reason == "length" else "stop"


def _raise_failed(seqs: list[Sequence]) -> None:
    failed = next((s for s in seqs if s.finish_reason == "error"), None)
    if failed is not None:
        raise APIError(503, f"generation failed: {failed.error}", "generation_failed", type_="server_error")


async def wait_all(seqs: list[Sequence], events: asyncio.Queue, request: Request) -> None:
    """Wait until every sequence is done; cancel them all if the client goes away."""
    left = len(seqs)
    while left:
        try:
            _, kind, _ = await asyncio.wait_for(events.get(), timeout=0.5)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                for s in seqs:
                    s.cancel()
                raise APIError(499, "client closed the request", "client_closed") from None
            continue
        if kind == "done":
            left -= 1
    _raise_failed(seqs)


def sse_response(gen, seqs: list[Sequence]) -> StreamingResponse:
    return StreamingResponse(
        gen, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


def chat_body(ctx: RequestContext, seqs: list[Sequence]) -> dict:
    choices = []
    for i, seq in enumerate(seqs):
        if ctx.with_tools:
            message = ctx.engine.completion(seq).message
            calls = [openai_tool_call(c) for c in message.tool_calls]
            content = message.content if message.content or not calls else None
        else:
            calls, content = [], seq.text
        out_msg: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            out_msg["tool_calls"] = calls
        choice: dict[str, Any] = {"index": i, "message": out_msg, "finish_reason": _finish_reason(seq, bool(calls))}
        choice["logprobs"] = {"content": ctx.chat_logprobs(seq.logprobs), "refusal": None} if ctx.logprobs else None
        choices.append(choice)
    return {
        "id": ctx.rid,
        "object": "chat.completion",
        "created": ctx.created,
        "model": ctx.model,
        "choices": choices,
        "usage": _usage(seqs),
    }


def completion_body(ctx: RequestContext, seqs: list[Sequence]) -> dict:
    choices = [
        {
            "text": s.text,
            "index": i,
            "logprobs": ctx.legacy_logprobs(s.logprobs) if ctx.logprobs else None,
            "finish_reason": "length" if s.finish_reason == "length" else "stop",
        }
        for i, s in enumerate(seqs)
    ]
    return {
        "id": ctx.rid,
        "object": "text_completion",
        "created": ctx.created,
        "model": ctx.model,
        "choices": choices,
        "usage": _usage(seqs),
    }


async def _events_until_done(seqs, events):
    """Yield (index, kind, payload) until every sequence is done; cancel the rest if the stream is abandoned."""
    left = len(seqs)
    try:
        while left:
            item = await events.get()
            if item[1] == "done":
                left -= 1
            yield item
    finally:
        # Runs when the stream ends *and* when the client disconnects (Starlette cancels the generator): either way
        # the sequences stop using the decode loop.
        for s in seqs:
            if not s.finished:
                s.cancel()


async def chat_sse(ctx: RequestContext, seqs: list[Sequence], events, include_usage: bool):
    def emit(i: int, delta: dict, finish: str | None = None, logprobs=None) -> str:
        choice: dict[str, Any] = {"index": i, "delta": delta, "finish_reason": finish}
        if ctx.logprobs:
            choice["logprobs"] = {"content": logprobs or [], "refusal": None} if logprobs is not None else None
        return chunk(ctx.rid, ctx.created, ctx.model, [choice])

    streamers = [ToolCallStreamer(ctx.engine.template) if ctx.with_tools else None for _ in seqs]
    n_calls = [0] * len(seqs)
    lp_sent = [0] * len(seqs)

    def new_logprobs(i: int):
        if not ctx.logprobs:
            return None
        items = seqs[i].logprobs[lp_sent[i] :]
        lp_sent[i] += len(items)
        return ctx.chat_logprobs(items)

    def render(i: int, items: list[tuple[str, Any]]) -> list[str]:
        out = []
        for kind, value in items:
            if kind == "content":
                out.append(emit(i, {"content": value}, logprobs=new_logprobs(i)))
            elif kind == "call_start":
                n_calls[i] += 1
                head = {"index": n_calls[i] - 1, "id": new_call_id(), "type": "function"}
                out.append(emit(i, {"tool_calls": [{**head, "function": {"name": value, "arguments": ""}}]}))
            elif kind == "call_args":
                out.append(emit(i, {"tool_calls": [{"index": n_calls[i] - 1, "function": {"arguments": value}}]}))
            elif kind == "call_whole":
                n_calls[i] += 1
                out.append(emit(i, {"tool_calls": [{"index": n_calls[i] - 1, **openai_tool_call(value)}]}))
        return out

    for i in range(len(seqs)):
        yield emit(i, {"role": "assistant", "content": ""})
    async for i, kind, payload in _events_until_done(seqs, events):
        s = streamers[i]
        if kind == "delta":
            for line in render(i, s.feed(payload) if s else [("content", payload)]):
                yield line
            continue
        seq = seqs[i]
        if seq.finish_reason == "error":
            yield error_event(f"generation failed: {seq.error}", "generation_failed")
            yield DONE
            return
        for line in render(i, s.flush() if s else []):
            yield line
        rest = new_logprobs(i)
        if rest:
            yield emit(i, {"content": ""}, logprobs=rest)
        yield emit(i, {}, _finish_reason(seq, n_calls[i] > 0))
    if include_usage:
        yield chunk(ctx.rid, ctx.created, ctx.model, [], usage=_usage(seqs))
    yield DONE


async def completion_sse(ctx: RequestContext, seqs: list[Sequence], events, include_usage: bool):
    lp_sent = [0] * len(seqs)
    offsets = [0] * len(seqs)

    def emit(i: int, text: str, finish: str | None = None) -> str:
        logprobs = None
        if ctx.logprobs:
            items = seqs[i].logprobs[lp_sent[i] :]
            lp_sent[i] += len(items)
            logprobs = ctx.legacy_logprobs(items, offsets[i])
            offsets[i] += len(text)
        choice = {"text": text, "index": i, "logprobs": logprobs, "finish_reason": finish}
        return chunk(ctx.rid, ctx.created, ctx.model, [choice], obj="text_completion")

    async for i, kind, payload in _events_until_done(seqs, events):
        if kind == "delta":
            yield emit(i, payload)
            continue
        seq = seqs[i]
        if seq.finish_reason == "error":
            yield error_event(f"generation failed: {seq.error}", "generation_failed")
            yield DONE
            return
        yield emit(i, "", "length" if seq.finish_reason == "length" else "stop")
    if include_usage:
        yield chunk(ctx.rid, ctx.created, ctx.model, [], obj="text_completion", usage=_usage(seqs))
    yield DONE
