"""`chatforge serve`: an OpenAI-compatible HTTP API (FastAPI + uvicorn) and a one-file web chat page at `/`.

Endpoints: `GET /v1/models`, `POST /v1/chat/completions` (plain and SSE-streamed, with `tools` and `tool_calls` in
both modes), `GET /health`, `GET /` (the page), and, when started with `--tools`, `GET /v1/tools` and
`POST /v1/tools/{name}` so the page can run the server's tools and show their results.

All requests share one decode loop in a background thread (`Scheduler`): a request joins the running batch between
two decode steps and leaves it when done, so concurrent clients are batched together (continuous batching). A client
that disconnects cancels its sequence. Every error is OpenAI-style JSON `{"error": {"message", "type", "code",
"param"}}` with 400/401/404/413/422/429 (503 if the decode loop itself fails); never a 500.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import logging
import os
import secrets
import threading
import time
import uuid
from collections import deque
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from chatforge.data.schema import Conversation, Message, ToolCall
from chatforge.errors import ChatforgeError
from chatforge.serving.engine import Engine, SamplingParams, Sequence, _held_back
from chatforge.serving.toolbox import Toolbox

log = logging.getLogger("chatforge.serve")

TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"


# ------------------------------------------------------------------------------------------------------ errors


class APIError(Exception):
    """An error answered as OpenAI-style JSON."""

    def __init__(self, status: int, message: str, code: str, type_: str = "invalid_request_error", param=None):
        super().__init__(message)
        self.status, self.message, self.code, self.type, self.param = status, message, code, type_, param

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}
        return JSONResponse(body, status_code=self.status)


# ------------------------------------------------------------------------------------------------ request schema


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FunctionCallIn(_Strict):
    name: str
    arguments: str | dict = "{}"


class ToolCallIn(_Strict):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCallIn


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class MessageIn(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None


class FunctionSpec(_Strict):
    name: str = Field(min_length=1, max_length=64)
    description: str = ""
    parameters: dict = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None


class ToolSpec(_Strict):
    type: Literal["function"]
    function: FunctionSpec


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatRequest(_Strict):
    model: str
    messages: list[MessageIn] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)  # extension (vLLM-style)
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=10.0)  # extension (vLLM-style)
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    tools: list[ToolSpec] | None = None
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = None
    logprobs: bool | None = None


def _text(content: str | list[TextPart] | None) -> str:
    if content is None:
        return ""
    return content if isinstance(content, str) else "".join(p.text for p in content)


def to_conversation(req: ChatRequest) -> Conversation:
    """The request's messages and tools as a chatforge Conversation (errors name the offending field)."""
    messages = []
    for i, m in enumerate(req.messages):
        role = "system" if m.role == "developer" else m.role
        calls = []
        for j, tc in enumerate(m.tool_calls or []):
            args = tc.function.arguments
            if isinstance(args, str):
                try:
                    args = json.loads(args or "{}")
                except json.JSONDecodeError as err:
                    raise APIError(
                        400, f"arguments are not valid JSON: {err}", "invalid_tool_call", param=_p(i, j)
                    ) from None
            if not isinstance(args, dict):
                raise APIError(400, "arguments must be a JSON object", "invalid_tool_call", param=_p(i, j))
            calls.append(ToolCall(tc.function.name, args))
        if calls and role != "assistant":
            raise APIError(400, "only assistant messages may carry tool_calls", "invalid_message", f"messages[{i}]")
        messages.append(Message(role, _text(m.content), calls))
    if messages[-1].role == "assistant":
        raise APIError(
            400,
            "the last message must not be an assistant message",
            "invalid_message",
            f"messages[{len(messages) - 1}]",
        )
    use_tools = req.tools and req.tool_choice in (None, "auto")
    if req.tool_choice not in (None, "auto", "none"):
        raise APIError(
            400,
            "tool_choice supports 'auto' and 'none' (forced tool calls are not implemented)",
            "unsupported_value",
            "tool_choice",
        )
    tools = [t.function.model_dump(exclude_none=True, exclude={"strict"}) for t in req.tools or []] if use_tools else []
    return Conversation(messages, tools)


def _p(i: int, j: int) -> str:
    return f"messages[{i}].tool_calls[{j}].function.arguments"


# ------------------------------------------------------------------------------------------------ the decode loop


class QueueFull(Exception):
    pass


class Scheduler:
    """The background thread that owns the model: admits waiting sequences into the running batch, steps it."""

    def __init__(self, engine: Engine, max_batch: int = 8, max_queue: int = 64):
        self.engine, self.max_batch, self.max_queue = engine, max_batch, max_queue
        self.cond = threading.Condition()
        self.waiting: deque[Sequence] = deque()
        self.running = 0
        self.peak_running = 0  # the largest batch decoded so far (reported by /health; shows batching happens)
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="chatforge-decode", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        self.thread.join(timeout=10)

    def submit(self, seq: Sequence) -> None:
        with self.cond:
            if len(self.waiting) + self.running >= self.max_queue:
                raise QueueFull
            self.waiting.append(seq)
            self.cond.notify()

    def load(self) -> dict:
        return {
            "running": self.running,
            "waiting": len(self.waiting),
            "max_batch": self.max_batch,
            "peak_running": self.peak_running,
        }

    def _run(self) -> None:
        batch = self.engine.new_batch()
        while True:
            with self.cond:
                while not self.waiting and not len(batch) and not self.stopping:
                    self.cond.wait()
                if self.stopping:
                    for s in list(self.waiting) + batch.seqs:
                        s.cancel()
                        s._finish("cancelled")
                    return
                new = [self.waiting.popleft() for _ in range(min(self.max_batch - len(batch), len(self.waiting)))]
                self.running = len(batch) + len(new)
                self.peak_running = max(self.peak_running, self.running)
            for s in [s for s in new if s.cancelled.is_set()]:
                s._finish("cancelled")
            new = [s for s in new if not s.finished]
            try:
                if new:
                    batch.add(new)
                if len(batch):
                    batch.step()
            except Exception as err:  # a failure in the model must fail its requests, not hang them or the loop
                log.exception("decode step failed")
                for s in batch.seqs + new:
                    if not s.finished:
                        s.error = f"{type(err).__name__}: {err}"
                        s._finish("error")
                batch = self.engine.new_batch()
            with self.cond:
                self.running = len(batch)


# ------------------------------------------------------------------------------------------------ tool-call stream


class ToolCallSplitter:
    """Splits streamed assistant text into content pieces and complete `<tool_call>...</tool_call>` blocks.

    Text that might be the start of a marker is held back until it is decided; whitespace around tool calls is dropped
    (as `parse_reply` strips it) so a pure tool-call reply streams no content.
    """

    def __init__(self, template):
        from chatforge.templates import parse_reply

        self.parse = lambda text: parse_reply(text, template)
        self.buf = ""
        self.inside = False
        self.pending_ws = ""  # whitespace not yet known to be inside content
        self.started = False  # any non-whitespace content emitted yet

    def _content(self, text: str, out: list) -> None:
        text = self.pending_ws + text
        stripped = text.rstrip()
        self.pending_ws = text[len(stripped) :]
        if not self.started:
            stripped = stripped.lstrip()
        if stripped:
            self.started = True
            out.append(("content", stripped))

    def feed(self, text: str) -> list[tuple[str, Any]]:
        self.buf += text
        out: list[tuple[str, Any]] = []
        while True:
            if not self.inside:
                i = self.buf.find(TOOL_OPEN)
                if i >= 0:
                    self._content(self.buf[:i], out)
                    self.buf, self.inside = self.buf[i:], True
                    continue
                keep = _held_back(self.buf, [TOOL_OPEN])
                self._content(self.buf[: len(self.buf) - keep], out)
                self.buf = self.buf[len(self.buf) - keep :]
                return out
            j = self.buf.find(TOOL_CLOSE)
            if j < 0:
                return out
            block, self.buf, self.inside = self.buf[: j + len(TOOL_CLOSE)], self.buf[j + len(TOOL_CLOSE) :], False
            calls = self.parse(block).tool_calls
            if calls:
                self.pending_ws = ""
                out.extend(("tool_call", c) for c in calls)
            else:  # not a valid call: it is the model's text, keep it (as parse_reply does)
                self._content(block, out)

    def flush(self) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        rest, self.buf = self.buf, ""
        self._content(rest, out)  # an unterminated tool call stays text
        return out


# ------------------------------------------------------------------------------------------------------ the app


def _openai_tool_call(call: ToolCall) -> dict:
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": call.name, "arguments": json.dumps(call.arguments, ensure_ascii=False)},
    }


def create_app(
    engine: Engine,
    model_name: str,
    *,
    api_key: str | None = None,
    max_batch: int = 8,
    max_queue: int = 64,
    max_tokens_limit: int = 2048,
    default_max_tokens: int = 512,
    max_prompt_tokens: int | None = None,
    max_body_bytes: int = 1 << 20,
    toolbox: Toolbox | None = None,
) -> FastAPI:
    """The FastAPI app serving `engine` under the model id `model_name`."""
    scheduler = Scheduler(engine, max_batch=max_batch, max_queue=max_queue)
    # Prompts are tokenized in request threads while the decode thread detokenizes: give encoding its own tokenizer
    # copy (and one encoder at a time), since encoding may toggle state on the Rust tokenizer it uses.
    encode_tok = copy.deepcopy(engine.tokenizer)
    encode_lock = threading.Lock()

    def encode(conv: Conversation) -> list[int]:
        from chatforge.templates import encode_prompt

        with encode_lock:
            return list(encode_prompt(conv, encode_tok, engine.template))

    max_prompt = min(max_prompt_tokens or engine.max_total - 1, engine.max_total - 1)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        scheduler.start()
        yield
        scheduler.stop()

    app = FastAPI(title="chatforge", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.scheduler = scheduler

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError):
        return err.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
        return APIError(err.status_code, str(err.detail), code).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception):
        # A bug, not the client's fault; still answered as JSON the client can parse (and logged with its traceback).
        log.error("unhandled error on %s", request.url.path, exc_info=err)
        return APIError(503, f"internal error: {type(err).__name__}", "internal_error", "server_error").response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError):
        return APIError(422, _describe(err.errors()), "invalid_request").response()

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if not secrets.compare_digest(given.encode(), api_key.encode()):
            raise APIError(401, "missing or invalid API key (send 'Authorization: Bearer KEY')", "invalid_api_key")

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(resources.files("chatforge.serving").joinpath("static/index.html").read_text("utf-8"))

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, **scheduler.load()}

    @app.get("/v1/models")
    async def models(request: Request):
        check_key(request)
        return {"object": "list", "data": [_model_card(model_name, created)]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str, request: Request):
        check_key(request)
        if name != model_name:
            raise APIError(404, f"model {name!r} not found; this server serves {model_name!r}", "model_not_found")
        return _model_card(model_name, created)

    @app.get("/v1/tools")
    async def list_tools(request: Request):
        check_key(request)
        return {
            "object": "list",
            "data": [{"type": "function", "function": s} for s in (toolbox.specs if toolbox else [])],
        }

    @app.post("/v1/tools/{name}")
    async def run_tool(name: str, request: Request):
        check_key(request)
        if toolbox is None or name not in toolbox.functions:
            raise APIError(404, f"no server tool named {name!r}", "tool_not_found")
        args = await _json_body(request, max_body_bytes)
        if not isinstance(args, dict):
            raise APIError(422, "the body must be a JSON object of arguments", "invalid_request")
        result = await asyncio.to_thread(toolbox.call, ToolCall(name, args))
        return {"name": name, "content": result}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        check_key(request)
        data = await _json_body(request, max_body_bytes)
        if not isinstance(data, dict):
            raise APIError(422, "the request body must be a JSON object", "invalid_request")
        try:
            req = ChatRequest.model_validate(data)
        except ValidationError as err:
            raise APIError(422, _describe(err.errors()), "invalid_request") from None
        if req.model != model_name:
            raise APIError(
                404,
                f"model {req.model!r} not found; this server serves {model_name!r}",
                "model_not_found",
                param="model",
            )
        _reject_unsupported(req)
        conv = to_conversation(req)
        try:
            prompt_ids = await asyncio.to_thread(encode, conv)
        except (ChatforgeError, ValueError, KeyError, TypeError) as err:  # the request's content could not be rendered
            raise APIError(400, f"cannot render these messages: {err}", "invalid_request") from None
        if len(prompt_ids) > max_prompt:
            raise APIError(
                413,
                f"prompt is {len(prompt_ids)} tokens; the limit is {max_prompt}",
                "context_length_exceeded",
                param="messages",
            )
        asked = req.max_completion_tokens or req.max_tokens
        if asked is not None and asked > max_tokens_limit:
            raise APIError(
                400,
                f"max_tokens is {asked}; the limit is {max_tokens_limit}",
                "max_tokens_too_large",
                param="max_tokens",
            )
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stop) > 4 or any(not s for s in stop):
            raise APIError(400, "stop takes up to 4 non-empty strings", "invalid_value", param="stop")
        params = SamplingParams(
            max_new_tokens=asked or default_max_tokens,
            temperature=req.temperature,
            top_k=req.top_k,
            top_p=req.top_p,
            repetition_penalty=req.repetition_penalty,
            seed=req.seed,
            stop=stop,
        )
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def push(kind: str, payload: Any) -> None:  # called from the decode thread
            loop.call_soon_threadsafe(events.put_nowait, (kind, payload))

        try:
            seq = engine.new_sequence(
                prompt_ids, params, on_delta=lambda d: push("delta", d), on_finish=lambda s: push("done", s)
            )
        except ChatforgeError as err:
            raise APIError(400, str(err), "invalid_request") from None
        try:
            scheduler.submit(seq)
        except QueueFull:
            raise APIError(
                429, "the server is busy (request queue full); retry later", "queue_full", "rate_limit_error"
            ) from None
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        with_tools = bool(conv.tools)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                _sse(engine, seq, events, rid, model_name, with_tools, include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return await _complete(engine, seq, events, request, rid, model_name, with_tools)

    return app


def _model_card(name: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "chatforge"}


def _describe(errors: list[dict]) -> str:
    parts = []
    for e in errors[:5]:
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        parts.append(f"{where or 'body'}: {e.get('msg')}")
    return "; ".join(parts)


async def _json_body(request: Request, limit: int) -> Any:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise APIError(413, f"request body is {length} bytes; the limit is {limit}", "request_too_large")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise APIError(413, f"request body exceeds {limit} bytes", "request_too_large")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise APIError(400, f"the request body is not valid JSON: {err}", "invalid_json") from None


def _reject_unsupported(req: ChatRequest) -> None:
    """Parameters we accept only at their neutral value: refusing is better than silently ignoring them."""
    if req.n != 1:
        raise APIError(400, "only n=1 is supported", "unsupported_value", param="n")
    if req.frequency_penalty or req.presence_penalty:
        raise APIError(
            400,
            "frequency/presence penalties are not supported; use repetition_penalty",
            "unsupported_value",
            "frequency_penalty",
        )
    if req.logprobs:
        raise APIError(400, "logprobs are not supported", "unsupported_value", param="logprobs")


def _usage(seq: Sequence) -> dict:
    p, c = len(seq.prompt_ids), len(seq.generated)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _finish_reason(seq: Sequence, has_calls: bool) -> str:
    if has_calls:
        return "tool_calls"
    return "length" if seq.finish_reason == "length" else "stop"


async def _complete(engine, seq, events, request, rid, model_name, with_tools) -> JSONResponse:
    while True:
        try:
            kind, _ = await asyncio.wait_for(events.get(), timeout=0.5)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                seq.cancel()
                return JSONResponse({}, status_code=499)  # nobody is listening any more
            continue
        if kind == "done":
            break
    if seq.finish_reason == "error":
        raise APIError(503, f"generation failed: {seq.error}", "generation_failed", "server_error")
    if with_tools:
        message = engine.completion(seq).message
        calls = [_openai_tool_call(c) for c in message.tool_calls]
        content = message.content if message.content or not calls else None
    else:
        calls, content = [], seq.text
    out_msg: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        out_msg["tool_calls"] = calls
    body = {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": [{"index": 0, "message": out_msg, "finish_reason": _finish_reason(seq, bool(calls))}],
        "usage": _usage(seq),
    }
    return JSONResponse(body)


async def _sse(engine, seq, events, rid, model_name, with_tools, include_usage):
    created = int(time.time())

    def chunk(delta: dict, finish: str | None = None) -> str:
        body = {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model_name,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    splitter = ToolCallSplitter(engine.template) if with_tools else None
    n_calls = 0

    def render(items: list[tuple[str, Any]]) -> list[str]:
        nonlocal n_calls
        out = []
        for kind, value in items:
            if kind == "content":
                out.append(chunk({"content": value}))
            else:
                # A call is sent once complete (id, name and the whole arguments string in one delta); clients that
                # concatenate argument fragments get the same result as with finer-grained deltas.
                out.append(chunk({"tool_calls": [{"index": n_calls, **_openai_tool_call(value)}]}))
                n_calls += 1
        return out

    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            kind, payload = await events.get()
            if kind == "delta":
                for line in render(splitter.feed(payload) if splitter else [("content", payload)]):
                    yield line
                continue
            if seq.finish_reason == "error":
                err = {
                    "error": {
                        "message": f"generation failed: {seq.error}",
                        "type": "server_error",
                        "code": "generation_failed",
                    }
                }
                yield f"data: {json.dumps(err)}\n\n"
                break
            for line in render(splitter.flush() if splitter else []):
                yield line
            yield chunk({}, _finish_reason(seq, n_calls > 0))
            if include_usage:
                body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model_name}
                yield f"data: {json.dumps({**body, 'choices': [], 'usage': _usage(seq)})}\n\n"
            break
        yield "data: [DONE]\n\n"
    finally:
        # Runs when the stream ends *and* when the client disconnects (Starlette cancels the generator): either way
        # the sequence stops using the decode loop.
        if not seq.finished:
            seq.cancel()


# -------------------------------------------------------------------------------------------------------- the CLI


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="chatforge serve", description="Serve an OpenAI-compatible API and a web chat page."
    )
    ap.add_argument("--model", required=True, help="HF folder, .gguf file, or smollm2-135m-instruct")
    ap.add_argument("--adapter", help="a LoRA adapter folder to apply")
    ap.add_argument("--template", help="chat template name (default: the model's own)")
    ap.add_argument("--served-name", help="model id clients use (default: the --model value)")
    ap.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument(
        "--api-key", default=os.environ.get("CHATFORGE_API_KEY"), help="require 'Authorization: Bearer KEY'"
    )
    ap.add_argument("--dtype", default="auto", help="auto = bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--device", default="auto", help="auto = CUDA when present, else CPU")
    ap.add_argument("--max-batch", type=int, default=8, help="sequences decoded together")
    ap.add_argument("--max-queue", type=int, default=64, help="running + waiting requests before answering 429")
    ap.add_argument("--max-tokens-limit", type=int, default=2048, help="largest max_tokens a request may ask for")
    ap.add_argument("--default-max-tokens", type=int, default=512)
    ap.add_argument("--max-prompt-tokens", type=int, help="longest prompt accepted (default: the model's context)")
    ap.add_argument("--tools", help="a .py file (or module) of Python functions the web page may run")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch
    import uvicorn

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        log.warning("binding to %s without --api-key: anyone who can reach this port can use the model", args.host)
    toolbox = None
    if args.tools:
        from chatforge.serving.toolbox import load_tools

        toolbox = load_tools(args.tools)
    engine = Engine.load(args.model, adapter=args.adapter, template=args.template, dtype=args.dtype, device=args.device)
    app = create_app(
        engine,
        args.served_name or args.model,
        api_key=args.api_key,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        max_tokens_limit=args.max_tokens_limit,
        default_max_tokens=args.default_max_tokens,
        max_prompt_tokens=args.max_prompt_tokens,
        toolbox=toolbox,
    )
    print(f"chatforge serve: http://{args.host}:{args.port}/  (OpenAI API at /v1)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
