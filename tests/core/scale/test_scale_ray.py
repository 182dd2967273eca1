"""`icthp score --engine ray` and `icthp serve` on one local Ray (2 CPUs, no dashboard, 127.0.0.1), tiny models.

Ray starts once for the module (marked multiprocess + slow below)."""

from __future__ import annotations

import base64
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow.parquet as pq
import pytest
import requests
import torch
from live import free_port
from PIL import Image
from scale_data import png, write_hf, write_pickapic, write_wds

from icthp_cli.main import main
from icthp_core import RewardClient, load_scorer
from icthp_core.data.parquet_out import ShardDir
from icthp_core.data.sinks import FolderSink
from icthp_core.data.sources import plan_files
from icthp_core.scale.protocol import parse_metrics_text

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

METRICS = ["ict", "hp", "ict_hp"]
AUTH = {"Authorization": "Bearer s3cret"}


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    from icthp_core.scale.pipeline import LOOPBACK_ENV

    os.environ.setdefault(LOOPBACK_ENV, "0")  # before `import ray`: Ray's services bind to 127.0.0.1
    import ray

    pid_dir = tmp_path_factory.mktemp("actor_pids")
    env = {"OMP_NUM_THREADS": "1", "ICTHP_SCALE_PID_DIR": str(pid_dir)}
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", runtime_env={"env_vars": env})
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    yield pid_dir
    from ray import serve

    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory, image_dir):
    d = tmp_path_factory.mktemp("scale_data")
    return {
        "pick": write_pickapic(d / "pick.parquet"),
        "wds": write_wds(d / "wds-000.tar"),
        "hf": write_hf(d / "hf"),
        "images": image_dir,
    }


def _score_argv(tiny_ict, tiny_hp, data, *extra):
    return [
        "score",
        "--ict",
        str(tiny_ict),
        "--hp",
        str(tiny_hp),
        "--prompt",
        "a teacup",  # for the folder; the datasets' own prompts are overridden too
        str(data["images"]),
        "--dataset",
        str(data["pick"]),
        "--dataset",
        str(data["wds"]),
        "--dataset",
        str(data["hf"]),
        "--shard-size",
        "3",
        "--batch-size",
        "4",
        "--no-progress",
        *extra,
    ]


def _table(path):
    return pq.read_table(path).to_pandas().set_index("image").sort_index()


def test_ray_engine_equals_local_engine_on_every_input_format(ray_local, tiny_ict, tiny_hp, data, tmp_path, capsys):
    local, ray_out = tmp_path / "local.parquet", tmp_path / "ray_out"
    assert main(_score_argv(tiny_ict, tiny_hp, data, "--workers", "0", "-o", str(local))) == 0
    capsys.readouterr()
    assert main(_score_argv(tiny_ict, tiny_hp, data, "--engine", "ray", "-o", str(ray_out))) == 0
    summary = capsys.readouterr().out
    assert "rows 23 (errors 1)" in summary and "decode" in summary and "images/s" in summary
    a, b = _table(local), _table(ray_out)
    assert len(a) == 23 and list(a.index) == list(b.index)  # 6 files + 10 pick-a-pic + 4 wds + 3 hf
    assert (a["error"].fillna("") == b["error"].fillna("")).all() and a["error"].notna().sum() == 1
    for m in METRICS:
        assert np.allclose(a[m].fillna(0), b[m].fillna(0), atol=1e-5), m

    # resume: a removed shard is the only one scored again; the rows come back identical
    (ray_out / "part-00002.parquet").unlink()
    argv = _score_argv(tiny_ict, tiny_hp, data, "--engine", "ray", "--actors", "1", "-o", str(ray_out), "--resume")
    assert main(argv) == 0
    out = capsys.readouterr().out
    n_shards = len(list(ray_out.glob("part-*.parquet")))
    assert f"shards written 1, skipped (already done) {n_shards - 1}" in out
    assert _table(ray_out).fillna(0).equals(b.fillna(0))


def test_killing_a_scoring_actor_loses_and_duplicates_nothing(ray_local, tiny_ict, tiny_hp, tmp_path):
    from icthp_core.scale.pipeline import run_ray

    for f in ray_local.iterdir():
        f.unlink()
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    paths = []
    for i in range(48):
        p = img_dir / f"{i:03d}.png"
        p.write_bytes(png(i, (48 + i % 5, 40)))
        paths.append(str(p))
    shards = plan_files([(p, f"prompt {i % 3}") for i, p in enumerate(paths)], shard_size=2)
    sink = FolderSink(ShardDir(tmp_path / "out", "kill-test", len(shards), METRICS), METRICS, [])
    result = {}

    def run():
        result["summary"] = run_ray(shards, METRICS, {"ict": str(tiny_ict), "hp": str(tiny_hp)}, sink, batch_size=2)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.time() + 120
    while time.time() < deadline and not (len(list(ray_local.iterdir())) >= 2 and sink.done_shards()):
        time.sleep(0.05)
    victims = sorted(ray_local.iterdir())
    assert victims and thread.is_alive(), "the run ended before an actor could be killed"
    killed = int(victims[0].stem)
    os.kill(killed, signal.SIGKILL)  # a scoring actor this test's Ray started
    done_at_kill = len(sink.done_shards())
    thread.join(timeout=180)
    assert not thread.is_alive()
    assert done_at_kill < len(shards)
    summary = result["summary"]
    table = sink.dir.read_all().to_pandas()
    assert summary.rows == 48 and len(table) == 48 and table["image"].is_unique and set(table["image"]) == set(paths)
    assert table["error"].isna().all()
    ref = load_scorer(tiny_ict, tiny_hp, device="cpu").score(paths, [f"prompt {i % 3}" for i in range(48)])
    got = table.set_index("image").loc[paths]
    assert np.allclose(got["ict_hp"].to_numpy(), ref["ict_hp"].numpy(), atol=1e-5)


# ------------------------------------------------------------------------------------------------ server
@pytest.fixture(scope="module")
def server(ray_local, tiny_ict, tiny_hp):
    from ray import serve

    from icthp_core.scale.serve_config import ServeConfig, ServeLimits
    from icthp_core.scale.server import start_server

    config = ServeConfig(
        METRICS,
        {"ict": str(tiny_ict), "hp": str(tiny_hp)},
        device="cpu",
        port=free_port(),
        max_batch_size=16,
        batch_wait_s=0.1,
        token="s3cret",
        limits=ServeLimits(max_images=8),
    )
    ingress = start_server(config)
    yield ingress.url
    ingress.stop()
    serve.delete("icthp")


def test_server_concurrent_clients_match_local_scorer_and_batch(server, tiny_ict, tiny_hp):
    client = RewardClient(server, token="s3cret", metric=None)
    scorer = load_scorer(tiny_ict, tiny_hp, device="cpu")
    jobs = [(c, r) for c in range(8) for r in range(3)]

    def call(job):
        c, r = job
        arr = np.asarray(Image.open(__import__("io").BytesIO(png(10 * c + r, (64, 48)))).convert("RGB"))
        return job, arr, client(arr, f"client {c}")

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, jobs))
    arrays = [a for _, a, _ in results]
    ref = scorer.score([Image.fromarray(a) for a in arrays], [f"client {c}" for (c, _), _, _ in results])
    for m in METRICS:
        got = torch.tensor([s[m][0] for _, _, s in results])
        assert torch.allclose(got, ref[m], atol=1e-5), m
    counters = parse_metrics_text(requests.get(f"{server}/metrics", headers=AUTH, timeout=10).text)
    assert counters["icthp_requests_total"] >= 24 and counters["icthp_batch_size_max"] > 1
    assert counters["icthp_batches_total"] < counters["icthp_images_total"]


def test_server_multipart_and_png_payloads(server, tiny_ict, tiny_hp):
    scorer = load_scorer(tiny_ict, tiny_hp, device="cpu")
    imgs = [png(1), png(2, (50, 90), "JPEG")]
    ref = scorer.score([Image.open(__import__("io").BytesIO(b)).convert("RGB") for b in imgs], ["a", "b"])
    auth = {"Authorization": "Bearer s3cret"}
    files = [("image", ("a.png", imgs[0], "image/png")), ("image", ("b.jpg", imgs[1], "image/jpeg"))]
    r = requests.post(f"{server}/score", files=files, data={"prompt": ["a", "b"]}, headers=auth, timeout=30)
    assert r.status_code == 200, r.text
    assert np.allclose(r.json()["scores"]["ict_hp"], ref["ict_hp"].numpy(), atol=1e-5)
    body = {"images": [base64.b64encode(b).decode() for b in imgs], "prompts": ["a", "b"], "metrics": ["hp"]}
    r = requests.post(f"{server}/score", json=body, headers=auth, timeout=30)
    assert r.status_code == 200 and list(r.json()["scores"]) == ["hp"]
    assert np.allclose(r.json()["scores"]["hp"], ref["hp"].numpy(), atol=1e-5)


def test_server_answers_bad_payloads_with_4xx_and_keeps_serving(server):
    auth = {"Authorization": "Bearer s3cret"}
    good = {"images": [base64.b64encode(png(3)).decode()], "prompt": "a dog"}
    assert requests.post(f"{server}/score", json=good, timeout=30).status_code == 401
    assert requests.post(f"{server}/score", data=b"{oops", headers=auth, timeout=30).status_code == 400
    bad_img = {"images": [base64.b64encode(b"GIF89a nope").decode()], "prompt": "x"}
    r = requests.post(f"{server}/score", json=bad_img, headers=auth, timeout=30)
    assert r.status_code == 400 and "images[0]" in r.json()["error"]
    r = requests.post(f"{server}/score", json={**good, "prompt": ""}, headers=auth, timeout=30)
    assert r.status_code == 400 and "prompt" in r.json()["error"]
    r = requests.post(f"{server}/score", json={"images": good["images"] * 9, "prompt": "x"}, headers=auth, timeout=30)
    assert r.status_code == 413
    with pytest.raises(ValueError, match="2 prompts for 1 images"):
        RewardClient(server, token="s3cret")(np.zeros((1, 8, 8, 3), np.uint8), ["a", "b"])
    r = requests.post(f"{server}/score", json=good, headers=auth, timeout=30)
    assert r.status_code == 200 and len(r.json()["scores"]["ict_hp"]) == 1
    assert requests.get(f"{server}/health", headers=auth, timeout=10).json()["status"] == "ok"


def test_server_replica_killed_requests_still_answered(server):
    client = RewardClient(server, token="s3cret", retries=8, backoff=0.5, timeout=30)
    x = torch.rand(2, 3, 32, 32)
    before = client(x, "a bird")
    pid = client.health()["pid"]
    os.kill(pid, signal.SIGKILL)  # the replica process of this test's deployment
    after = client(x, "a bird")
    assert torch.allclose(before, after, atol=1e-6)
    assert client.health()["pid"] != pid
