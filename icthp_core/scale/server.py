"""The reward server: a Ray Serve deployment scoring images with dynamic batching across concurrent requests.

Imports Ray at module level: import it only through `icthp serve` / `start_server`. Requests reach the replicas
only through the ingress (`ingress.py`) and a deployment handle (`RewardServer.http`), never through Ray's proxy.
Routes: `POST /score` (see `protocol.py`), `GET /health`, `GET /metrics` (Prometheus text, this replica's counters).

Memory is bounded by configuration (`ServeLimits`, docs/reliability.md): the ingress (`ingress.py`, the only HTTP
port) requires the token on every route, counts bodies while they stream and bounds the bytes in flight; each
replica checks image headers
against the per-image and per-request budgets before decoding, and admits a request only while its in-flight pixel
budget has room (else the request waits up to `queue_timeout_s`, then gets 503 with `Retry-After`).
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from ray import serve
from starlette.requests import Request

from icthp_core.data.preprocess import MODE_SIZE, preprocess_pil
from icthp_core.scale.protocol import BadRequest, ScoreRequest, parse_json, parse_multipart
from icthp_core.scale.serve_config import ServeConfig, ServeLimits

DEFAULT_MAX_BATCH = 32
DEFAULT_WAIT_S = 0.01


class Reply(NamedTuple):
    """An HTTP answer as plain data (crosses the deployment handle)."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] | None = None


def _reply(status: int, payload: dict, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, json.dumps(payload).encode(), "application/json", headers or {})


async def _multipart(body: bytes, content_type: str, max_files: int):
    """Starlette's form parser over a body already read (and counted)."""
    from starlette.formparsers import MultiPartException

    scope = {"type": "http", "method": "POST", "headers": [(b"content-type", content_type.encode("latin-1"))]}

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        return await Request(scope, receive).form(max_files=max_files, max_fields=max_files + 8)
    except MultiPartException as e:
        raise BadRequest(f"multipart body: {e.message}") from None


class InflightBudget:
    """Pixels charged by the requests a replica works on; `acquire` waits up to a timeout for room."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0
        self._cond: asyncio.Condition | None = None  # made in the replica's event loop

    async def acquire(self, amount: int, timeout_s: float) -> bool:
        self._cond = self._cond or asyncio.Condition()
        async with self._cond:
            try:
                await asyncio.wait_for(self._cond.wait_for(lambda: self.used + amount <= self.limit), timeout_s)
            except TimeoutError:
                return False
            self.used += amount
            return True

    async def release(self, amount: int) -> None:
        assert self._cond is not None
        async with self._cond:
            self.used -= amount
            self._cond.notify_all()


@functools.cache
def _libc():
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def limit_allocator_slack() -> bool:
    """Make glibc return freed memory to the OS: blocks >= 256 KiB (a preprocessed 224² image is 602 KB) are mapped
    and unmapped on free (the default threshold grows to 32 MiB after the first large free, so decoded images and
    tensors then stay in per-thread arenas), the heap is trimmed above 1 MiB free, and at most 4 arenas.
    Keeps the replica's RSS near its live memory, which the budgets bound. False where this is not glibc."""
    libc = _libc()
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8  # <malloc.h>
    try:
        settings = ((m_mmap_threshold, 256 << 10), (m_trim_threshold, 1 << 20), (m_arena_max, 4))
        return libc is not None and all(libc.mallopt(k, v) == 1 for k, v in settings)
    except AttributeError:
        return False


def trim_allocator() -> None:
    """Give the free memory of every glibc arena back to the OS (after a request's images are decoded)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def bind_internal_grpc(address: str) -> bool:
    """Make this process's Serve replica gRPC server (inter-deployment calls) listen on `address` instead of on
    every interface: Ray 2.60 hard-codes `[::]:0` in `ray/serve/_private/replica.py` and has no option for it.
    Call before the replica finishes initialising (the deployment's constructor); False where Ray lacks the hook."""
    try:
        from ray.serve._private import replica
    except ImportError:
        return False
    original = getattr(replica, "add_port_to_grpc_server", None)
    if original is None:
        return False
    if getattr(original, "icthp_bound", False):
        return True
    host = f"[{address}]" if ":" in address else address

    def bind(server, addr: str):
        if addr.startswith(("[::]:", "0.0.0.0:")):
            addr = f"{host}:{addr.rsplit(':', 1)[1]}"
        return original(server, addr)

    bind.icthp_bound = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = bind
    return True


class RewardServer:
    """One replica: models loaded once; `/score` requests are batched across callers by `@serve.batch`."""

    def __init__(
        self,
        metrics: Sequence[str],
        sources: dict[str, str],
        device: str | None = None,
        dtype: str = "fp32",
        max_batch_size: int = DEFAULT_MAX_BATCH,
        batch_wait_s: float = DEFAULT_WAIT_S,
        token: str | None = None,
        open_health: bool = False,
        limits: ServeLimits | None = None,
    ):
        import ray

        from icthp_core.scoring.registry import METRICS
        from icthp_core.scoring.scorer import MultiScorer

        self.grpc_bound = bind_internal_grpc(ray.util.get_node_ip_address())
        self.allocator_limited = limit_allocator_slack()
        self.scorer = MultiScorer(list(metrics), sources, device=device, dtype=dtype)
        self.metrics = list(metrics)
        self.prompt_metrics = {m for m in self.metrics if METRICS[m].needs_prompt}
        self.token, self.open_health = token, open_health
        self.limits = (limits or ServeLimits()).check()
        self.per_image_extra = sum(MODE_SIZE[m] ** 2 for m in self.scorer.preprocess_modes)
        self.budget = InflightBudget(self.limits.max_inflight_pixels)
        self.max_batch_size = max_batch_size
        self._score_many.set_max_batch_size(max_batch_size)
        self._score_many.set_batch_wait_timeout_s(batch_wait_s)
        self.counters = dict.fromkeys(
            ("requests", "requests_rejected", "requests_busy", "images", "batches", "batch_images", "batch_size_max"), 0
        )
        self.counters["latency_seconds_sum"] = 0.0

    # -------------------------------------------------------------------------------------------- batching
    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH, batch_wait_timeout_s=DEFAULT_WAIT_S)
    async def _score_many(self, items: list[tuple[dict[str, torch.Tensor], list[str] | None]]) -> list[dict]:
        """Score several requests' pixels, at most `max_batch_size` images per model call; each request's scores."""
        sizes = [next(iter(p.values())).shape[0] for p, _ in items]
        prompts = None
        if self.scorer.needs_prompt:  # prompt-free requests (asking prompt-free metrics) get a placeholder prompt
            prompts = [q for (_, ps), n in zip(items, sizes, strict=True) for q in (ps or ["an image"] * n)]
        scores = await asyncio.to_thread(self._score_chunks, [p for p, _ in items], prompts)
        self.counters["batches"] += 1
        self.counters["batch_images"] += sum(sizes)
        out, s = [], 0
        for n in sizes:
            out.append({m: v[s : s + n].tolist() for m, v in scores.items()})
            s += n
        return out

    def _chunks(self, pixels: list[dict[str, torch.Tensor]]):
        """Model-call inputs of at most `max_batch_size` images, cut across requests (no copy of the whole batch)."""
        pending: list[dict[str, torch.Tensor]] = []
        count, limit = 0, self.max_batch_size
        for px in pixels:
            n, s = next(iter(px.values())).shape[0], 0
            while s < n:
                take = min(limit - count, n - s)
                pending.append({m: x[s : s + take] for m, x in px.items()})
                count, s = count + take, s + take
                if count == limit:
                    yield {m: torch.cat([p[m] for p in pending]) for m in px}
                    pending, count = [], 0
        if pending:
            yield {m: torch.cat([p[m] for p in pending]) for m in pending[0]}

    def _score_chunks(self, pixels: list[dict[str, torch.Tensor]], prompts: list[str] | None) -> dict:
        parts, s = [], 0
        for chunk in self._chunks(pixels):
            n = next(iter(chunk.values())).shape[0]
            self.counters["batch_size_max"] = max(self.counters["batch_size_max"], n)  # images in one model call
            parts.append(self.scorer.score_pixels(chunk, prompts[s : s + n] if prompts else None))
            s += n
        return {m: torch.cat([p[m] for p in parts]) for m in parts[0]}

    def _pixels(self, req: ScoreRequest) -> dict[str, torch.Tensor]:
        """Decode and preprocess one image at a time into preallocated tensors (one full-size image per request in
        memory at once, one copy of the preprocessed pixels)."""
        out = {m: torch.empty(len(req.items), 3, MODE_SIZE[m], MODE_SIZE[m]) for m in self.scorer.preprocess_modes}
        for i, item in enumerate(req.items):
            img = item.decode(self.limits.max_image_pixels)
            for m, x in out.items():
                x[i] = preprocess_pil(img, m)
            del img
        if self.allocator_limited:
            trim_allocator()
        return out

    # -------------------------------------------------------------------------------------------- HTTP
    def _authorised(self, headers: Mapping[str, str], path: str) -> bool:
        if self.token is None or (self.open_health and path.endswith("/health")):
            return True
        given = headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode())

    async def _parse(self, body: bytes, content_type: str) -> ScoreRequest:
        if len(body) > self.limits.max_request_bytes:
            raise BadRequest(
                f"request body of {len(body):,} bytes is over the limit of {self.limits.max_request_bytes:,}", 413
            )
        served, pm, lim, extra = self.metrics, self.prompt_metrics, self.limits, self.per_image_extra
        if not content_type.startswith("multipart/form-data"):
            return await asyncio.to_thread(parse_json, body, served, pm, lim, extra)
        form = await _multipart(body, content_type, lim.max_images)
        files = [(f.filename, await f.read()) for f in form.getlist("image") if hasattr(f, "read")]
        prompts = [p for p in form.getlist("prompt") if isinstance(p, str)]
        return await asyncio.to_thread(parse_multipart, files, prompts, form.get("metrics"), served, pm, lim, extra)

    async def _score(self, req: ScoreRequest) -> dict:
        """Wait for room in the in-flight pixel budget (503 after `queue_timeout_s`), then decode and score."""
        if not await self.budget.acquire(req.charge, self.limits.queue_timeout_s):
            self.counters["requests_busy"] += 1
            raise BadRequest(
                f"server busy: {self.budget.used:,} of {self.budget.limit:,} pixels in flight; retry later", 503
            )
        try:
            pixels = await asyncio.to_thread(self._pixels, req)
            return await self._score_many((pixels, req.prompts))
        finally:
            await self.budget.release(req.charge)

    async def http(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Reply:
        """One HTTP exchange, as the ingress forwards it through a deployment handle (`headers` lower-case, the
        body already read and bounded by the ingress)."""
        path = path.rstrip("/")
        if not self._authorised(headers, path):
            return _reply(401, {"error": "missing or wrong bearer token"})
        if path.endswith("/health"):
            return _reply(200, {"status": "ok", "metrics": self.metrics, "pid": os.getpid()})
        if path.endswith("/metrics"):
            return Reply(200, self._prometheus().encode(), "text/plain; version=0.0.4")
        if method != "POST" or not (path == "" or path.endswith("/score")):
            return _reply(404, {"error": "use POST /score, GET /health or GET /metrics"})
        t = time.perf_counter()
        try:
            req = await self._parse(body, headers.get("content-type", ""))
            scores = await self._score(req)
        except BadRequest as e:
            self.counters["requests_rejected"] += 1
            retry = {"retry-after": str(self.limits.retry_after_s)} if e.status == 503 else {}
            return _reply(e.status, {"error": str(e)}, retry)
        self.counters["requests"] += 1
        self.counters["images"] += len(req.items)
        self.counters["latency_seconds_sum"] += time.perf_counter() - t
        return _reply(
            200, {"scores": {m: scores[m] for m in req.metrics}, "metrics": req.metrics, "count": len(req.items)}
        )

    def _prometheus(self) -> str:
        c = self.counters
        lines = []
        for name, kind, value in (
            ("icthp_requests_total", "counter", c["requests"]),
            ("icthp_requests_rejected_total", "counter", c["requests_rejected"]),
            ("icthp_requests_busy_total", "counter", c["requests_busy"]),
            ("icthp_images_total", "counter", c["images"]),
            ("icthp_batches_total", "counter", c["batches"]),
            ("icthp_batch_images_total", "counter", c["batch_images"]),
            ("icthp_batch_size_max", "gauge", c["batch_size_max"]),
            ("icthp_inflight_pixels", "gauge", self.budget.used),
            ("icthp_request_latency_seconds_sum", "counter", round(c["latency_seconds_sum"], 6)),
            ("icthp_request_latency_seconds_count", "counter", c["requests"]),
        ):
            lines += [f"# TYPE {name} {kind}", f'{name}{{pid="{os.getpid()}"}} {value}']
        return "\n".join(lines) + "\n"


def build_app(
    metrics: Sequence[str],
    sources: dict[str, str],
    device: str | None = None,
    dtype: str = "fp32",
    replicas: int = 1,
    gpus_per_replica: float = 0.0,
    cpus_per_replica: float = 1.0,
    **server_kwargs,
):
    """The Serve application (pass to `serve.run`): `replicas` copies, each with `gpus_per_replica` GPUs
    (0.5 puts two replicas on one GPU). `server_kwargs` go to `RewardServer` (batching, token, limits)."""
    deployment = serve.deployment(
        RewardServer,
        name="icthp",
        num_replicas=replicas,
        ray_actor_options={"num_gpus": gpus_per_replica, "num_cpus": cpus_per_replica},
        max_ongoing_requests=256,
    )
    return deployment.bind(list(metrics), dict(sources), device, dtype, **server_kwargs)


def start_server(config: ServeConfig):
    """Start Ray (or join `config.address`), the replicas and the HTTP ingress on `config.host:config.port`.

    Ray Serve's own HTTP proxy is not started (`proxy_location="Disabled"`): the only HTTP port is the ingress
    (`IngressGuard` + a deployment handle, in this process), so every route needs the token and no body reaches
    Ray before it is counted. Returns the running `IngressServer` (`.url`, `.stop()`); Ray stays up in this process.
    """
    from icthp_core.scale.ingress import IngressServer
    from icthp_core.scale.pipeline import init_ray

    config.check()
    init_ray(config.address)
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    gpr = config.gpus_per_replica if config.gpus_per_replica is not None else (1.0 if gpus else 0.0)
    replicas = config.replicas or (max(int(gpus / gpr), 1) if gpr else 1)
    serve.start(proxy_location="Disabled")
    app = build_app(
        config.metrics,
        config.sources,
        device=config.device or ("cuda" if gpr else "cpu"),
        dtype=config.dtype,
        replicas=replicas,
        gpus_per_replica=gpr,
        cpus_per_replica=0.0 if gpr else 0.5,
        max_batch_size=config.max_batch_size,
        batch_wait_s=config.batch_wait_s,
        token=config.token,
        open_health=config.open_health,
        limits=config.limits,
    )
    handle = serve.run(app, name="icthp", route_prefix=None)
    return IngressServer(config, handle).start()


__all__ = ["InflightBudget", "RewardServer", "bind_internal_grpc", "build_app", "limit_allocator_slack", "start_server"]
