"""The reward server's typed configuration: budgets that bound its memory, the token, and the network options.

No Ray and no torch here: the `icthp serve` command builds a `ServeConfig` from its options and hands it to
`icthp_core.scale.server.start_server`. Memory arithmetic (docs/reliability.md, "Serve memory bound"):

* a request is admitted only if its body is at most `max_request_bytes` (counted while it streams, chunked or not)
  and the ingress holds at most `max_inflight_bytes` of bodies at once (else 503 with `Retry-After`);
* each image is charged `width x height` (read from its header, before decoding; x2 for alpha and 16-bit modes, x3
  for float images, which cost more to decode) plus one preprocessed copy per preprocessing mode (`224 x 224`
  each); a request over `max_images` or `max_request_pixels` is refused (413), and a replica admits requests only
  while the charges in flight stay under `max_inflight_pixels` (else the request waits up to `queue_timeout_s`,
  then 503 with `Retry-After`).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from icthp_core.errors import ConfigError

#: environment variable holding the server's bearer token (preferred to `--token`, which `ps` shows)
TOKEN_ENV = "ICTHP_SERVE_TOKEN"
MB = 1 << 20
#: replica bytes per charged pixel: an image's pixels are charged x1 (8-bit modes: decoding to RGB with EXIF rotation
#: peaks at ~12 B/px), x2 (alpha or 16/32-bit integers: ~24 B/px) or x3 (float: ~33 B/px); a preprocessed copy is
#: 12 B per pixel of its 224x224 charge (measured per mode, docs/reliability.md)
BYTES_PER_PIXEL = 14
#: replica bytes per request byte in flight: the body, its JSON strings and the decoded base64 (x0.75), rounded up
BYTES_PER_BODY_BYTE = 3
#: allocator arenas, thread stacks and Ray bookkeeping on top of the budgets
#: (measured: tests/core/scale/test_serve_hostile_ray)
OVERHEAD_BYTES = 64 * MB


@dataclass(frozen=True)
class ServeLimits:
    """Per-request and in-flight budgets (see the module docstring); checked before any image is decoded."""

    max_images: int = 256
    max_image_pixels: int = 40_000_000
    max_request_pixels: int = 64_000_000
    max_inflight_pixels: int = 64_000_000
    max_request_bytes: int = 64 * MB
    max_inflight_bytes: int = 128 * MB
    queue_timeout_s: float = 2.0
    retry_after_s: int = 1

    def check(self) -> ServeLimits:
        """Raise ConfigError naming the option that is out of range or inconsistent; returns self."""
        for name in ("max_images", "max_image_pixels", "max_request_pixels", "max_inflight_pixels"):
            _positive(name, getattr(self, name))
        _positive("max_request_bytes", self.max_request_bytes)
        _positive("max_inflight_bytes", self.max_inflight_bytes)
        if self.queue_timeout_s < 0 or self.retry_after_s < 0:
            raise ConfigError("--queue-timeout-s and retry_after_s must be >= 0")
        if self.max_request_pixels > self.max_inflight_pixels:
            raise ConfigError(
                f"--max-request-pixels {self.max_request_pixels:,} is over --max-inflight-pixels "
                f"{self.max_inflight_pixels:,}: such a request could never run"
            )
        if self.max_request_bytes > self.max_inflight_bytes:
            raise ConfigError(
                f"--max-request-mb ({self.max_request_bytes / MB:g}) is over --max-inflight-mb "
                f"({self.max_inflight_bytes / MB:g}): such a request could never be admitted"
            )
        return self


def memory_bound(limits: ServeLimits) -> int:
    """Bytes a replica may grow above its idle size (after a first full batch) under any traffic:
    `14 x max_inflight_pixels + 3 x max_inflight_bytes + 64 MB` (1.3 GiB at the defaults; docs/reliability.md)."""
    return (
        BYTES_PER_PIXEL * limits.max_inflight_pixels + BYTES_PER_BODY_BYTE * limits.max_inflight_bytes + OVERHEAD_BYTES
    )


def _positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"--{name.replace('_', '-')}: expected a whole number >= 1, got {value!r}")


@dataclass
class ServeConfig:
    """Everything `start_server` needs: models, placement, batching, network and limits."""

    metrics: list[str]
    sources: dict[str, str]
    device: str | None = None
    dtype: str = "fp32"
    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int | None = None
    gpus_per_replica: float | None = None
    max_batch_size: int = 32
    batch_wait_s: float = 0.01
    token: str | None = None
    open_health: bool = False
    address: str | None = None
    limits: ServeLimits = field(default_factory=ServeLimits)

    def check(self) -> ServeConfig:
        if self.max_batch_size < 1:
            raise ConfigError(f"--max-batch-size: expected >= 1, got {self.max_batch_size}")
        if not 0 < self.port < 65536:
            raise ConfigError(f"--port: expected 1..65535, got {self.port}")
        self.limits.check()
        return self


def read_token(token: str | None, token_file: str | os.PathLike | None) -> tuple[str | None, list[str]]:
    """The bearer token and warnings: `--token-file` (first line), else $ICTHP_SERVE_TOKEN, else `--token`
    (which any user on the machine sees in `ps`: warned)."""
    warnings: list[str] = []
    if token_file is not None:
        try:
            text = Path(token_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--token-file {token_file}: cannot read ({type(e).__name__}: {e})") from None
        lines = text.strip().splitlines()
        if not lines or not lines[0].strip():
            raise ConfigError(f"--token-file {token_file}: the file is empty")
        return lines[0].strip(), warnings
    env = os.environ.get(TOKEN_ENV, "").strip()
    if env:
        return env, warnings
    if token is not None:
        if not token.strip():
            raise ConfigError("--token: empty")
        warnings.append(f"--token is visible to every user of this machine in `ps`; use --token-file or ${TOKEN_ENV}")
        return token.strip(), warnings
    return None, warnings


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and `localhost`."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, token: str | None) -> str | None:
    """The loud warning for a server reachable from other machines without a token, else None."""
    if token or is_loopback(host):
        return None
    return (
        f"WARNING: icthp serve listens on {host} WITHOUT a token: anyone who can reach this machine can use its "
        f"GPUs. Set ${TOKEN_ENV} or --token-file, or bind --host 127.0.0.1."
    )


__all__ = [
    "ServeConfig",
    "ServeLimits",
    "TOKEN_ENV",
    "exposure_warning",
    "is_loopback",
    "memory_bound",
    "read_token",
]
