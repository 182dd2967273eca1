"""`icthp score` as a user runs it (its own process, forked from tests/jobproc.py's preloaded server):
{local, ray} x {jsonl, csv, parquet, folder} x {resume, resume with other metrics, retry-errors, duplicates,
unwritable output, SIGKILL then resume}. Every cell: the exit code, a one-line error where one is due, and 0 rows lost
or duplicated against an in-process reference.

Inputs: a folder of images (one with a file name that is not UTF-8) and a Pick-a-Pic parquet dataset (one corrupt
cell, a kept `ranking_id` column). Ray cells join one local Ray (127.0.0.1) started once for the module; the cells that
run the pipeline are marked slow (the Ray ones multiprocess too); the unwritable-output cells stop before any work.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import jobproc
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from scale_data import write_pickapic

from icthp_core import load_scorer
from icthp_core.data.outputs import read_rows
from icthp_core.data.parquet_out import table_rows

ENGINES = ["local", "ray"]
SINKS = ["jsonl", "csv", "parquet", "folder"]
#: cells that run the pipeline: a Ray cell starts Ray workers (multiprocess)
CELLS = [
    pytest.param(e, s, id=f"{e}-{s}", marks=[pytest.mark.multiprocess] if e == "ray" else [])
    for e in ENGINES
    for s in SINKS
]
#: cells that stop before any work (no Ray is started)
EARLY_CELLS = [pytest.param(e, s, id=f"{e}-{s}") for e in ENGINES for s in SINKS]
PROMPT = "a small boat"
RAW_NAME = b"caf\xe9 \xff.png"  # a file name that is not UTF-8
#: a joining driver needs token auth on, as the module's Ray (Ray's default) has it
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "token"}


# ---------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("matrix")
    imgs = d / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (40 + 4 * i, 48, 3), dtype=np.uint8)).save(imgs / f"{i}.png")
    shutil.copy(imgs / "0.png", os.fsencode(imgs) + b"/" + RAW_NAME)
    return {"imgs": imgs, "pick": write_pickapic(d / "pick.parquet", n=3)}


@pytest.fixture(scope="module")
def ray_address():
    from icthp_core.scale.pipeline import LOOPBACK_ENV

    os.environ.setdefault(LOOPBACK_ENV, "0")  # before `import ray`: Ray's services bind to 127.0.0.1
    import ray

    # one logical CPU: the executor still runs read/decode tasks beside one scoring actor (0.5 CPU each), but Ray
    # starts fewer worker processes per run (each imports torch) - about 10 % less wall time per cell on 2 cores
    ray.init(num_cpus=1, include_dashboard=False, logging_level="WARNING")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture()
def engine_args(request):
    """`--engine ray --address A` for ray cells (starting the module's Ray on first use), nothing for local."""
    engine = request.node.callspec.params["engine"]
    if engine == "local":
        return ["--workers", "0"]
    return ["--engine", "ray", "--address", request.getfixturevalue("ray_address"), "--actors", "1"]


@pytest.fixture(scope="module")
def reference(inputs, tiny_ict, tiny_hp):
    """key -> ict_hp (None for an error row) of every input, scored in this process."""
    from icthp_core.data.images import expand_paths
    from icthp_core.data.sources import decode_records, plan_dataset, read_shard

    scorer = load_scorer(tiny_ict, tiny_hp, device="cpu")
    paths = expand_paths([inputs["imgs"]])
    ref = {(p, PROMPT): float(v) for p, v in zip(paths, scorer.score(paths, PROMPT)["ict_hp"], strict=True)}
    for shard in plan_dataset(str(inputs["pick"]), prompt=PROMPT):
        records = read_shard(shard)
        errors, _ = decode_records(records, ["crop"])
        for rec, err in zip(records, errors, strict=True):
            ref[(rec["image"], PROMPT)] = None if err else float(scorer.score([_pil(rec["data"])], PROMPT)["ict_hp"][0])
    return ref


def _pil(data: bytes) -> Image.Image:
    import io

    return Image.open(io.BytesIO(data)).convert("RGB")


# ---------------------------------------------------------------------------------------------------- helpers
def _out(tmp_path: Path, sink: str) -> Path:
    return tmp_path / ("out" if sink == "folder" else f"out.{sink}")


def _argv(tiny_ict, tiny_hp, inputs, engine_args, out, *extra, images=None):
    images = [str(inputs["imgs"])] if images is None else images
    return ["score", "--ict", str(tiny_ict), "--hp", str(tiny_hp), "--prompt", PROMPT, *images,
            "--dataset", str(inputs["pick"]), "--keep-columns", "ranking_id", "--shard-size", "2",
            "--batch-size", "2", "--no-progress", "-q", "-o", str(out), *engine_args, *extra]  # fmt: skip


def icthp(argv, timeout=600) -> subprocess.CompletedProcess:
    """`icthp ARGV` in its own process, forked from the preloaded server (tests/jobproc.py)."""
    return jobproc.run(argv, env=ENV, timeout=timeout)


def one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip()
    assert "Traceback" not in err, err
    assert err.splitlines()[-1].startswith("icthp score: ")
    return err.splitlines()[-1]


def read_output(out: Path, sink: str) -> list[dict]:
    """The rows of an output as dicts (image names as written by the run, scores as floats or None)."""
    if sink in ("jsonl", "csv"):
        rows = list(read_rows(out))
        for r in rows:
            r["ict_hp"] = float(r["ict_hp"]) if r["ict_hp"] not in (None, "") else None
            r["error"] = r["error"] or None
        return rows
    return table_rows(pq.read_table(out))


def check_against(rows: list[dict], reference: dict) -> None:
    """0 rows lost, 0 duplicated, the same error rows and scores as the in-process reference."""
    keys = [(r["image"], r["prompt"]) for r in rows]
    assert len(keys) == len(set(keys)), "duplicated rows"
    assert set(keys) == set(reference), set(keys) ^ set(reference)
    for r, k in zip(rows, keys, strict=True):
        if reference[k] is None:
            assert r["error"] and r["ict_hp"] is None, r
        else:
            assert r["error"] is None and abs(r["ict_hp"] - reference[k]) < 1e-5, (r, reference[k])
    assert any(os.fsencode(r["image"]).endswith(RAW_NAME) for r in rows)  # the exact bytes come back
    assert all(r["ranking_id"] in (None, "", "0", "1", "2") for r in rows)


def drop_rows(out: Path, sink: str) -> None:
    """Make `out` look like a run that ended early: keep its first 3 rows (a folder: lose one shard)."""
    if sink == "folder":
        (out / "part-00001.parquet").unlink()
    elif sink == "parquet":
        pq.write_table(pq.read_table(out).slice(0, 3), out)
    elif sink == "jsonl":
        out.write_bytes(b"".join(out.read_bytes().splitlines(keepends=True)[:3]))
    else:
        rows = list(csv.reader(out.read_text(encoding="utf-8", errors="surrogateescape").splitlines()))
        with open(out, "w", newline="", encoding="utf-8", errors="surrogateescape") as fh:
            csv.writer(fh).writerows(rows[:4])


def snapshot(out: Path) -> dict[str, bytes]:
    files = sorted(out.rglob("*")) if out.is_dir() else [out]
    return {str(f): f.read_bytes() for f in files if f.is_file()}


# ---------------------------------------------------------------------------------------------------- cells
@pytest.mark.slow
@pytest.mark.parametrize(("engine", "sink"), CELLS)
def test_resume(engine, sink, engine_args, tiny_ict, tiny_hp, inputs, reference, tmp_path):
    out = _out(tmp_path, sink)
    argv = _argv(tiny_ict, tiny_hp, inputs, engine_args, out)
    r = icthp(argv)
    assert r.returncode == 0, r.stderr
    check_against(read_output(out, sink), reference)
    drop_rows(out, sink)
    assert "pass --resume" in one_line_error(icthp(argv))  # an existing output is never replaced silently
    r = icthp([*argv, "--resume"])
    assert r.returncode == 0, r.stderr
    assert "resume: " in r.stderr
    check_against(read_output(out, sink), reference)
    r = icthp([*argv, "--resume"])  # nothing left: nothing scored again, nothing repeated (non-UTF-8 name too)
    assert r.returncode == 0, r.stderr
    check_against(read_output(out, sink), reference)


@pytest.mark.slow
@pytest.mark.parametrize(("engine", "sink"), CELLS)
def test_resume_with_other_metrics_is_refused(engine, sink, engine_args, tiny_ict, tiny_hp, inputs, tmp_path):
    out = _out(tmp_path, sink)
    argv = _argv(tiny_ict, tiny_hp, inputs, engine_args, out)
    r = icthp([*argv, "--metrics", "hp"])
    assert r.returncode == 0, r.stderr
    before = snapshot(out)
    line = one_line_error(icthp([*argv, "--resume"]))  # default metrics ict,hp,ict_hp: never ICT under `hp`
    assert "cannot resume" in line and "--metrics" in line
    assert snapshot(out) == before


@pytest.mark.slow
@pytest.mark.parametrize(("engine", "sink"), CELLS)
def test_retry_errors(engine, sink, engine_args, tiny_ict, tiny_hp, inputs, reference, tmp_path):
    imgs = tmp_path / "imgs"
    shutil.copytree(inputs["imgs"], imgs)
    good = (imgs / "1.png").read_bytes()
    (imgs / "1.png").write_bytes(b"broken")
    out = _out(tmp_path, sink)
    argv = _argv(tiny_ict, tiny_hp, {**inputs, "imgs": imgs}, engine_args, out)
    assert icthp(argv).returncode == 0
    rows = read_output(out, sink)
    assert [r["error"] is not None for r in rows if r["image"].endswith("1.png")] == [True]
    (imgs / "1.png").write_bytes(good)
    r = icthp([*argv, "--resume", "--retry-errors"])
    assert r.returncode == 0, r.stderr
    ref = {(k[0].replace(str(inputs["imgs"]), str(imgs)), k[1]): v for k, v in reference.items()}
    check_against(read_output(out, sink), ref)  # the broken image scored now; the corrupt cell is an error again


@pytest.mark.slow
@pytest.mark.parametrize(("engine", "sink"), CELLS)
def test_duplicates_are_scored_once(engine, sink, engine_args, tiny_ict, tiny_hp, inputs, reference, tmp_path):
    out = _out(tmp_path, sink)
    images = [str(inputs["imgs"]), str(inputs["imgs"] / "2.png")]  # 2.png twice, the dataset twice
    r = icthp(_argv(tiny_ict, tiny_hp, inputs, engine_args, out, "--dataset", str(inputs["pick"]), images=images))
    assert r.returncode == 0, r.stderr
    assert "1 repeated (image, prompt) items scored once" in r.stderr
    check_against(read_output(out, sink), reference)


@pytest.mark.parametrize(("engine", "sink"), EARLY_CELLS)
def test_unwritable_output_fails_before_any_work(engine, sink, tmp_path, inputs):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    out = _out(blocker, sink)  # a path under a file
    engine_args = ["--engine", "ray", "--address", "127.0.0.1:1"] if engine == "ray" else []
    # the weights do not exist: had the models (or Ray) been started first, the error would be another one
    argv = ["score", "--ict", str(tmp_path / "nope"), "--prompt", PROMPT, str(inputs["imgs"]), "-o", str(out)]
    line = one_line_error(icthp([*argv, *engine_args], timeout=120))
    assert "cannot be written" in line and "nope" not in line


# ---------------------------------------------------------------------------------------------------- SIGKILL
@pytest.fixture(scope="module")
def many(tmp_path_factory):
    d = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(1)
    for i in range(48):
        Image.fromarray(rng.integers(0, 256, (160, 160, 3), dtype=np.uint8)).save(d / f"{i:03d}.png")
    return d


def _written(out: Path, sink: str) -> int:
    if sink == "folder":
        return len(list(out.glob("part-*.parquet")))
    if sink == "parquet":
        return len(list(out.with_name(f".{out.name}.parts").glob("part-*.parquet")))
    return len(list(read_rows(out))) if out.exists() else 0


@pytest.mark.slow
@pytest.mark.parametrize(("engine", "sink"), CELLS)
def test_sigkill_then_resume(engine, sink, engine_args, tiny_ict, tiny_hp, many, tmp_path):
    out = _out(tmp_path, sink)
    argv = ["score", "--ict", str(tiny_ict), "--hp", str(tiny_hp), "--prompt", PROMPT, str(many), "-o", str(out),
            "--batch-size", "1", "--shard-size", "2", "--no-progress", "-q", *engine_args]  # fmt: skip
    proc = jobproc.start(argv, env=ENV)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not _written(out, sink):
        time.sleep(0.01)
    killed = proc.poll() is None
    proc.send_signal(signal.SIGKILL) if killed else None
    proc.communicate(timeout=60)
    assert killed, "the run ended before it could be killed"
    assert 0 < _written(out, sink)
    r = icthp([*argv, "--resume"])
    assert r.returncode == 0, r.stderr
    rows = read_output(out, sink)
    paths = sorted(str(p) for p in many.iterdir())
    keys = [r["image"] for r in rows]
    assert len(keys) == len(set(keys)) == len(paths) and set(keys) == set(paths)  # 0 lost, 0 duplicated
    ref = load_scorer(tiny_ict, tiny_hp, device="cpu").score(paths, PROMPT)["ict_hp"]
    got = {r["image"]: r["ict_hp"] for r in rows}
    assert np.allclose([got[p] for p in paths], ref.numpy(), atol=1e-5)  # 0 corrupted
    if sink == "parquet":
        assert not out.with_name(f".{out.name}.parts").exists()  # merged into the one file
