"""Build the app from a typed `AppConfig` (the command line is `icthp app`, in icthp_cli). No Gradio import at module
level."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from icthp_core.errors import ConfigError
from icthp_core.scoring.registry import list_metrics


@dataclass
class AppConfig:
    """What `icthp app` serves.

    Args:
        metrics: metrics offered in the UI.
        sources: weight sources by base metric; without `ict`/`hp` the metrics built on them are not offered.
        default_metrics: metrics ticked at start (None: ICT, HP, ICT-HP and the baselines given a source).
        preload: load the default metrics' models before serving.
        warm: otherwise load them in the background while the server starts, so the first comparison does not wait
            for them (False: each group of models loads when a comparison first needs it).
        device, dtype, batch_size: where and how the models run (batch_size >= 1).
        host, port: bind address (loopback by default).
        ab_roots: folders under which A/B folders may be read (none: uploads only).
        max_images, max_upload_mb, max_pairs: upload and comparison limits.
        ci: default confidence interval of win rates (wilson or bootstrap).
        base_model, lora, gen_dtype: the generation tab (diffusers pipeline, LoRA file; needs a GPU).
    """

    metrics: list[str]
    sources: dict[str, str] = field(default_factory=dict)
    default_metrics: list[str] | None = None
    preload: bool = False
    warm: bool = True
    device: str | None = None
    dtype: str = "fp32"
    batch_size: int = 32
    host: str = "127.0.0.1"
    port: int = 7860
    ab_roots: list[str] = field(default_factory=list)
    max_images: int = 16
    max_upload_mb: int = 20
    max_pairs: int = 500
    ci: str = "wilson"
    base_model: str | None = None
    lora: str | None = None
    gen_dtype: str = "bf16"

    def check(self) -> None:
        """One-line `ConfigError` naming the option for a value that cannot work."""
        for name, low in (("batch_size", 1), ("max_images", 2), ("max_upload_mb", 1), ("max_pairs", 1)):
            if getattr(self, name) < low:
                raise ConfigError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be >= {low}")
        for r in self.ab_roots:
            if not os.path.isdir(r):
                raise ConfigError(f"--ab-root {r}: not a directory")


def offered_metrics(metrics: Sequence[str], sources: dict[str, str]) -> list[str]:
    """`metrics` less those whose ICT/HP weights were switched off ('none': not in `sources`)."""
    drop = set()
    if "ict" not in sources:
        drop |= {"ict", "ict_hp"}
    if "hp" not in sources:
        drop |= {"hp", "ict_hp"}
    ms = [m for m in metrics if m not in drop]
    if not ms:
        raise ConfigError(
            f"no metric left to offer (check --metrics, --ict and --hp); known: {', '.join(list_metrics())}"
        )
    return ms


def default_ticked(given: str | Sequence[str] | None, offered: Sequence[str], sources: dict[str, str]) -> list[str]:
    """Metrics ticked at start: `given`, else ICT, HP, ICT-HP and the baselines given a source (a baseline without
    one would need a download on first use: off by default, so a first click works offline)."""
    if isinstance(given, str):
        given = [m.strip() for m in given.split(",") if m.strip()]
    if given:
        return list(given)
    wanted = ["ict", "hp", "ict_hp"] + [m for m in sources if m not in ("ict", "hp")]
    return [m for m in wanted if m in offered] or list(offered[:1])


def make_app(cfg: AppConfig, factory: Any = None) -> tuple[Any, dict[str, Any]]:
    """(demo, launch kwargs) of `cfg`; `factory` overrides the scorer factory (tests)."""
    cfg.check()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from . import generate
    from .app import LAUNCH_CSS, build_app
    from .controller import Controller
    from .pool import ScorerPool
    from .uploads import UploadLimits

    metrics = offered_metrics(cfg.metrics, cfg.sources)
    defaults = default_ticked(cfg.default_metrics, metrics, cfg.sources)
    pool = ScorerPool(metrics, cfg.sources, cfg.device, cfg.dtype, cfg.batch_size, factory=factory)
    first = [m for m in defaults if m in metrics] or metrics
    if cfg.preload:
        pool.preload(first)
    elif cfg.warm:
        pool.preload_in_background(first)
    missing = generate.requirements_missing(cfg.base_model, cfg.lora)
    generator = None
    if not missing:
        generator = generate.Generator(cfg.base_model, cfg.lora, cfg.device or "cuda", cfg.gen_dtype)
    limits = UploadLimits(max_count=cfg.max_images, max_bytes=cfg.max_upload_mb * 2**20)
    controller = Controller(
        pool, ab_roots=cfg.ab_roots, limits=limits, max_pairs=cfg.max_pairs, ci_method=cfg.ci, generator=generator
    )
    demo = build_app(
        controller,
        default_metrics=defaults,
        generation_note=generate.explanation(missing) if missing else None,
    )
    demo.queue(default_concurrency_limit=1, max_size=64)
    launch = {
        "server_name": cfg.host,
        "server_port": cfg.port,
        "max_file_size": f"{cfg.max_upload_mb}mb",
        "css": LAUNCH_CSS,
        "show_error": True,
    }
    return demo, launch


def launch_app(cfg: AppConfig) -> None:
    """Build the app of `cfg` and serve it until interrupted."""
    demo, launch = make_app(cfg)
    demo.launch(**launch)
