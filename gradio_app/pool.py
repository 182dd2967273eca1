"""Reward models loaded once per process and shared by all sessions of the app."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .logic import CORE_METRICS, InputError, label

ProgressFn = Callable[[float, str], None]


def _default_factory(metrics: list[str], sources: dict[str, str] | None, device: str | None, dtype: str) -> Any:
    from icthp_core import MultiScorer

    return MultiScorer(metrics, sources=sources, device=device, dtype=dtype)


class ScorerPool:
    """Lazily builds one `MultiScorer` per group of metrics and keeps it for the process lifetime.

    ICT, HP and ICT-HP form one group (they share the two models); each baseline is its own group, so
    a baseline nobody asks for is never loaded. `factory(metrics, sources, device, dtype)` makes a
    scorer; it defaults to `icthp_core.MultiScorer`.
    """

    def __init__(
        self,
        metrics: Sequence[str],
        sources: Mapping[str, str] | None = None,
        device: str | None = None,
        dtype: str = "fp32",
        batch_size: int = 16,
        factory: Callable[..., Any] | None = None,
    ) -> None:
        if not metrics:
            raise ValueError("ScorerPool needs at least one metric")
        self.metrics = list(dict.fromkeys(metrics))
        self.sources = dict(sources or {})
        self.device = device
        self.dtype = dtype
        if int(batch_size) < 1:
            raise ValueError(f"ScorerPool: batch_size {batch_size} must be >= 1")
        self.batch_size = int(batch_size)
        self._factory = factory or _default_factory
        self._scorers: dict[tuple[str, ...], Any] = {}
        self._locks: dict[tuple[str, ...], threading.Lock] = {}
        self._guard = threading.Lock()

    def groups(self, metrics: Sequence[str]) -> list[tuple[str, ...]]:
        unknown = [m for m in metrics if m not in self.metrics]
        if unknown:
            raise InputError(f"Metric(s) not enabled in this app: {', '.join(unknown)} (see --metrics).")
        out: list[tuple[str, ...]] = []
        if any(m in CORE_METRICS for m in metrics):
            out.append(tuple(m for m in self.metrics if m in CORE_METRICS))
        out += [(m,) for m in metrics if m not in CORE_METRICS]
        return out

    def _group_sources(self, group: tuple[str, ...]) -> dict[str, str] | None:
        keys = {"ict", "hp"} if group[0] in CORE_METRICS else set(group)
        src = {k: v for k, v in self.sources.items() if k in keys}
        return src or None

    def _lock_for(self, group: tuple[str, ...]) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(group, threading.Lock())

    def scorer(self, group: tuple[str, ...]) -> Any:
        """The scorer for a group, loading it on first use (one load even with concurrent sessions)."""
        with self._lock_for(group):
            if group not in self._scorers:
                self._scorers[group] = self._factory(list(group), self._group_sources(group), self.device, self.dtype)
            return self._scorers[group]

    def loaded(self) -> list[tuple[str, ...]]:
        return list(self._scorers)

    def preload(self, metrics: Sequence[str] | None = None) -> None:
        for g in self.groups(list(metrics or self.metrics)):
            self.scorer(g)

    def preload_in_background(self, metrics: Sequence[str] | None = None) -> threading.Thread:
        """Start loading `metrics`' models in a daemon thread and return it. A request that needs a group meanwhile
        waits for that load (one load per group); a load that fails is logged and retried by the first request,
        which then shows the error as it would have without the warm-up."""

        def warm() -> None:
            try:
                self.preload(metrics)
            except Exception as e:  # noqa: BLE001  (the first request that needs the group loads it again)
                logging.getLogger(__name__).warning("loading models in the background failed: %s", e)

        thread = threading.Thread(target=warm, name="icthp-app-warm", daemon=True)
        thread.start()
        return thread

    def score(
        self,
        images: Sequence[Any],
        prompts: str | Sequence[str],
        metrics: Sequence[str],
        progress: ProgressFn | None = None,
    ) -> dict[str, np.ndarray]:
        """Score `images` (paths or PIL) for `metrics` in batches; float64 arrays in input order."""
        if not metrics:
            raise InputError("Select at least one metric.")
        n = len(images)
        plist = [prompts] * n if isinstance(prompts, str) else list(prompts)
        if len(plist) != n:
            raise ValueError(f"{n} images but {len(plist)} prompts")
        groups = self.groups(metrics)
        steps = len(groups) * max(1, -(-n // self.batch_size))
        done = 0
        out: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
        for g in groups:
            if progress:
                progress(done / steps, f"Loading {', '.join(label(m) for m in g)} …")
            scorer = self.scorer(g)
            wanted = [m for m in g if m in metrics]
            for i in range(0, n, self.batch_size):
                with self._lock_for(g):
                    res = scorer.score(list(images[i : i + self.batch_size]), plist[i : i + self.batch_size])
                for m in wanted:
                    if m not in res:
                        raise KeyError(f"scorer for {g} returned no {m!r} scores (got {sorted(res)})")
                    out[m].append(np.asarray(res[m].detach().float().cpu().numpy(), dtype=np.float64))
                done += 1
                if progress:
                    progress(done / steps, f"Scoring {', '.join(label(m) for m in wanted)}")
        return {m: np.concatenate(v) if v else np.zeros(0) for m, v in out.items()}
