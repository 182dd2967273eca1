"""What the model options every job shares resolve to (`ModelOptions`: weight sources, device, dtype, batching,
output), with their defaults; the command-line options themselves are defined once in `icthp_cli/options.py`."""

from __future__ import annotations

from dataclasses import dataclass, field

from icthp_core.dtypes import DEFAULT_DTYPE, DTYPE_CHOICES
from icthp_core.errors import ConfigError

DTYPES = DTYPE_CHOICES
DEFAULT_BATCH_SIZE = 32
DEFAULT_WORKERS = None  # sized from the core count (icthp_core.scoring.gpu_preprocess.default_workers)


@dataclass
class ModelOptions:
    """What the shared options resolve to: weight sources per base metric, device, dtype and batching."""

    sources: dict[str, str] = field(default_factory=dict)
    device: str | None = None
    dtype: str = DEFAULT_DTYPE
    batch_size: int = DEFAULT_BATCH_SIZE
    workers: int | None = DEFAULT_WORKERS
    output: str | None = None

    @classmethod
    def create(
        cls,
        sources: dict[str, str],
        device: str | None = None,
        dtype: str = DEFAULT_DTYPE,
        batch_size: int = DEFAULT_BATCH_SIZE,
        workers: int | None = DEFAULT_WORKERS,
        output: str | None = None,
    ) -> ModelOptions:
        """Checked options (one-line `ConfigError` naming the option for a bad value)."""
        if batch_size < 1:
            raise ConfigError(f"--batch-size {batch_size}: must be >= 1")
        if workers is not None and workers < 0:
            raise ConfigError(f"--workers {workers}: must be >= 0")
        return cls(sources=sources, device=device, dtype=dtype, batch_size=batch_size, workers=workers, output=output)

    def decode_workers(self, device: str | None = None, decode: str = "cpu") -> int:
        """`workers`, or (when not given) a count sized from the cores for `device` and the decode path."""
        if self.workers is not None:
            return self.workers
        from icthp_core.checkpoints.loading import parse_device
        from icthp_core.scoring.gpu_preprocess import default_workers

        return default_workers(parse_device(device if device is not None else self.device), decode)


def default_weights(value: str | None, metric: str) -> str:
    """`value`, or (None: the option was not given) the registry's published weights of `metric`."""
    from icthp_core.scoring.registry import get_metric

    return value if value is not None else get_metric(metric).default_source


def parse_sources(ict: str | None, hp: str | None, items: list[str]) -> dict[str, str]:
    """Sources by base metric from `--ict`, `--hp` and repeated `--source METRIC=SRC` (checked against the registry)."""
    from icthp_core.scoring.registry import METRICS

    sources: dict[str, str] = {}
    for name, value in (("ict", ict), ("hp", hp)):
        if value is not None and value.strip().lower() != "none":
            sources[name] = value.strip()
    for item in items:
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not value:
            raise ConfigError(f"--source {item!r}: expected METRIC=SRC")
        spec = METRICS.get(name)
        if spec is None or spec.derived:
            bases = [n for n, s in METRICS.items() if not s.derived]
            raise ConfigError(
                f"--source {item!r}: {name!r} is not a metric with weights; choose from {', '.join(bases)}"
            )
        sources[name] = value
    return sources
