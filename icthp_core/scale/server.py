"""The reward server: a Ray Serve deployment scoring images with dynamic batching across concurrent requests.

Imports Ray at module level: import it only through `icthp serve` / `build_app` (see `serve_cmd.py`).
Routes: `POST /score` (see `protocol.py`), `GET /health`, `GET /metrics` (Prometheus text, this replica's counters).
"""

from __future__ import annotations

import asyncio
import hmac
import os
import time
from collections.abc import Sequence

import torch
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse

from icthp_core.data.preprocess import preprocess_pil
from icthp_core.scale.protocol import BadRequest, ScoreRequest, parse_json, parse_multipart

DEFAULT_MAX_BATCH = 32
DEFAULT_WAIT_S = 0.01


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
        max_images: int = 256,
        max_request_bytes: int = 64 << 20,
    ):
        from icthp_core.scoring.registry import METRICS
        from icthp_core.scoring.scorer import MultiScorer

        self.scorer = MultiScorer(list(metrics), sources, device=device, dtype=dtype)
        self.metrics = list(metrics)
        self.prompt_metrics = {m for m in self.metrics if METRICS[m].needs_prompt}
        self.token, self.max_images, self.max_bytes = token, max_images, max_request_bytes
        self._score_many.set_max_batch_size(max_batch_size)
        self._score_many.set_batch_wait_timeout_s(batch_wait_s)
        self.counters = {
            "requests": 0,
            "requests_rejected": 0,
            "images": 0,
            "batches": 0,
            "batch_images": 0,
            "batch_size_max": 0,
            "latency_seconds_sum": 0.0,
        }

    # -------------------------------------------------------------------------------------------- batching
    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH, batch_wait_timeout_s=DEFAULT_WAIT_S)
    async def _score_many(self, items: list[tuple[dict[str, torch.Tensor], list[str] | None]]) -> list[dict]:
        """Score several requests' pixels in one model call; returns each request's scores."""
        sizes = [next(iter(p.values())).shape[0] for p, _ in items]
        pixels = {m: torch.cat([p[m] for p, _ in items]) for m in items[0][0]}
        prompts = None
        if self.scorer.needs_prompt:  # prompt-free requests (asking prompt-free metrics) get a placeholder prompt
            prompts = [q for (_, ps), n in zip(items, sizes, strict=True) for q in (ps or ["an image"] * n)]
        scores = await asyncio.to_thread(self.scorer.score_pixels, pixels, prompts)
        self.counters["batches"] += 1
        self.counters["batch_images"] += sum(sizes)
        self.counters["batch_size_max"] = max(self.counters["batch_size_max"], sum(sizes))
        out, s = [], 0
        for n in sizes:
            out.append({m: v[s : s + n].tolist() for m, v in scores.items()})
            s += n
        return out

    def _pixels(self, req: ScoreRequest) -> dict[str, torch.Tensor]:
        modes = self.scorer.preprocess_modes
        return {m: torch.stack([preprocess_pil(img, m) for img in req.images]) for m in modes}

    # -------------------------------------------------------------------------------------------- HTTP
    async def _parse(self, request: Request) -> ScoreRequest:
        if self.token is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
                raise BadRequest("missing or wrong bearer token", 401)
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > self.max_bytes:
            raise BadRequest(f"request of {size} bytes exceeds the limit of {self.max_bytes}", 413)
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            form = await request.form()
            files = [(f.filename, await f.read()) for f in form.getlist("image") if hasattr(f, "read")]
            prompts = [p for p in form.getlist("prompt") if isinstance(p, str)]
            data = {"files": files, "prompts": prompts, "metrics": form.get("metrics")}
            return await asyncio.to_thread(parse_multipart, data, self.metrics, self.prompt_metrics, self.max_images)
        body = await request.body()
        if len(body) > self.max_bytes:
            raise BadRequest(f"request of {len(body)} bytes exceeds the limit of {self.max_bytes}", 413)
        return await asyncio.to_thread(parse_json, body, self.metrics, self.prompt_metrics, self.max_images)

    async def __call__(self, request: Request):
        path = request.url.path.rstrip("/")
        if path.endswith("/health"):
            return JSONResponse({"status": "ok", "metrics": self.metrics, "pid": os.getpid()})
        if path.endswith("/metrics"):
            return PlainTextResponse(self._prometheus())
        if request.method != "POST" or not (path == "" or path.endswith("/score")):
            return JSONResponse({"error": "use POST /score, GET /health or GET /metrics"}, status_code=404)
        t = time.perf_counter()
        try:
            req = await self._parse(request)
            pixels = await asyncio.to_thread(self._pixels, req)
        except BadRequest as e:
            self.counters["requests_rejected"] += 1
            return JSONResponse({"error": str(e)}, status_code=e.status)
        scores = await self._score_many((pixels, req.prompts))
        self.counters["requests"] += 1
        self.counters["images"] += len(req.images)
        self.counters["latency_seconds_sum"] += time.perf_counter() - t
        body = {"scores": {m: scores[m] for m in req.metrics}, "metrics": req.metrics, "count": len(req.images)}
        return JSONResponse(body)

    def _prometheus(self) -> str:
        c = self.counters
        lines = []
        for name, kind, value in (
            ("icthp_requests_total", "counter", c["requests"]),
            ("icthp_requests_rejected_total", "counter", c["requests_rejected"]),
            ("icthp_images_total", "counter", c["images"]),
            ("icthp_batches_total", "counter", c["batches"]),
            ("icthp_batch_images_total", "counter", c["batch_images"]),
            ("icthp_batch_size_max", "gauge", c["batch_size_max"]),
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
    (0.5 puts two replicas on one GPU)."""
    deployment = serve.deployment(
        RewardServer,
        name="icthp",
        num_replicas=replicas,
        ray_actor_options={"num_gpus": gpus_per_replica, "num_cpus": cpus_per_replica},
        max_ongoing_requests=256,
    )
    return deployment.bind(list(metrics), dict(sources), device, dtype, **server_kwargs)


__all__ = ["RewardServer", "build_app"]
