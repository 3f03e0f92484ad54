"""Safe-by-default HTTP guards for `chatforge serve` (an ASGI middleware around the whole app).

A server on 127.0.0.1 without an API key is reachable from every web page the user opens. Browsers stop a foreign page
from *reading* responses, not from *sending* requests, and DNS rebinding lets a foreign name resolve to 127.0.0.1. So:
- the `Host` header must name the bind address (or `localhost`/loopback when bound to loopback, or a name given with
  `--allowed-host`): a rebinding page sends its own name and is refused (403);
- a request whose `Origin` is not this server itself is refused (403) unless `--allow-origin` names it; allowed
  origins get CORS headers and preflight answers;
- a POST must say `Content-Type: application/json` (415 otherwise), which a cross-site form or `text/plain` fetch
  cannot do without a preflight;
- any exception that escapes a route is answered as JSON here and not re-raised, so the server's error path never
  resets the keep-alive connection.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from urllib.parse import urlsplit

log = logging.getLogger("chatforge.serve")

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
ALL_INTERFACES = ("0.0.0.0", "::", "")


def allowed_hosts_for(bind: str, extra: Iterable[str] = ()) -> set[str] | None:
    """Host names accepted for a bind address; None (any) when bound to all interfaces without `extra` names."""
    extra = {h.lower().strip("[]") for h in extra}
    if bind in ALL_INTERFACES:
        return extra or None
    names = {bind.lower().strip("[]")} | extra
    if bind in LOOPBACK_NAMES or bind.startswith("127."):
        names |= set(LOOPBACK_NAMES)
    return names


def _host_name(host: str) -> str:
    """`example.com:8000` -> `example.com`; `[::1]:8000` -> `::1`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


async def send_json(send, status: int, message: str, code: str, type_: str = "invalid_request_error", headers=()):
    body = json.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


KNOWN_PATHS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
    "/v1/tools",
    "/tokenize",
    "/health",
    "/metrics",
    "/openapi.json",
    "/",
)


def _endpoint(path: str) -> str:
    """A bounded label for metrics: the known route the path belongs to, else 'other'."""
    for known in KNOWN_PATHS:
        if path == known or (known not in ("/",) and path.startswith(known + "/")):
            return known
    return "other"


class GuardMiddleware:
    """Host, Origin and Content-Type checks, CORS for allowed origins, and a last-resort JSON error handler."""

    def __init__(self, app, allowed_hosts: set[str] | None, allow_origins: Iterable[str] = (), metrics=None):
        self.app = app
        self.allowed_hosts = allowed_hosts
        self.allow_origins = {o.rstrip("/").lower() for o in allow_origins}
        self.metrics = metrics

    def _cors(self, origin: str | None) -> list[tuple[bytes, bytes]]:
        if origin and origin.rstrip("/").lower() in self.allow_origins:
            return [(b"access-control-allow-origin", origin.encode()), (b"vary", b"Origin")]
        return []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                return await self.app(scope, receive, send)
            return  # websockets and others: not served
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        if self.allowed_hosts is not None and _host_name(host) not in self.allowed_hosts:
            return await self._refuse(scope, send, 403, f"Host {host!r} is not served here", "forbidden_host")
        origin = headers.get("origin")
        if origin is not None and not self._origin_ok(origin, host):
            return await self._refuse(
                scope,
                send,
                403,
                f"cross-origin requests from {origin!r} are refused (see --allow-origin)",
                "forbidden_origin",
            )
        cors = self._cors(origin)
        method = scope.get("method", "GET")
        if method == "OPTIONS" and cors:
            pre = [
                (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
                (b"access-control-allow-headers", b"authorization, content-type"),
                (b"access-control-max-age", b"600"),
            ]
            await send({"type": "http.response.start", "status": 204, "headers": cors + pre})
            return await send({"type": "http.response.body", "body": b""})
        if method == "POST":
            media = headers.get("content-type", "").split(";")[0].strip().lower()
            if media != "application/json":
                return await self._refuse(
                    scope,
                    send,
                    415,
                    "POST bodies must be sent as Content-Type: application/json",
                    "unsupported_media_type",
                )
        started = False

        async def send_wrapper(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if self.metrics is not None:
                    self.metrics.request(_endpoint(scope.get("path", "")), message["status"])
                if cors:
                    message = {**message, "headers": list(message.get("headers", [])) + cors}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as err:  # noqa: BLE001 - the route's bug must not reset the client's connection
            log.error("unhandled error on %s", scope.get("path"), exc_info=err)
            if not started:
                await send_json(send, 503, f"internal error: {type(err).__name__}", "internal_error", "server_error")

    def _origin_ok(self, origin: str, host: str) -> bool:
        if origin.rstrip("/").lower() in self.allow_origins:
            return True
        parts = urlsplit(origin)
        # Same origin: the page this server served at `/` (its Origin is this server's own scheme://host:port).
        return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower() and bool(host)

    async def _refuse(self, scope, send, status, message, code):
        if self.metrics is not None:
            self.metrics.request(_endpoint(scope.get("path", "")), status)
        await send_json(send, status, message, code)
