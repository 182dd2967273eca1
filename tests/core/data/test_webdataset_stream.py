"""WebDataset and parquet inputs are streamed (issue 21): webdataset's key rule, gzip read member by member, a
truncated tar costs only what is lost, oversized members are refused unread, parquet read by record batch."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import jobproc
import pytest
from scale_data import png

from icthp_core.data.sources import iter_record_batches, iter_shard, plan_dataset
from icthp_core.data.webdataset import split_key, tar_records


def _tar(path: Path, members: list[tuple[str, bytes]], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("./x.jpg", ("./x", "jpg")),
        ("a.b/c.d.jpg", ("a.b/c", "d.jpg")),
        ("s000.png", ("s000", "png")),
        ("dir/x.seg.png", ("dir/x", "seg.png")),
        (".hidden", None),
        ("noext", None),
    ],
)
def test_keys_follow_webdatasets_rule(name, want):
    assert split_key(name) == want


def test_tar_made_by_the_tar_command_from_a_folder_with_dots(tmp_path):
    """`tar -C dir -cf x.tar .` writes `./` names; a folder with a dot and multi-dot names keep their samples."""
    src = tmp_path / "src"
    (src / "v1.0").mkdir(parents=True)
    files = {"a.jpg": png(1, fmt="JPEG"), "a.txt": b"prompt a", "b.png": png(2), "b.txt": b"prompt b"}
    files |= {"v1.0/c.png": png(3), "v1.0/c.txt": b"prompt c", "v1.0/d.x.png": png(4), "v1.0/d.txt": b"prompt d"}
    files |= {"e.png": png(5), "e.json": json.dumps({"caption": "prompt e", "id": 7}).encode()}
    for name, data in files.items():
        (src / name).write_bytes(data)
    tar = tmp_path / "x.tar"
    if shutil.which("tar"):
        subprocess.run(["tar", "-C", str(src), "-cf", str(tar), "--sort=name", "."], check=True)
    else:  # the same member names
        _tar(tar, [(f"./{n}", d) for n, d in sorted(files.items())])
    recs = list(tar_records(str(tar), keep=["id"]))
    keys = {r["image"].split("#", 1)[1]: r for r in recs}
    assert set(keys) == {"./a", "./b", "./e", "./v1.0/c", "./v1.0/d"}, keys
    assert all(r.get("error") is None for k, r in keys.items() if k != "./v1.0/d"), recs
    assert [keys[k]["prompt"] for k in ("./a", "./b", "./v1.0/c", "./e")] == [
        "prompt a",
        "prompt b",
        "prompt c",
        "prompt e",
    ]
    assert keys["./e"]["id"] == 7
    # d.x.png has the extension "x.png" (webdataset's rule), so sample ./v1.0/d has no image: an error row
    assert "no image member" in keys["./v1.0/d"]["error"]


def test_truncated_tar_costs_only_what_is_lost_and_the_next_shard_is_read(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    members = [(f"s{i}.{ext}", png(i) if ext == "png" else b"p") for i in range(6) for ext in ("png", "txt")]
    whole = _tar(tmp_path / "whole.tar", members).read_bytes()
    (folder / "a.tar").write_bytes(whole[: len(whole) // 2])  # cut inside a member
    _tar(folder / "b.tar", members)
    recs = [r for shard in plan_dataset(str(folder)) for r in iter_shard(shard)]
    a = [r for r in recs if "a.tar" in r["image"]]
    b = [r for r in recs if "b.tar" in r["image"]]
    assert len(b) == 6 and all(r.get("error") is None and r["data"] for r in b)
    assert [len(c) for c in iter_record_batches(plan_dataset(str(folder / "b.tar"))[0], 4)] == [4, 2]
    ok = [r for r in a if not r.get("error")]
    assert ok and all(r["data"] for r in ok)
    assert "the tar ends inside this sample" in a[-2]["error"]
    assert a[-1]["image"].endswith("a.tar#<rest>") and "the rest of this shard is lost" in a[-1]["error"]
    # a file that is not a tar at all: one error row
    (folder / "c.tar").write_bytes(b"not a tar at all" * 10)
    recs = list(tar_records(str(folder / "c.tar")))
    assert len(recs) == 1 and "unreadable after 0 samples" in recs[0]["error"]


def test_repeated_keys_and_oversized_members_are_error_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("ICTHP_MAX_IMAGE_BYTES", "50000")
    big = b"\0" * 60_000
    members = [("a.png", png(1)), ("b.png", big), ("b.txt", b"x"), ("a.txt", b"again"), ("c.png", png(2))]
    recs = {r["image"].split("#")[1]: r for r in tar_records(str(_tar(tmp_path / "t.tar", members)))}
    assert recs["c"].get("error") is None
    assert "60,000 bytes is over the limit of 50,000 bytes" in recs["b"]["error"] and recs["b"]["data"] is None
    assert "key seen before" in recs["a"]["error"]  # the second run of key a (members must be consecutive)


def _measure(argv: list[str]) -> None:
    """In a fresh process: the records of `argv[0]` and the peak MiB of Python objects + Arrow buffers reading them."""
    import tracemalloc

    import pyarrow as pa

    tracemalloc.start()
    n = sum(1 for shard in plan_dataset(argv[0]) for r in iter_shard(shard))
    print(n, (tracemalloc.get_traced_memory()[1] + pa.default_memory_pool().max_memory()) / 2**20)


def _peak_mib(path: Path) -> tuple[int, float]:
    """(records, peak MiB of Python objects + Arrow buffers) reading every record of `path`, in a process of its own
    (forked from tests/jobproc.py's server, which has not imported pyarrow)."""
    out = jobproc.run([str(path)], entry=_measure)
    assert out.returncode == 0, out.stderr
    n, mib = out.stdout.split()
    return int(n), float(mib)


@pytest.mark.slow
def test_gzip_tar_and_parquet_are_streamed_in_bounded_memory(tmp_path):
    """96 MiB of (incompressible) image members in a .tar.gz and in a single-row-group parquet: the peak is a few
    members, not the data (the old reader held the whole tar, and a whole parquet row group, in memory: > 96 MiB)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    blobs = [os.urandom(4 << 20) for _ in range(24)]
    members = [
        (f"s{i:03d}.{ext}", blob if ext == "png" else b"p") for i, blob in enumerate(blobs) for ext in ("png", "txt")
    ]
    raw = _tar(tmp_path / "raw.tar", members)
    with gzip.open(tmp_path / "big.tar.gz", "wb", compresslevel=1) as f:
        f.write(raw.read_bytes())
    raw.unlink()
    n, peak = _peak_mib(tmp_path / "big.tar.gz")
    assert n == 24 and peak < 20, peak
    table = pa.table({"image": blobs, "prompt": ["p"] * 24})
    # one row group; pages of one row each (a page is the reader's smallest unit, whatever the reader)
    pq.write_table(table, tmp_path / "big.parquet", row_group_size=24, write_batch_size=1, data_page_size=1 << 20)
    n, peak = _peak_mib(tmp_path / "big.parquet")
    assert n == 24 and peak < 48, peak


def test_icthp_score_scores_the_shard_after_a_truncated_one(tiny_ict, tiny_hp, tmp_path):
    from icthp_cli.main import main

    folder = tmp_path / "shards"
    folder.mkdir()
    members = [(f"s{i}.{ext}", png(i) if ext == "png" else b"a prompt") for i in range(4) for ext in ("png", "txt")]
    whole = _tar(tmp_path / "whole.tar", members).read_bytes()
    (folder / "a.tar").write_bytes(whole[: len(whole) * 2 // 3])
    _tar(folder / "b.tar", members)
    out = tmp_path / "rows.jsonl"
    argv = ["score", "--ict", str(tiny_ict), "--hp", str(tiny_hp), "--dataset", str(folder), "-o", str(out)]
    assert main([*argv, "--workers", "0", "--no-progress", "-q"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    b = [r for r in rows if "b.tar#" in r["image"]]
    a = [r for r in rows if "a.tar#" in r["image"]]
    assert len(b) == 4 and all(r["error"] is None and r["ict_hp"] is not None for r in b)
    assert any(r["error"] is None for r in a) and a[-1]["image"].endswith("#<rest>") and a[-1]["error"]
