"""`chatforge serve`: an OpenAI-compatible HTTP API (FastAPI + uvicorn) and a one-file web chat page at `/`.

Endpoints: `POST /v1/chat/completions` (plain and SSE-streamed; tools, forced tool calls, JSON output, n, logprobs),
`POST /v1/completions` (prompt in, text out, streamed too), `POST /v1/embeddings` (mean-pooled last hidden state,
L2-normalised), `POST /tokenize`, `GET /v1/models`, `GET /health`, `GET /metrics` (Prometheus text),
`GET /openapi.json`, `GET /` (the page), and, only when started with `--tools`, `GET /v1/tools` and
`POST /v1/tools/{name}` so the page can run the server's tools. On a reward model (`train.stage: rm`) `POST /v1/score`
scores conversations and the generation endpoints refuse (`serving.scoring`).

Request bodies are checked in `openai_schema`, the HTTP guards (Host, Origin, Content-Type) live in `security`, the
decode loop in `scheduler`, the response bodies and streams in `responses` and `sse`. Every error is OpenAI-style JSON
`{"error": {"message", "type", "param", "code"}}` with 400/401/403/404/413/415/429 (503 if decoding itself fails).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import copy
import logging
import os
import secrets
import socket
import threading
import time
import uuid
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from chatforge.data.schema import Conversation, ToolCall
from chatforge.errors import ChatforgeError, NotSupportedError
from chatforge.serving.engine import BASE_ADAPTER, Engine, Sequence
from chatforge.serving.openai_schema import (
    APIError,
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    output_grammar,
    parse_json_body,
    sampling_params,
    to_conversation,
    validate,
)
from chatforge.serving.responses import (
    RequestContext,
    chat_body,
    chat_sse,
    completion_body,
    completion_sse,
    sse_response,
    wait_all,
)
from chatforge.serving.scheduler import Metrics, QueueFull, Scheduler
from chatforge.serving.security import LOOPBACK_NAMES, GuardMiddleware, allowed_hosts_for
from chatforge.serving.toolbox import Toolbox

log = logging.getLogger("chatforge.serve")


def _error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


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
    host: str = "127.0.0.1",
    allowed_hosts: list[str] | None = None,
    allow_origins: list[str] = (),
) -> FastAPI:
    """The FastAPI app serving `engine` under the model id `model_name`.

    `host` is the bind address the Host header is checked against (plus `allowed_hosts`); `allow_origins` lists
    foreign web origins allowed to call the API (CORS). Tool routes exist only when `toolbox` is given.
    """
    metrics = Metrics()
    scheduler = Scheduler(engine, max_batch=max_batch, max_queue=max_queue, metrics=metrics)
    # Prompts are tokenized in request threads while the decode thread detokenizes: give encoding its own tokenizer
    # copy (and one encoder at a time), since encoding may toggle state on the Rust tokenizer it uses.
    encode_tok = copy.deepcopy(engine.tokenizer)
    encode_lock = threading.Lock()
    embed_lock = threading.Lock()

    def encode_chat(conv: Conversation) -> list[int]:
        from chatforge.templates import encode_prompt

        with encode_lock:
            return list(encode_prompt(conv, encode_tok, engine.template))

    def encode_plain(text: str, with_bos: bool = True) -> list[int]:
        from chatforge.templates import encode_text

        with encode_lock:
            ids = encode_text(text, encode_tok, add_eos=False)
        bos = encode_tok.bos_token_id
        if with_bos and engine.template.bos and encode_tok.bos_token == engine.template.bos and bos is not None:
            ids = [bos, *ids]
        return ids

    max_prompt = min(max_prompt_tokens or engine.max_total - 1, engine.max_total - 1)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        scheduler.start()
        yield
        scheduler.stop()

    app = FastAPI(title="chatforge", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.scheduler = scheduler
    app.state.metrics = metrics
    app.add_middleware(
        GuardMiddleware,
        allowed_hosts=allowed_hosts_for(host, allowed_hosts or ()) if host is not None else None,
        allow_origins=list(allow_origins),
        metrics=metrics,
    )

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError):
        return _error_response(err)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
        return _error_response(APIError(err.status_code, str(err.detail), code))

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if not secrets.compare_digest(given.encode(), api_key.encode()):
            raise APIError(401, "missing or invalid API key (send 'Authorization: Bearer KEY')", "invalid_api_key")

    # Served model ids -> the PEFT adapter their rows decode with (several adapters on one base), or None.
    routes: dict[str, str | None] = {model_name: BASE_ADAPTER if engine.adapters else None, **engine.adapters}

    def check_model(name: str) -> str | None:
        if name not in routes:
            served = ", ".join(repr(n) for n in routes)
            raise APIError(
                404, f"model {name!r} not found; this server serves {served}", "model_not_found", param="model"
            )
        return routes[name]

    async def body_of(request: Request, model):
        check_key(request)
        raw = await _read_body(request, max_body_bytes)
        req = validate(model, parse_json_body(raw))
        check_model(req.model)
        return req

    def max_new_tokens(asked: int | None, default: int) -> int:
        if asked is not None and asked > max_tokens_limit:
            raise APIError(
                400,
                f"max_tokens is {asked}; the limit is {max_tokens_limit}",
                "max_tokens_too_large",
                param="max_tokens",
            )
        return asked or min(default, max_tokens_limit)

    def check_prompt(ids: list[int], param: str) -> None:
        if len(ids) > max_prompt:
            raise APIError(
                413, f"prompt is {len(ids)} tokens; the limit is {max_prompt}", "context_length_exceeded", param=param
            )

    async def prepare_token_bytes() -> None:
        """Logprobs report exact token bytes through llguidance's tokenizer view; build it off the event loop once."""
        try:
            await asyncio.to_thread(engine.constraints)
        except ChatforgeError:  # llguidance missing or tokenizer unsupported: tokens are decoded instead
            pass

    def check_bias(params) -> None:
        bad = [t for t in params.logit_bias if t >= engine.vocab_size]
        if bad:
            raise APIError(
                400,
                f"logit_bias names token {bad[0]}; the vocabulary has {engine.vocab_size} tokens",
                "invalid_value",
                param="logit_bias",
            )

    def start(loop, prompts, params, n: int, grammar: str | None, grammar_param, chat: bool, adapter=None):
        """Build the request's sequences (len(prompts) * n), wired to one event queue, and queue them all. Runs in a
        worker thread (grammar compilation can take a moment); events are put on `loop`."""
        events: asyncio.Queue = asyncio.Queue()
        seqs: list[Sequence] = []
        for p, ids in enumerate(prompts):
            for k in range(n):
                i = p * n + k
                choice_params = copy.copy(params)
                if params.seed is not None:  # n choices from one seed must differ, and still be reproducible
                    choice_params.seed = params.seed + k
                try:
                    seq = engine.new_sequence(
                        ids,
                        choice_params,
                        on_delta=lambda d, i=i: loop.call_soon_threadsafe(events.put_nowait, (i, "delta", d)),
                        on_finish=lambda s, i=i: loop.call_soon_threadsafe(events.put_nowait, (i, "done", s)),
                        grammar=grammar,
                        chat=chat,
                    )
                except NotSupportedError as err:
                    raise APIError(400, str(err), "unsupported_value", param=grammar_param) from None
                except ChatforgeError as err:
                    raise APIError(400, str(err), "invalid_value", param=grammar_param) from None
                if adapter is not None:
                    seq.adapter = adapter
                seqs.append(seq)
        try:
            scheduler.submit(seqs)
        except QueueFull:
            raise APIError(
                429, "the server is busy (request queue full); retry later", "queue_full", type_="rate_limit_error"
            ) from None
        return seqs, events

    # POST /v1/score (reward models; on one, the generation routes refuse): see `serving.scoring`.
    from chatforge.serving.scoring import add_score_routes

    add_score_routes(
        app,
        engine,
        check_key=check_key,
        check_model=check_model,
        read_body=lambda request: _read_body(request, max_body_bytes),
        max_prompt=max_prompt,
    )

    # ------------------------------------------------------------------------------------------- plain routes

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(resources.files("chatforge.serving").joinpath("static/index.html").read_text("utf-8"))

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, **scheduler.load()}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render(scheduler.load()), media_type="text/plain; version=0.0.4")

    @app.get("/openapi.json")
    async def openapi():
        from chatforge.serving.openapi import openapi_document
        from chatforge.serving.scoring import is_reward_engine

        return openapi_document(tuple(routes), with_tools=toolbox is not None, with_score=is_reward_engine(engine))

    @app.get("/v1/models")
    async def models(request: Request):
        check_key(request)
        return {"object": "list", "data": [_model_card(name, created) for name in routes]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str, request: Request):
        check_key(request)
        if name not in routes:
            raise APIError(404, f"model {name!r} not found", "model_not_found")
        return _model_card(name, created)

    if toolbox is not None:

        @app.get("/v1/tools")
        async def list_tools(request: Request):
            check_key(request)
            return {"object": "list", "data": [{"type": "function", "function": s} for s in toolbox.specs]}

        @app.post("/v1/tools/{name}")
        async def run_tool(name: str, request: Request):
            check_key(request)
            if name not in toolbox.functions:
                raise APIError(404, f"no server tool named {name!r}", "tool_not_found")
            args = parse_json_body(await _read_body(request, max_body_bytes))
            if not isinstance(args, dict):
                raise APIError(400, "the body must be a JSON object of arguments", "invalid_request")
            result = await asyncio.to_thread(toolbox.call, ToolCall(name, args))
            return {"name": name, "content": result}

    @app.post("/tokenize")
    async def tokenize(request: Request):
        check_key(request)
        data = parse_json_body(await _read_body(request, max_body_bytes))
        if not isinstance(data, dict):
            raise APIError(400, "the request body must be a JSON object", "invalid_request")
        if "messages" in data:
            req = validate(ChatRequest, {k: v for k, v in data.items() if k in ("model", "messages", "tools")})
            check_model(req.model)
            ids = await asyncio.to_thread(_render, encode_chat, to_conversation(req))
        else:
            prompt = data.get("prompt")
            check_model(data.get("model"))
            if not isinstance(prompt, str):
                raise APIError(400, "give 'prompt' (a string) or 'messages'", "invalid_value", param="prompt")
            ids = await asyncio.to_thread(encode_plain, prompt)
        return {"tokens": ids, "count": len(ids), "max_model_len": engine.max_total}

    # ------------------------------------------------------------------------------------ chat completions

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req: ChatRequest = await body_of(request, ChatRequest)
        conv = to_conversation(req)
        grammar, grammar_param = output_grammar(req, conv)
        prompt_ids = await asyncio.to_thread(_render, encode_chat, conv)
        check_prompt(prompt_ids, "messages")
        if req.top_logprobs and not req.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", "invalid_value", param="top_logprobs")
        params = sampling_params(
            req,
            max_new_tokens(req.max_completion_tokens or req.max_tokens, default_max_tokens),
            logprobs=bool(req.logprobs),
            top_logprobs=req.top_logprobs or 0,
        )
        check_bias(params)
        seqs, events = await asyncio.to_thread(
            start,
            asyncio.get_running_loop(),
            [prompt_ids],
            params,
            req.n,
            grammar,
            grammar_param,
            True,
            routes[req.model],
        )
        if req.logprobs:
            await prepare_token_bytes()
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        ctx = RequestContext(engine, rid, req.model, bool(conv.tools), bool(req.logprobs))
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return sse_response(chat_sse(ctx, seqs, events, include_usage), seqs)
        await wait_all(seqs, events, request)
        return JSONResponse(chat_body(ctx, seqs))

    # ------------------------------------------------------------------------------------ text completions

    @app.post("/v1/completions")
    async def completions(request: Request):
        req: CompletionRequest = await body_of(request, CompletionRequest)
        if req.echo:
            raise APIError(400, "echo is not supported", "unsupported_value", param="echo")
        if req.suffix:
            raise APIError(400, "suffix (insertion) is not supported", "unsupported_value", param="suffix")
        if req.best_of is not None and req.best_of != req.n:
            raise APIError(400, "best_of must equal n (no re-ranking)", "unsupported_value", param="best_of")
        texts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if len(texts) * req.n > 64:
            raise APIError(400, "at most 64 completions (prompts x n) per request", "invalid_value", param="prompt")
        prompts = []
        for i, text in enumerate(texts):
            ids = await asyncio.to_thread(encode_plain, text)
            if not ids:
                raise APIError(400, "the prompt is empty", "invalid_value", param="prompt")
            check_prompt(ids, "prompt" if isinstance(req.prompt, str) else f"prompt[{i}]")
            prompts.append(ids)
        want_lp = req.logprobs is not None
        params = sampling_params(
            req, max_new_tokens(req.max_tokens, 16), logprobs=want_lp, top_logprobs=req.logprobs or 0
        )
        check_bias(params)
        seqs, events = await asyncio.to_thread(
            start, asyncio.get_running_loop(), prompts, params, req.n, None, None, False, routes[req.model]
        )
        if want_lp:
            await prepare_token_bytes()
        rid = f"cmpl-{uuid.uuid4().hex}"
        ctx = RequestContext(engine, rid, req.model, False, want_lp)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return sse_response(completion_sse(ctx, seqs, events, include_usage), seqs)
        await wait_all(seqs, events, request)
        return JSONResponse(completion_body(ctx, seqs))

    # ----------------------------------------------------------------------------------------- embeddings

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        req: EmbeddingRequest = await body_of(request, EmbeddingRequest)
        if req.dimensions is not None:
            raise APIError(
                400, "dimensions (truncated embeddings) is not supported", "unsupported_value", param="dimensions"
            )
        texts = [req.input] if isinstance(req.input, str) else req.input
        prompts = []
        for i, text in enumerate(texts):
            ids = await asyncio.to_thread(encode_plain, text)
            param = "input" if isinstance(req.input, str) else f"input[{i}]"
            if not ids:
                raise APIError(400, "an input is empty", "invalid_value", param=param)
            check_prompt(ids, param)
            prompts.append(ids)

        def run() -> list:
            with embed_lock:  # one embedding batch at a time next to the decode loop
                adapter = routes[req.model] or BASE_ADAPTER
                return [engine.embed(prompts[i : i + 16], adapter) for i in range(0, len(prompts), 16)]

        try:
            parts = await asyncio.to_thread(run)
        except Exception as err:  # noqa: BLE001
            log.exception("embedding failed")
            raise APIError(
                503, f"embedding failed: {type(err).__name__}: {err}", "embedding_failed", type_="server_error"
            ) from None
        import torch

        vectors = torch.cat(parts)
        data = []
        for i, v in enumerate(vectors):
            if req.encoding_format == "base64":
                emb: Any = base64.b64encode(v.numpy().astype("<f4").tobytes()).decode()
            else:
                emb = v.tolist()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        tokens = sum(len(p) for p in prompts)
        return {
            "object": "list",
            "data": data,
            "model": req.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    return app


# ------------------------------------------------------------------------------------------------ helpers


def _render(encode, conv: Conversation) -> list[int]:
    try:
        return encode(conv)
    except (ChatforgeError, ValueError, KeyError, TypeError) as err:  # the request's content could not be rendered
        raise APIError(400, f"cannot render these messages: {err}", "invalid_request", param="messages") from None


def _model_card(name: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "chatforge"}


async def _read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused (413) as soon as it is known to exceed `limit`: before parsing, before buffering it."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise APIError(413, f"request body is {length} bytes; the limit is {limit}", "request_too_large")
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise APIError(413, f"request body exceeds {limit} bytes", "request_too_large")
    return bytes(body)


# -------------------------------------------------------------------------------------------------------- the CLI


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="chatforge serve", description="Serve an OpenAI-compatible API and a web chat page."
    )
    ap.add_argument("--model", required=True, help="HF folder, .gguf file, or smollm2-135m-instruct")
    ap.add_argument(
        "--adapter",
        action="append",
        default=[],
        help="a LoRA adapter folder to apply, or NAME=FOLDER (repeatable: several adapters on one base, chosen by "
        "the request's model; the base itself stays served under --served-name)",
    )
    ap.add_argument("--template", help="chat template name (default: the model's own)")
    ap.add_argument("--served-name", help="model id clients use (default: the --model folder/file name)")
    ap.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument(
        "--api-key", default=os.environ.get("CHATFORGE_API_KEY"), help="require 'Authorization: Bearer KEY'"
    )
    ap.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        help="a web origin (scheme://host:port) allowed to call the API from a browser (repeatable)",
    )
    ap.add_argument(
        "--allowed-host", action="append", default=[], help="another Host header name to accept (repeatable)"
    )
    ap.add_argument("--dtype", default="auto", help="auto = bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--device", default="auto", help="auto = CUDA when present, else CPU")
    ap.add_argument("--max-batch", type=int, default=8, help="sequences decoded together")
    ap.add_argument("--max-queue", type=int, default=64, help="running + waiting requests before answering 429")
    ap.add_argument("--max-tokens-limit", type=int, default=2048, help="largest max_tokens a request may ask for")
    ap.add_argument("--default-max-tokens", type=int, default=512)
    ap.add_argument("--max-prompt-tokens", type=int, help="longest prompt accepted (default: the model's context)")
    ap.add_argument(
        "--tools",
        help="a .py file (or module) of Python functions the web page may run through POST /v1/tools/NAME "
        "(these routes exist only with this flag)",
    )
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    ap.add_argument(
        "--static-cache",
        action="store_true",
        help="decode with a preallocated static KV cache (--max-batch rows); on CUDA the decode step is captured "
        "as a CUDA graph (torch.compile reduce-overhead), see --compile",
    )
    ap.add_argument(
        "--static-cache-len",
        type=int,
        help="columns of the static cache = the longest prompt + reply (default: the model's context, at most 4096)",
    )
    ap.add_argument(
        "--compile",
        choices=["auto", "on", "off"],
        default="auto",
        help="with --static-cache: capture the decode step as a CUDA graph (auto = on CUDA only)",
    )
    return ap


def configure_static_cache(engine: Engine, args: argparse.Namespace) -> None:
    """Apply --static-cache / --static-cache-len / --compile to a loaded engine (rows = --max-batch)."""
    if args.static_cache_len is not None and not args.static_cache:
        raise ChatforgeError("--static-cache-len needs --static-cache")
    if args.static_cache:
        engine.use_static_cache(slots=args.max_batch, max_cache_len=args.static_cache_len, compile=args.compile)


def parse_adapters(values: list[str]) -> list[tuple[str | None, str]]:
    """`--adapter` values: one plain folder, or any number of NAME=FOLDER (names unique, usable as model ids)."""
    if len(values) == 1 and "=" not in values[0]:
        return [(None, values[0])]
    out: list[tuple[str | None, str]] = []
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            raise ChatforgeError(f"--adapter {v!r}: with several adapters each must be NAME=FOLDER")
        if name in (n for n, _ in out) or name == BASE_ADAPTER:
            raise ChatforgeError(f"--adapter {v!r}: the name {name!r} is used twice or reserved")
        out.append((name, path))
    return out


def default_served_name(model: str) -> str:
    """The model id to serve: the folder or file name of a path (never the whole path), else the spec itself."""
    path = Path(model)
    if path.exists():
        return path.stem if path.is_file() else path.resolve().name
    return model


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind the listening socket now, before the model loads, so a busy port fails in a second, not after a load."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise ChatforgeError(f"--host {host}: cannot resolve it ({err})") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        raise ChatforgeError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 < args.port < 65536:
        raise ChatforgeError(f"--port must be in 1..65535, got {args.port}")
    for name in ("max_batch", "max_queue", "max_tokens_limit", "default_max_tokens"):
        if getattr(args, name) < 1:
            raise ChatforgeError(f"--{name.replace('_', '-')} must be >= 1")
    loopback = args.host in LOOPBACK_NAMES or args.host.startswith("127.")
    if args.tools and not loopback and not args.api_key:
        raise ChatforgeError(f"--tools runs Python functions for any caller: binding it to {args.host} needs --api-key")
    if not loopback and not args.api_key:
        log.warning("binding to %s without --api-key: anyone who can reach this port can use the model", args.host)
    sock = bind_socket(args.host, args.port)
    import torch
    import uvicorn

    if args.threads:
        if not 1 <= args.threads <= (os.cpu_count() or 1) * 4:
            raise ChatforgeError(f"--threads must be in 1..{(os.cpu_count() or 1) * 4}")
        torch.set_num_threads(args.threads)
    toolbox = None
    if args.tools:
        from chatforge.serving.toolbox import load_tools

        toolbox = load_tools(args.tools)
    named = parse_adapters(args.adapter)
    if args.static_cache and len(named) > 1:
        raise NotSupportedError(
            "--static-cache with several --adapter: the captured decode step cannot switch "
            "adapters per row; serve one adapter per process or drop --static-cache"
        )
    if args.static_cache_len is not None and (args.static_cache_len < 2 or not args.static_cache):
        raise ChatforgeError("--static-cache-len needs --static-cache and a value >= 2")
    first = named[0][1] if named else None
    engine = Engine.load(args.model, adapter=first, template=args.template, dtype=args.dtype, device=args.device)
    if named and named[0][0] is not None:
        engine.adapters[named[0][0]] = "default"  # PEFT's name for the adapter loaded with the model
        for name, path in named[1:]:
            engine.add_adapter(name, path)
    configure_static_cache(engine, args)
    app = create_app(
        engine,
        args.served_name or default_served_name(args.model),
        api_key=args.api_key,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        max_tokens_limit=args.max_tokens_limit,
        default_max_tokens=args.default_max_tokens,
        max_prompt_tokens=args.max_prompt_tokens,
        toolbox=toolbox,
        host=args.host,
        allowed_hosts=args.allowed_host,
        allow_origins=args.allow_origin,
    )
    print(f"chatforge serve: http://{args.host}:{args.port}/  (OpenAI API at /v1)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[sock])
    return 0
