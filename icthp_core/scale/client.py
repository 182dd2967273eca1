"""Reward functions for RL loops: `RewardClient(url)` calls `icthp serve`; `LocalReward(...)` is the same call in
this process (one GPU, no server). Both take PIL images, uint8 arrays or float tensors in 0..1 and give the scores
of the server's pixel path (images quantised to uint8, then CLIP preprocessing); use `MultiScorer.reward` when
gradients must flow into the images."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from icthp_core.scale.protocol import encode_request, to_uint8_batch


def _retry_after(value: str | None, cap: float = 60.0) -> float:
    """Seconds from a `Retry-After` header (a number; dates and junk count as 0), at most `cap`."""
    try:
        return min(max(float(value or 0), 0.0), cap)
    except ValueError:
        return 0.0


def _result(scores: dict[str, list[float]], metric, as_tensor: bool):
    if as_tensor:
        import torch

        scores = {m: torch.tensor(v, dtype=torch.float32) for m, v in scores.items()}
    if isinstance(metric, str):
        return scores[metric]
    return scores


class RewardClient:
    """`client(images, prompts, metric="ict_hp")` -> scores from a running `icthp serve`.

    Returns a float32 tensor [B] when `images` is a tensor, else a list of floats; `metric=None` (with no default)
    or a list of metrics returns a dict. `token` defaults to $ICTHP_SERVE_TOKEN. Connection errors and 5xx answers
    are retried `retries` times with exponential backoff (at least the `Retry-After` a busy server sends with 503);
    4xx answers raise ValueError with the server's message.
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        metric: str | None = "ict_hp",
        token: str | None = None,
        timeout: float = 60.0,
        retries: int = 5,
        backoff: float = 0.5,
    ):
        import requests

        self.url = url.rstrip("/")
        self.metric, self.timeout, self.retries, self.backoff = metric, timeout, retries, backoff
        self.session = requests.Session()
        token = token or os.environ.get("ICTHP_SERVE_TOKEN") or None
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def score(self, images, prompts: str | Sequence[str] | None = None, metrics: Sequence[str] | None = None):
        """{metric: [float, ...]} for the images (one request)."""
        import requests

        payload = encode_request(to_uint8_batch(images), prompts, metrics)
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            wait = self.backoff * 2**attempt
            try:
                r = self.session.post(f"{self.url}/score", json=payload, timeout=self.timeout)
            except (requests.ConnectionError, requests.Timeout) as e:
                last = e
            else:
                if r.status_code < 400:
                    return r.json()["scores"]
                if r.status_code < 500:
                    try:
                        msg = r.json().get("error", r.text)
                    except ValueError:
                        msg = r.text
                    raise ValueError(f"reward server {self.url}: {r.status_code} {msg}")
                last = RuntimeError(f"reward server {self.url}: {r.status_code} {r.text[:200]}")
                wait = max(wait, _retry_after(r.headers.get("retry-after")))
            if attempt < self.retries:
                time.sleep(wait)
        raise ConnectionError(f"reward server {self.url}: no answer after {self.retries + 1} tries ({last})")

    def __call__(self, images, prompts: str | Sequence[str] | None = None, metric: str | Sequence[str] | None = None):
        metric = metric or self.metric
        metrics = [metric] if isinstance(metric, str) else (list(metric) if metric else None)
        return _result(self.score(images, prompts, metrics), metric, hasattr(images, "detach"))

    def health(self) -> dict:
        return self.session.get(f"{self.url}/health", timeout=self.timeout).json()


class LocalReward:
    """The `RewardClient` call served in this process: `LocalReward(scorer)(images, prompts, metric="ict_hp")`.

    `scorer` is a MultiScorer (e.g. `load_scorer(device="cuda")`); scores equal the server's for the same inputs.
    """

    def __init__(self, scorer, metric: str | None = "ict_hp", batch_size: int = 32):
        self.scorer, self.metric, self.batch_size = scorer, metric, batch_size

    def score(self, images, prompts=None, metrics: Sequence[str] | None = None) -> dict[str, list[float]]:
        from PIL import Image

        pils = [Image.fromarray(a) for a in to_uint8_batch(images)]
        out = self.scorer.score(pils, prompts, batch_size=self.batch_size)
        return {m: out[m].tolist() for m in (metrics or self.scorer.metrics)}

    def __call__(self, images, prompts=None, metric: str | Sequence[str] | None = None):
        metric = metric or self.metric
        metrics = [metric] if isinstance(metric, str) else (list(metric) if metric else None)
        return _result(self.score(images, prompts, metrics), metric, hasattr(images, "detach"))
