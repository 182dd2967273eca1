"""The reward server's budgets and hardening without Ray: payload errors (4xx naming the field), header-only size
checks, the proxy guard (token on every route, body counted while streaming, in-flight bytes), token sources and the
exposed-host warning. The same paths under real traffic: tests/core/scale/test_serve_hostile_ray.py."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from icthp_core.errors import ConfigError
from icthp_core.scale.ingress import IngressGuard
from icthp_core.scale.protocol import BadRequest, parse_json, parse_multipart, probe_image
from icthp_core.scale.serve_config import ServeLimits, exposure_warning, read_token
from icthp_core.testing.fuzz import _png_with_size

SERVED, PROMPT_METRICS = ["ict", "hp", "ict_hp"], {"ict", "ict_hp"}
LIMITS = ServeLimits(
    max_images=8, max_image_pixels=1_000_000, max_request_pixels=2_000_000, max_inflight_pixels=4_000_000
)


def _png(size=(16, 12)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _arr(shape, data: str = "AAAA") -> bytes:
    return json.dumps({"array": {"shape": shape, "dtype": "uint8", "data": data}, "prompt": "x"}).encode()


HUGE_PNG = _png_with_size(_png(), 13_000, 13_000)  # a few hundred bytes declaring 169 Mpx
PAYLOADS = [
    (b"[" * 100_000 + b"]" * 100_000, 400, "nested too deeply"),
    (b'{"images": [' * 50_000, 400, "nested too deeply"),
    (b'{"array": {"shape": [' + b"9" * 4300 + b', 2, 2, 3], "data": "AA=="}}', 400, r"array\.shape: .*too long"),
    (b'{"images": [], "prompt": ' + b"7" * 5000 + b"}", 400, "no images"),
    (json.dumps({"images": [_b64(_png())], "prompt": 5}).encode(), 400, "prompt: expected a string"),
    (json.dumps({"images": [_b64(_png())], "prompts": {"a": 1}}).encode(), 400, "prompts: expected"),
    (json.dumps({"images": [_b64(_png())], "prompt": "x", "metrics": [{"a": 1}]}).encode(), 400, "metrics: expected"),
    (json.dumps({"images": [_b64(_png())], "prompt": "x", "metrics": 3}).encode(), 400, "metrics: expected"),
    (json.dumps({"images": {"0": "x"}}).encode(), 400, "images: expected a list"),
    (json.dumps({"images": [_b64(_png()), 7], "prompt": "x"}).encode(), 400, r"images\[1\]: expected a base64"),
    (json.dumps({"array": [1, 2]}).encode(), 400, "array: expected"),
    (json.dumps({"array": {"shape": [1, 2, 2, 3], "dtype": "float32", "data": ""}}).encode(), 400, "array.dtype"),
    (_arr(["1", 2, 2, 3]), 400, r"array\.shape: expected"),
    (_arr([1, 2.5, 2, 3]), 400, r"array\.shape: expected"),
    (_arr([1, 2, 2]), 400, r"array\.shape: expected \[B, H, W, 3\] with every size"),
    (_arr([1, 2, 2, 4]), 400, r"array\.shape"),
    (_arr([1, -2, 2, 3]), 400, r"array\.shape"),
    (_arr([1, 2, 2, 3, 1]), 400, r"array\.shape"),
    (_arr([True, 2, 2, 3]), 400, r"array\.shape"),
    (_arr([1, 10**12, 10**12, 3]), 413, r"array\.shape: .* over the limit of 1,000,000 per image"),
    (_arr([10**9, 1, 1, 3]), 413, "limit is 8"),
    (_arr([1, 2, 2, 3], "AAAA"), 400, "do not fill"),
    (json.dumps({"images": [_b64(HUGE_PNG)], "prompt": "x"}).encode(), 413, r"images\[0\]: 13000x13000"),
    (json.dumps({"images": [_b64(b"II*\x00garbage")], "prompt": "x"}).encode(), 400, r"images\[0\]: not an image"),
    (json.dumps({"images": [_b64(_png((1000, 1000)))] * 3, "prompt": "x"}).encode(), 413, "per request"),
    (b"\xff\xfe not utf-8", 400, "not valid JSON"),
    (b"NaN", 400, "must be a JSON object"),
]


@pytest.mark.parametrize(("body", "status", "message"), PAYLOADS, ids=[f"p{i}" for i in range(len(PAYLOADS))])
def test_bad_payloads_are_4xx_naming_the_field(body, status, message):
    with pytest.raises(BadRequest, match=message) as err:
        parse_json(body, SERVED, PROMPT_METRICS, LIMITS)
    assert err.value.status == status


def test_many_tiny_images_are_charged_for_their_preprocessed_copies():
    body = json.dumps({"images": [_b64(_png((1, 1)))] * 8, "prompt": "x"}).encode()
    assert parse_json(body, SERVED, PROMPT_METRICS, LIMITS, per_image_extra=2 * 224 * 224).charge == 8 * (1 + 100_352)
    with pytest.raises(BadRequest, match="8 images charge 2,408,456 pixels") as err:
        parse_json(body, SERVED, PROMPT_METRICS, LIMITS, per_image_extra=3 * 100_352)
    assert err.value.status == 413


def test_header_is_checked_before_decoding(monkeypatch):
    import PIL.ImageFile

    def no_decoding(self):
        raise AssertionError("decoded")

    monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", no_decoding)
    item = probe_image(_png((300, 200)), "images[0]", 1_000_000)
    assert item.size == (300, 200)
    with pytest.raises(BadRequest, match="over the limit") as err:
        probe_image(HUGE_PNG, "images[0]", 40_000_000)
    assert err.value.status == 413


def test_decode_failures_after_the_header_are_400_naming_the_image():
    truncated = _png((64, 64))[:-40]  # header fine, pixel data cut
    item = probe_image(truncated, "images[2]", 1_000_000)
    with pytest.raises(BadRequest, match=r"images\[2\]: cannot decode") as err:
        item.decode(1_000_000)
    assert err.value.status == 400


def test_multipart_metrics_field_must_be_text():
    with pytest.raises(BadRequest, match="metrics: expected a comma-separated"):
        parse_multipart([("a.png", _png())], ["x"], object(), SERVED, PROMPT_METRICS, LIMITS)
    req = parse_multipart([("a.png", _png())], ["x"], "hp", SERVED, PROMPT_METRICS, LIMITS)
    assert req.metrics == ["hp"] and req.items[0].where == "image 'a.png'"


def test_limits_and_config_errors_name_the_option():
    with pytest.raises(ConfigError, match="--max-images"):
        ServeLimits(max_images=0).check()
    with pytest.raises(ConfigError, match="--max-request-pixels .* over --max-inflight-pixels"):
        ServeLimits(max_request_pixels=10, max_inflight_pixels=5).check()
    with pytest.raises(ConfigError, match="--max-request-mb"):
        ServeLimits(max_request_bytes=10 << 20, max_inflight_bytes=1 << 20).check()


def test_token_sources(tmp_path, monkeypatch):
    monkeypatch.delenv("ICTHP_SERVE_TOKEN", raising=False)
    f = tmp_path / "token"
    f.write_text("from-file\nignored\n")
    assert read_token("argv", f) == ("from-file", [])
    monkeypatch.setenv("ICTHP_SERVE_TOKEN", "from-env")
    assert read_token(None, None) == ("from-env", [])
    monkeypatch.delenv("ICTHP_SERVE_TOKEN")
    token, warnings = read_token("argv", None)
    assert token == "argv" and "ps" in warnings[0]
    assert read_token(None, None) == (None, [])
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="--token-file .*empty"):
        read_token(None, tmp_path / "empty")
    with pytest.raises(ConfigError, match="--token-file .*cannot read"):
        read_token(None, tmp_path / "missing")


def test_exposure_warning():
    assert exposure_warning("127.0.0.1", None) is None and exposure_warning("::1", None) is None
    assert exposure_warning("localhost", None) is None and exposure_warning("0.0.0.0", "t") is None
    assert "WITHOUT a token" in exposure_warning("0.0.0.0", None)
    assert "WITHOUT a token" in exposure_warning("10.1.2.3", "")


# ------------------------------------------------------------------------------------------------ proxy guard
class _App:
    """The inner ASGI app (Ray's proxy): records the body it receives and answers 200."""

    def __init__(self):
        self.bodies: list[bytes] = []

    async def __call__(self, scope, receive, send):
        msg = await receive()
        self.bodies.append(msg.get("body", b""))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def _call(guard, path="/score", headers=(), chunks=(b"",), stall: asyncio.Event | None = None):
    """Run one request through `guard`; returns (status, headers, body, how many chunks it read)."""
    sent, read = [], [0]

    async def receive():
        if read[0] < len(chunks):
            read[0] += 1
            return {
                "type": "http.request",
                "body": chunks[read[0] - 1],
                "more_body": read[0] < len(chunks) or stall is not None,
            }
        if stall is not None:
            await stall.wait()
        return {"type": "http.disconnect"}

    async def send(msg):
        sent.append(msg)

    scope = {"type": "http", "path": path, "headers": [(k.encode(), v.encode()) for k, v in headers]}
    return scope, receive, send, sent, read


def _run(guard, **kw):
    scope, receive, send, sent, read = _call(guard, **kw)
    asyncio.run(guard(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body, read[0]


def test_guard_token_on_every_route():
    app = _App()
    guard = IngressGuard(app, token="s3cret", max_request_bytes=100, max_inflight_bytes=1000)
    for path in ("/score", "/health", "/metrics", "/-/routes", "/-/healthz"):
        assert _run(guard, path=path)[0] == 401, path
    assert _run(guard, path="/-/routes", headers=[("authorization", "Bearer s3cret")])[0] == 200
    assert _run(guard, headers=[("authorization", "Bearer s3cretX")])[0] == 401
    open_health = IngressGuard(app, token="s3cret", open_health=True)
    assert _run(open_health, path="/health")[0] == 200 and _run(open_health, path="/metrics")[0] == 401


def test_guard_counts_the_body_while_it_streams():
    app = _App()
    guard = IngressGuard(app, max_request_bytes=100, max_inflight_bytes=1000)
    status, _, body, _ = _run(guard, headers=[("content-length", "5000")], chunks=[b"x" * 50] * 100)
    assert status == 413 and b"5,000 bytes" in body and app.bodies == []
    status, _, body, read = _run(guard, chunks=[b"x" * 30] * 1000)  # chunked: no length given
    assert status == 413 and read == 4 and app.bodies == []  # stopped at 120 bytes of 30,000
    assert _run(guard, headers=[("content-length", "12abc")])[0] == 400
    status, *_ = _run(guard, chunks=[b'{"a":', b" 1}"])
    assert status == 200 and app.bodies == [b'{"a": 1}'] and guard.inflight == 0


def test_guard_in_flight_budget_answers_503_with_retry_after():
    app = _App()
    guard = IngressGuard(app, max_request_bytes=100, max_inflight_bytes=250, retry_after_s=3)

    async def scenario():
        stall = asyncio.Event()
        slow = [_call(guard, chunks=[b"x" * 100], stall=stall)[:3] for _ in range(2)]  # 200 bytes held, unfinished
        tasks = [asyncio.create_task(guard(*c)) for c in slow]
        for _ in range(100):  # let both read their first chunk
            await asyncio.sleep(0)
        assert guard.inflight == 200
        scope, receive, send, sent, _ = _call(guard, headers=[("content-length", "60")], chunks=[b"y" * 60])
        await guard(scope, receive, send)
        stall.set()
        await asyncio.gather(*tasks)
        return sent

    sent = asyncio.run(scenario())
    assert sent[0]["status"] == 503 and (b"retry-after", b"3") in sent[0]["headers"]
    assert guard.inflight == 0
    assert _run(guard, headers=[("content-length", "60")], chunks=[b"y" * 60])[0] == 200


def test_guard_stalled_body_gets_408():
    guard = IngressGuard(_App(), max_request_bytes=100, body_timeout_s=0.05)

    async def scenario():
        scope, receive, send, sent, _ = _call(guard, chunks=[b"x" * 10], stall=asyncio.Event())  # never resumes
        await guard(scope, receive, send)
        return sent

    assert asyncio.run(scenario())[0]["status"] == 408 and guard.inflight == 0


def test_array_payload_round_trip():
    arr = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3)
    body = json.dumps({"array": {"shape": [2, 3, 4, 3], "data": _b64(arr.tobytes())}, "prompt": "x"}).encode()
    req = parse_json(body, SERVED, PROMPT_METRICS, LIMITS)
    assert [it.size for it in req.items] == [(4, 3), (4, 3)] and req.prompts == ["x", "x"]
    assert np.array_equal(np.asarray(req.items[1].decode(100)), arr[1])


def test_serve_options_warn_about_argv_tokens_and_exposed_hosts(tiny_ict, tiny_hp, monkeypatch, tmp_path):
    from icthp_cli.main import build_parser as job_parser
    from icthp_cli.serve import config_from_args

    def build_parser():
        return job_parser("serve")[0]

    monkeypatch.delenv("ICTHP_SERVE_TOKEN", raising=False)
    base = ["--ict", str(tiny_ict), "--hp", str(tiny_hp)]
    config, warnings = config_from_args(build_parser().parse_args([*base, "--host", "0.0.0.0"]))
    assert config.token is None and any("WITHOUT a token" in w for w in warnings)
    config, warnings = config_from_args(build_parser().parse_args([*base, "--token", "abc"]))
    assert config.token == "abc" and any("`ps`" in w for w in warnings)
    (tmp_path / "t").write_text("xyz\n")
    argv = [*base, "--token-file", str(tmp_path / "t"), "--open-health", "--max-inflight-pixels", "99000000"]
    config, warnings = config_from_args(build_parser().parse_args(argv))
    assert (config.token, config.open_health, config.limits.max_inflight_pixels, warnings) == ("xyz", True, 99e6, [])
    with pytest.raises(ConfigError, match="--max-request-pixels"):
        config_from_args(build_parser().parse_args([*base, "--max-inflight-pixels", "1000"]))


def test_inflight_budget_waits_then_gives_up():
    from icthp_core.scale.server import InflightBudget

    async def scenario():
        budget = InflightBudget(10)
        assert await budget.acquire(7, 0.01)
        assert not await budget.acquire(4, 0.05)  # no room within the timeout: the caller answers 503
        waiter = asyncio.create_task(budget.acquire(4, 5.0))
        await asyncio.sleep(0.01)
        await budget.release(7)  # room again: the waiting request is admitted
        assert await waiter and budget.used == 4

    asyncio.run(scenario())


def test_client_honours_retry_after():
    from icthp_core.scale.client import _retry_after

    assert _retry_after("3") == 3.0 and _retry_after(None) == 0.0 and _retry_after("soon") == 0.0
    assert _retry_after("-5") == 0.0 and _retry_after("9999") == 60.0


def test_request_bytes_decode_like_files(tmp_path):
    """16-bit, transparent and EXIF-rotated images: the server's bytes decode equals the file decoder's."""
    from icthp_core.data.images import decode_image

    deep = Image.fromarray((np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 21).astype(np.uint16))
    alpha = Image.new("RGBA", (40, 30), (200, 10, 10, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    for i, (img, kw) in enumerate([(deep, {}), (alpha, {}), (Image.new("RGB", (50, 20), (1, 2, 3)), {"exif": exif})]):
        path = tmp_path / f"{i}.png"
        img.save(path, **kw)
        got = probe_image(path.read_bytes(), f"images[{i}]", 1_000_000).decode(1_000_000)
        assert np.array_equal(np.asarray(got), np.asarray(decode_image(path))), i
    assert got.size == (20, 50)  # rotated


def test_older_parse_json_call_decodes_every_image():
    body = json.dumps({"images": [_b64(_png((30, 20)))], "prompt": "x"}).encode()
    req = parse_json(body, SERVED, PROMPT_METRICS, max_images=4)
    assert req.images[0].size == (30, 20) and req.prompts == ["x"]
    bad = json.dumps({"images": [_b64(_png((64, 64))[:-40])], "prompt": "x"}).encode()
    with pytest.raises(BadRequest, match=r"images\[0\]: cannot decode"):
        parse_json(bad, SERVED, PROMPT_METRICS, max_images=4)
    with pytest.raises(BadRequest, match="limit is 1"):
        parse_json(json.dumps({"images": [_b64(_png())] * 2}).encode(), SERVED, PROMPT_METRICS, max_images=1)
