"""`icthp serve` (a subprocess on 127.0.0.1, tiny models, small budgets) under hostile traffic: every route needs the
token, bad payloads are 4xx naming the field, and a bounded, self-stopping flood (huge-pixel headers, 100+ MB chunked
bodies, many 1x1 images, worst-case decodes, nested JSON) leaves the replica's memory within `memory_bound`.

Marked multiprocess + slow (below); one server for the module."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests
from live import free_port, sigint_as_in_a_terminal
from PIL import Image, ImageDraw

from icthp_core.scale.serve_config import ServeLimits, memory_bound
from icthp_core.testing.fuzz import _png_with_size

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

TOKEN = "hostile-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMITS = ServeLimits(
    max_images=64,
    max_image_pixels=4_000_000,
    max_request_pixels=8_000_000,
    max_inflight_pixels=12_000_000,
    max_request_bytes=4 << 20,
    max_inflight_bytes=12 << 20,
    queue_timeout_s=3.0,
)
LIMIT_ARGS = [
    *("--max-images", "64", "--max-image-pixels", "4000000", "--max-request-pixels", "8000000"),
    *("--max-inflight-pixels", "12000000", "--max-request-mb", "4", "--max-inflight-mb", "12"),
    *("--queue-timeout-s", "3", "--max-batch-size", "8", "--batch-wait-ms", "20"),
]


@pytest.fixture(scope="module")
def served(tiny_ict, tiny_hp, tmp_path_factory):
    """(url, serve process, log path): `icthp serve` started as a user would, the token from the environment."""
    port, log = free_port(), tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "ICTHP_SERVE_TOKEN": TOKEN, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "icthp_cli", "serve", "--ict", str(tiny_ict), "--hp", str(tiny_hp)]
    argv += ["--device", "cpu", "--port", str(port), *LIMIT_ARGS]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            preexec_fn=sigint_as_in_a_terminal,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while f"icthp serve: {url}/score" not in log.read_text(errors="replace"):
            assert proc.poll() is None and time.time() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.2)
        yield url, proc, log
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        try:  # whatever of this server's session is left (its Ray processes)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _png(size, mode="RGB", **save) -> bytes:
    img = Image.new(mode, size, (20, 120, 200, 255)[: len(mode)])
    ImageDraw.Draw(img).ellipse(
        (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2), fill=(250, 10, 10, 128)[: len(mode)]
    )
    buf = io.BytesIO()
    img.save(buf, "PNG", **save)
    return buf.getvalue()


def _json(images: list[bytes], **extra) -> dict:
    return {"images": [base64.b64encode(b).decode() for b in images], "prompt": "a red circle", **extra}


def _rotated_rgba(size) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate on decode: one more full-size copy
    return _png(size, "RGBA", exif=exif)


HUGE = _png_with_size(_png((16, 16)), 13_000, 13_000)  # ~100 bytes declaring 169 Mpx


def _chunked(url: str, total: int = 120 << 20) -> tuple[object, int]:
    """POST a chunked body of `total` bytes; returns (status or the error that ended it, bytes sent)."""
    port = int(url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    conn.putrequest("POST", "/score")
    for k, v in {**AUTH, "Transfer-Encoding": "chunked", "Content-Type": "application/json"}.items():
        conn.putheader(k, v)
    conn.endheaders()
    chunk, sent = b"[" * (1 << 20), 0
    try:
        while sent < total:
            conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
    except OSError:
        pass  # the server closed the connection after its 413
    try:
        return conn.getresponse().status, sent
    except (OSError, http.client.HTTPException) as e:
        return type(e).__name__, sent
    finally:
        conn.close()


def test_every_route_needs_the_token(served):
    url, _, log = served
    for path in ("/health", "/metrics", "/-/routes", "/-/healthz", "/score", "/anything"):
        assert requests.get(url + path, timeout=30).status_code == 401, path
    assert requests.post(url + "/score", json=_json([_png((32, 32))]), timeout=30).status_code == 401
    bad = {"Authorization": "Bearer nope"}
    assert requests.post(url + "/score", json=_json([_png((32, 32))]), headers=bad, timeout=30).status_code == 401
    assert requests.get(url + "/health", headers=AUTH, timeout=30).json()["status"] == "ok"
    assert requests.get(url + "/-/routes", headers=AUTH, timeout=30).status_code == 404  # no Ray HTTP proxy
    text = log.read_text(errors="replace")
    assert "WITHOUT a token" not in text and "visible" not in text  # the token came from the environment


def _post(url, body: bytes | dict, **kw):
    if isinstance(body, dict):
        return requests.post(url + "/score", json=body, headers=AUTH, timeout=60, **kw)
    return requests.post(url + "/score", data=body, headers=AUTH, timeout=60, **kw)


BAD = [
    (b"[" * 200_000, 400, "nested too deeply"),
    (b'{"array": {"shape": [' + b"9" * 4300 + b', 2, 2, 3], "data": ""}}', 400, "array.shape"),
    (json.dumps({"array": {"shape": [1, "2", 2, 3], "data": ""}}).encode(), 400, "array.shape"),
    (json.dumps({"array": {"shape": [1, 4000, 4000, 3], "data": ""}}).encode(), 413, "array.shape"),
    (json.dumps({"images": [base64.b64encode(_png((8, 8))).decode()], "prompts": 3}).encode(), 400, "prompts"),
    (json.dumps(_json([_png((64, 64))[:-30]])).encode(), 400, "images[0]: cannot decode"),
    (json.dumps(_json([HUGE])).encode(), 413, "images[0]: 13000x13000"),
    (json.dumps(_json([_png((1, 1))] * 65)).encode(), 413, "limit is 64"),
    (json.dumps(_json([_png((1900, 1900))] * 3)).encode(), 413, "per request"),
]


def test_bad_payloads_are_4xx_naming_the_field(served):
    url, _, _ = served
    pid = requests.get(url + "/health", headers=AUTH, timeout=30).json()["pid"]
    for body, status, message in BAD:
        r = _post(url, body)
        assert r.status_code == status and message in r.json()["error"], (message, r.status_code, r.text[:200])
    lie = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=20)
    lie.request("POST", "/score", body=b"{}", headers={**AUTH, "Content-Length": str(50 << 20)})
    assert lie.getresponse().status == 413  # refused from the header, before reading
    lie.close()
    status, sent = _chunked(url)
    assert status in (413, "ConnectionResetError", "RemoteDisconnected", "BrokenPipeError") and sent < 100 << 20
    r = _post(url, _json([_png((64, 48))]))
    assert r.status_code == 200 and len(r.json()["scores"]["ict_hp"]) == 1
    assert requests.get(url + "/health", headers=AUTH, timeout=30).json()["pid"] == pid  # the replica never died


def _descendants(proc) -> list[psutil.Process]:
    return [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]


def test_no_port_listens_beyond_loopback(served):
    url, proc, _ = served
    replica = requests.get(url + "/health", headers=AUTH, timeout=30).json()["pid"]
    listening = {}
    for p in _descendants(proc):
        try:
            socks = p.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        listening[p.pid] = [(p.name(), c.laddr.ip, c.laddr.port) for c in socks if c.status == psutil.CONN_LISTEN]
    assert len(listening.get(replica, [])) >= 1  # its core worker and inter-deployment gRPC ports
    exposed = [s for socks in listening.values() for s in socks if s[1] not in ("127.0.0.1", "::ffff:127.0.0.1", "::1")]
    assert exposed == [], exposed


def _memory(pid: int) -> dict[str, int]:
    """RSS and its private anonymous part (RssAnon: the process's own heap, what the budgets bound; RSS also counts
    pages of Ray's shared object store that the process has touched), in bytes."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon"):
                fields[key] = int(value.split()[0]) * 1024
    return fields


class _Peak:
    """Samples the memory of some processes every 10 ms in a thread; `stop()` gives the growth of each field."""

    def __init__(self, pids: dict[str, int]):
        self.pids, self.base = pids, {k: _memory(p) for k, p in pids.items()}
        self.peak, self.done = {k: dict(v) for k, v in self.base.items()}, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.done.is_set():
            for k, pid in self.pids.items():
                for field, value in _memory(pid).items():
                    self.peak[k][field] = max(self.peak[k][field], value)
            time.sleep(0.01)

    def stop(self) -> dict[str, dict[str, int]]:
        self.done.set()
        self.thread.join()
        return {k: {f: self.peak[k][f] - self.base[k][f] for f in self.base[k]} for k in self.pids}


def test_hostile_traffic_keeps_the_replica_within_its_memory_bound(served):
    url, proc, _ = served
    pid = requests.get(url + "/health", headers=AUTH, timeout=30).json()["pid"]
    for _ in range(2):  # warm up: a full model batch and a large decode, so their one-time costs are in the base
        assert _post(url, _json([_rotated_rgba((1900, 1900))])).status_code == 200
        assert _post(url, _json([_png((40, 40))] * 16)).status_code == 200
    tiny = _json([_png((1, 1))] * 64)  # 64 x (1 + 50,176) = 3.2 M pixels charged, 6 KB of JSON
    big = _json([_png((1900, 1900))])  # 3.6 M pixels decoded from ~20 KB
    worst = _json([_rotated_rgba((1900, 1900))])  # RGBA + EXIF rotation: the most copies per decode
    kinds = {
        "huge": (_json([HUGE]), {413, 503}),
        "tiny": (tiny, {200, 503}),
        "big": (big, {200, 503}),
        "worst": (worst, {200, 503}),
        "nested": (b"[" * 200_000, {400, 503}),
        "digits": (b'{"images": [], "n": ' + b"1" * 4300 + b"}", {400, 503}),
    }
    jobs = (
        ["huge"] * 6 + ["tiny"] * 12 + ["big"] * 8 + ["worst"] * 6 + ["nested"] * 4 + ["digits"] * 4 + ["chunked"] * 3
    )
    peak = _Peak({"replica": pid, "ingress": proc.pid})

    def run(kind):
        if kind == "chunked":
            status, sent = _chunked(url)
            return kind, status, sent < 100 << 20
        body, allowed = kinds[kind]
        r = _post(url, body)
        return kind, r.status_code, r.status_code in allowed and (r.status_code != 503 or "retry-after" in r.headers)

    t = time.time()
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(run, jobs))
    growth = peak.stop()
    seconds = time.time() - t
    counts = Counter((k, s) for k, s, _ in results)
    print(f"hostile traffic: {len(jobs)} requests in {seconds:.1f} s; answers {dict(counts)}")
    bound = memory_bound(LIMITS)
    mib = {k: {f: round(v / 2**20) for f, v in g.items()} for k, g in growth.items()}
    print(f"growth MiB (RssAnon bound {bound >> 20}): {mib}")
    assert all(ok for _, _, ok in results), [r for r in results if not r[2]]
    assert sum(s == 200 for _, s, _ in results) >= 1  # the server kept scoring while under attack
    assert growth["replica"]["RssAnon"] <= bound
    assert growth["ingress"]["RssAnon"] <= 2 * LIMITS.max_inflight_bytes + (64 << 20)
    metrics = requests.get(url + "/metrics", headers=AUTH, timeout=30).text
    assert f'icthp_inflight_pixels{{pid="{pid}"}} 0' in metrics  # every admitted request gave its pixels back
    assert f'icthp_batch_size_max{{pid="{pid}"}} 8' in metrics  # 64-image requests, at most 8 images per model call
    assert requests.get(url + "/health", headers=AUTH, timeout=30).json()["pid"] == pid
