"""The user's path with no network: a closed endpoint and a fake hub answering 401/403/404 end in one line, fast."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jobproc
import pytest
from live import free_port
from PIL import Image

from icthp_core.errors import WeightsNotFoundError


def _point_hub(monkeypatch, tmp_path: Path, endpoint: str) -> None:
    """In-process: huggingface_hub reads its endpoint at import, so patch its constants."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def _env(tmp_path: Path, endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=endpoint, HF_HUB_DISABLE_TELEMETRY="1")
    return env


def _icthp(args: list[str], env: dict[str, str], cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    proc = jobproc.run(args, env=env, cwd=cwd, timeout=120)
    return proc, time.monotonic() - t0


@pytest.fixture()
def one_image(tmp_path: Path) -> Path:
    Image.new("RGB", (32, 32), "red").save(tmp_path / "img.png")
    return tmp_path / "img.png"


@pytest.mark.slow  # a subprocess: ~7 s on a busy 2-core machine
def test_score_unreachable_hub_is_one_fast_line(tmp_path, one_image):
    proc, wall = _icthp(
        ["score", "--prompt", "x", str(one_image)], _env(tmp_path, f"http://127.0.0.1:{free_port()}"), tmp_path
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert "8y/ICT" in line and "could not be reached" in line
    assert "icthp download ict" in line and "hf download 8y/ICT" in line and "local folder" in line
    assert "has none of" not in line  # the old, wrong diagnosis
    assert wall < 20, f"{wall:.1f} s: the library's retries are back"


class _StatusHub:
    """A fake hub on 127.0.0.1: every request for repo R is answered with status[R] (and the hub's error header)."""

    CODES = {401: "RepoNotFound", 403: "GatedRepo", 404: "RepoNotFound"}

    def __init__(self, status: dict[str, int]):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                repo = "/".join(self.path.lstrip("/").split("/")[:2])
                code = hub.status.get(repo, 404)
                self.send_response(code)
                self.send_header("X-Error-Code", hub.CODES.get(code, "RepoNotFound"))
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_HEAD

        self.status = status
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def status_hub():
    hub = _StatusHub({"acme/private": 401, "acme/gated": 403, "acme/gone": 404})
    yield hub
    hub.close()


@pytest.mark.slow
def test_score_refused_repo_is_named(tmp_path, one_image, status_hub):
    """401 through the user's command: one line naming the repo and the login."""
    args = ["score", "--metrics", "ict", "--ict", "acme/private", "--prompt", "x", str(one_image)]
    proc, wall = _icthp(args, _env(tmp_path, status_hub.url), tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("icthp score: acme/private: ") and "401" in lines[0] and "hf auth login" in lines[0]
    assert wall < 20


@pytest.mark.parametrize(
    ("repo", "words"),
    [
        ("acme/private", ["401", "hf auth login"]),
        ("acme/gated", ["gated", "hf auth login"]),
        ("acme/gone", ["no such repo"]),
    ],
)
def test_refused_gated_missing_repos(tmp_path, monkeypatch, status_hub, repo, words):
    from icthp_core.checkpoints.hub import ensure_available, resolve_file

    _point_hub(monkeypatch, tmp_path, status_hub.url)
    for call in (lambda: resolve_file(repo, ["model.safetensors"]), lambda: ensure_available(repo, "config.json")):
        with pytest.raises(WeightsNotFoundError) as e:
            call()
        msg = str(e.value)
        assert msg.startswith(f"{repo}: ") and "\n" not in msg
        assert all(w in msg for w in words), msg


def test_base_pipeline_unreachable_is_one_line(tmp_path, monkeypatch):
    """`draft`/`evalgen` read the base pipeline's configs first: no network -> WeightsNotFoundError in seconds."""
    from icthp_core.diffusion.pipelines import pipeline_info

    _point_hub(monkeypatch, tmp_path, f"http://127.0.0.1:{free_port()}")
    t0 = time.monotonic()
    with pytest.raises(
        WeightsNotFoundError, match=r"acme/sd3: the Hugging Face Hub .* could not be reached \(.*[Cc]onnection refused"
    ) as e:
        pipeline_info("acme/sd3")
    assert "\n" not in str(e.value) and "hf download acme/sd3" in str(e.value)
    assert time.monotonic() - t0 < 15


def test_offline_mode_names_the_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from icthp_core.checkpoints.hub import ensure_available, resolve_file

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match="HF_HUB_OFFLINE=1"):
        resolve_file("8y/HP", ["hp_backbone/pytorch_model.bin"])
    with pytest.raises(WeightsNotFoundError, match="model_index.json not in the Hugging Face cache"):
        ensure_available("acme/sd3", "model_index.json")
    assert resolve_file("8y/HP", ["config.json"], required=False) is None
