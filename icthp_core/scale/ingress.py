"""The reward server's HTTP ingress: uvicorn in the `icthp serve` process, `IngressGuard` in front of `Forward`,
which hands each request to the replicas through a Serve deployment handle. Ray Serve's own HTTP proxy is not
started (its body queue is unbounded, and its `/-/routes` answers anyone), so this is the only HTTP port.

The guard sees every request first:

* the bearer token is required on every route (any path, any method); only `GET /health` may be left open
  (`open_health`);
* the body is read here chunk by chunk, chunked or not, and the request is answered 413 as soon as it passes
  `max_request_bytes` (the rest is never read); a `Content-Length` over the limit is refused before reading;
* the ingress holds at most `max_inflight_bytes` of bodies at once, counted as they arrive and until the answer is
  sent: a request that does not fit gets 503 with `Retry-After`; a body that stalls for `body_timeout_s` gets 408.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import socket
import threading
import time


async def _answer(send, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """A JSON error answer; the connection is closed after it (a body the client is still sending is not read)."""
    body = json.dumps({"error": message}).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    head.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": head + (headers or [])})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class IngressGuard:
    """ASGI middleware: token on every route, body size counted while streaming, in-flight body budget."""

    def __init__(
        self,
        app,
        token: str | None = None,
        open_health: bool = False,
        max_request_bytes: int = 64 << 20,
        max_inflight_bytes: int = 256 << 20,
        retry_after_s: int = 1,
        body_timeout_s: float = 30.0,
    ):
        self.app, self.token, self.open_health = app, token, open_health
        self.body_timeout = body_timeout_s
        self.max_bytes, self.max_inflight, self.retry_after = max_request_bytes, max_inflight_bytes, retry_after_s
        self.inflight = 0  # bytes reserved by requests being read or served (one event loop: no lock needed)

    def _authorised(self, scope) -> bool:
        if self.token is None:
            return True
        if self.open_health and scope.get("path", "").rstrip("/") == "/health":
            return True
        given = _header(scope, b"authorization") or ""
        return hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket" and self.token is not None:
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self._authorised(scope):
            await _answer(send, 401, "missing or wrong bearer token (send 'Authorization: Bearer <token>')")
            return
        length = _header(scope, b"content-length")
        if length is not None and not length.strip().isdigit():
            await _answer(send, 400, f"Content-Length {length[:40]!r} is not a number")
            return
        if length is not None and int(length) > self.max_bytes:
            await _answer(send, 413, f"request body of {int(length):,} bytes is over the limit of {self.max_bytes:,}")
            return
        held = [0]  # bytes of this body counted in self.inflight
        try:
            await self._forward(scope, receive, send, held)
        finally:
            self.inflight -= held[0]

    async def _busy(self, send) -> None:
        retry = [(b"retry-after", str(self.retry_after).encode())]
        await _answer(send, 503, "server busy: too many request bytes in flight; retry later", retry)

    async def _forward(self, scope, receive, send, held: list[int]) -> None:
        """Read the body up to the limit, counting it in the in-flight bytes as it arrives (a slow sender holds only
        what it sent), then hand it to the app as one message."""
        body = bytearray()
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout)
            except TimeoutError:
                await _answer(send, 408, f"request body: nothing received for {self.body_timeout:g} s")
                return
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            if len(body) + len(chunk) > self.max_bytes:
                await _answer(send, 413, f"request body over the limit of {self.max_bytes:,} bytes (stopped reading)")
                return
            if self.inflight + len(chunk) > self.max_inflight:
                await self._busy(send)
                return
            self.inflight += len(chunk)
            held[0] += len(chunk)
            body += chunk
            if not message.get("more_body", False):
                break
        first = {"type": "http.request", "body": bytes(body), "more_body": False}
        del body
        sent = False

        async def replay():
            nonlocal sent, first
            if not sent:
                sent = True
                message, first = first, None
                return message
            return await receive()

        await self.app(scope, replay, send)


class Forward:
    """ASGI app: one request (its body already read and bounded by the guard) -> `handle.http` -> the answer."""

    def __init__(self, handle, retry_after_s: int = 1):
        self.handle, self.retry_after = handle, retry_after_s

    async def __call__(self, scope, receive, send):
        message = await receive()
        body = message.get("body", b"") if message["type"] == "http.request" else b""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        try:
            reply = await self.handle.http.remote(scope["method"], scope["path"], headers, body)
        except Exception as e:  # noqa: BLE001 - every failure is an HTTP answer
            from ray.exceptions import RayTaskError

            if isinstance(e, RayTaskError):  # the replica raised: a bug, logged by Ray
                await _answer(send, 500, f"internal error ({type(e).__name__}); see the server log")
                return
            retry = [(b"retry-after", str(self.retry_after).encode())]  # a replica died or is restarting
            await _answer(send, 503, f"no replica answered ({type(e).__name__}); retry later", retry)
            return
        status, content, content_type, extra = reply
        head = [(b"content-type", content_type.encode()), (b"content-length", str(len(content)).encode())]
        head += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (extra or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": head})
        await send({"type": "http.response.body", "body": content, "more_body": False})


class IngressServer:
    """uvicorn serving `IngressGuard(Forward(handle))` on `config.host:config.port` from a background thread."""

    def __init__(self, config, handle):
        import uvicorn

        from icthp_core.errors import ConfigError

        limits = config.limits
        app = IngressGuard(
            Forward(handle, limits.retry_after_s),
            token=config.token,
            open_health=config.open_health,
            max_request_bytes=limits.max_request_bytes,
            max_inflight_bytes=limits.max_inflight_bytes,
            retry_after_s=limits.retry_after_s,
        )
        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((config.host, config.port))
        except OSError as e:
            self.sock.close()
            raise ConfigError(f"--host {config.host} --port {config.port}: cannot listen ({e.strerror})") from None
        self.url = f"http://{config.host if family == socket.AF_INET else f'[{config.host}]'}:{config.port}"
        uv = uvicorn.Config(
            app, lifespan="off", log_level="warning", access_log=False, timeout_keep_alive=5, limit_concurrency=1024
        )
        self.server = uvicorn.Server(uv)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self, timeout_s: float = 30.0) -> IngressServer:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self.server.started:
            raise RuntimeError(f"the HTTP ingress on {self.url} did not start")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


__all__ = ["Forward", "IngressGuard", "IngressServer"]
