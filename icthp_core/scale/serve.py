"""Start the reward server (Ray Serve) from a typed `ServeConfig`; the command line is `icthp serve` (icthp_cli)."""

from __future__ import annotations

from dataclasses import dataclass, field

from icthp_core.errors import ConfigError


@dataclass
class ServeConfig:
    """What `icthp serve` starts.

    Args:
        metrics: metrics served (registry names).
        sources: weight sources by base metric (`icthp_core.options.parse_sources`).
        device: model device (default: cuda when GPUs are given to replicas, else cpu).
        dtype: fp32, fp16 or bf16.
        host, port: bind address (127.0.0.1 by default; 0.0.0.0 exposes it).
        replicas: model replicas (default: one per GPU, else 1).
        gpus_per_replica: GPUs per replica (default 1 with GPUs; 0.5 = two per GPU).
        max_batch_size: images + requests batched per model call.
        batch_wait_ms: how long to wait for more requests to batch.
        max_images: images per request.
        max_request_mb: request body limit in MB.
        token: require `Authorization: Bearer TOKEN` when set.
        address: Ray cluster to join (default: start a local Ray).
    """

    metrics: list[str]
    sources: dict[str, str] = field(default_factory=dict)
    device: str | None = None
    dtype: str = "fp32"
    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int | None = None
    gpus_per_replica: float | None = None
    max_batch_size: int = 32
    batch_wait_ms: float = 10.0
    max_images: int = 256
    max_request_mb: float = 64.0
    token: str | None = None
    address: str | None = None

    def check(self) -> None:
        """One-line `ConfigError` naming the option for a value that cannot work."""
        for name in ("max_batch_size", "max_images"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be >= 1")
        if self.replicas is not None and self.replicas < 1:
            raise ConfigError(f"--replicas {self.replicas}: must be >= 1")
        if self.gpus_per_replica is not None and self.gpus_per_replica < 0:
            raise ConfigError(f"--gpus-per-replica {self.gpus_per_replica}: must be >= 0")
        if self.batch_wait_ms < 0 or self.max_request_mb <= 0:
            raise ConfigError("--batch-wait-ms must be >= 0 and --max-request-mb > 0")
        if not 0 <= self.port < 65536:
            raise ConfigError(f"--port {self.port}: must be in 0..65535")


def start_server(cfg: ServeConfig) -> str:
    """Start the server of `cfg`; returns its base URL (Ray stays up in this process: `stop_server()` ends it)."""
    cfg.check()
    from icthp_core.scale.pipeline import init_ray

    init_ray(cfg.address)
    import ray
    from ray import serve

    from icthp_core.scale.server import build_app

    gpus = int(ray.cluster_resources().get("GPU", 0))
    gpr = cfg.gpus_per_replica if cfg.gpus_per_replica is not None else (1.0 if gpus else 0.0)
    replicas = cfg.replicas or (max(int(gpus / gpr), 1) if gpr else 1)
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    app = build_app(
        cfg.metrics,
        cfg.sources,
        device=cfg.device or ("cuda" if gpr else "cpu"),
        dtype=cfg.dtype,
        replicas=replicas,
        gpus_per_replica=gpr,
        cpus_per_replica=0.0 if gpr else 0.5,
        max_batch_size=cfg.max_batch_size,
        batch_wait_s=cfg.batch_wait_ms / 1000.0,
        token=cfg.token,
        max_images=cfg.max_images,
        max_request_bytes=int(cfg.max_request_mb * (1 << 20)),
    )
    serve.run(app, name="icthp", route_prefix="/")
    return f"http://{cfg.host}:{cfg.port}"


def stop_server() -> None:
    """Shut down what `start_server` started."""
    from ray import serve

    serve.shutdown()
