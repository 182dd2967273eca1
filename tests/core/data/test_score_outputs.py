"""What every `icthp score` sink writes: kept columns (binary ones never as reprs), non-finite scores (never bare
NaN/Infinity), and `--from-metadata` as a source of the one pipeline (any sink, error rows, no silent overwrite)."""

from __future__ import annotations

import base64
import csv
import json
import math

import pyarrow.parquet as pq
import pytest
from PIL import Image
from scale_data import write_pickapic

from icthp_cli.main import main
from icthp_core.data.metadata import KEY, save_png
from icthp_core.data.outputs import read_rows
from icthp_core.data.parquet_out import table_rows
from icthp_core.data.rows import finish_row, keep_text
from icthp_core.data.sinks import SinkOptions, open_sink
from icthp_core.scoring.records import build_record

SINKS = ["jsonl", "csv", "parquet", "folder"]


def _read(out, sink: str) -> list[dict]:
    return list(read_rows(out)) if sink in ("jsonl", "csv") else table_rows(pq.read_table(out))


def _out(tmp_path, sink: str):
    return tmp_path / ("out" if sink == "folder" else f"out.{sink}")


@pytest.mark.parametrize("sink", SINKS)
def test_keep_columns_in_every_sink_and_binary_as_base64(tiny_ict, tiny_hp, tmp_path, sink):
    src = write_pickapic(tmp_path / "pick.parquet", n=2)
    out = _out(tmp_path, sink)
    argv = ["score", "--ict", str(tiny_ict), "--hp", str(tiny_hp), "--dataset", str(src), "--image-column", "jpg_1"]
    argv += ["--keep-columns", "ranking_id,jpg_0", "--workers", "0", "--no-progress", "-q", "-o", str(out)]
    assert main(argv) == 0
    rows = _read(out, sink)
    assert [r["ranking_id"] for r in rows] == ["0", "1"]
    want = pq.read_table(src).column("jpg_0").to_pylist()
    assert [r["jpg_0"] for r in rows] == ["base64:" + base64.b64encode(b).decode() for b in want]
    assert all(not str(r["jpg_0"]).startswith("b'") for r in rows)


def test_keep_text_policy():
    assert keep_text(None) is None and keep_text("x") == "x" and keep_text(3) == "3" and keep_text(True) == "true"
    assert keep_text(b"\x00\xff") == "base64:AP8=" and keep_text({"a": [1, b"\x01"]}) == '{"a": [1, "base64:AQ=="]}'
    assert keep_text(float("nan")) == "nan"


@pytest.mark.parametrize("sink", SINKS)
def test_non_finite_scores_become_null_and_an_error(tmp_path, sink):
    out = _out(tmp_path, sink)
    s = open_sink(out, ["ict", "hp"], (), SinkOptions(), fingerprint="f", num_shards=1)
    s.write(0, [{"image": "a.png", "prompt": "p", "ict": float("nan"), "hp": 1.0, "error": None}], False)
    s.write(0, [{"image": "b.png", "prompt": "p", "ict": 0.5, "hp": float("inf"), "error": None}], True)
    s.close()
    rows = _read(out, sink)
    assert [r["error"] for r in rows] == [
        "a.png: no finite score for ict (written as null)",
        "b.png: no finite score for hp (written as null)",
    ]
    assert all(r["ict"] in (None, "") and r["hp"] in (None, "") for r in rows)
    if sink == "jsonl":
        text = out.read_text()
        assert "NaN" not in text and "Infinity" not in text


def test_finish_row_keeps_good_rows():
    row = finish_row({"image": "a", "prompt": None, "ict": 0.25, "error": None, "extra": 1}, ["ict"])
    assert row == {"image": "a", "prompt": None, "ict": 0.25, "error": None}
    assert math.isfinite(row["ict"])


def _bare_token(name: str):
    raise AssertionError(f"bare {name} written as a JSON value")


# ------------------------------------------------------------------------------------------ --from-metadata
@pytest.fixture()
def stored(tmp_path):
    d = tmp_path / "pngs"
    d.mkdir()
    img = Image.new("RGB", (16, 16), (10, 20, 30))
    save_png(img, d / "a.png", build_record({"ict": 0.5, "hp": 0.25, "ict_hp": 0.125}, "a cat", "ICT-HP"))
    img.save(d / "b_plain.png")  # no record
    for name, text in [
        ("c_nan.png", json.dumps({"scores": {"ict": float("nan")}, "prompt": "x"})),  # NaN as written by json
        ("d_text.png", json.dumps({"scores": {"ict": "high"}})),
        ("e_deep.png", "[" * 100_000 + "]" * 100_000),
    ]:
        from PIL import PngImagePlugin

        info = PngImagePlugin.PngInfo()
        info.add_text(KEY, text)
        img.save(d / name, pnginfo=info)
    return d


def test_from_metadata_writes_csv_with_error_rows(stored, tmp_path, capsys):
    out = tmp_path / "meta.csv"
    assert main(["score", "--from-metadata", str(stored), "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "a.png  ict=0.5000  hp=0.2500  ict_hp=0.1250  model=ICT-HP  prompt='a cat'" in captured.out
    assert "4 of 5 images have no readable scores" in captured.err
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["image", "prompt", "model", "ict", "hp", "ict_hp", "error"]
    by_name = {r["image"].rsplit("/", 1)[-1]: r for r in rows}
    assert len(by_name) == 5  # every image has a row: none silently dropped
    assert by_name["a.png"]["ict_hp"] == "0.125" and not by_name["a.png"]["error"]
    assert "no icthp_scores metadata" in by_name["b_plain.png"]["error"]
    assert "NaN is not a number" in by_name["c_nan.png"]["error"]  # refused where the record is read
    assert "d_text.png" in by_name["d_text.png"]["error"] and by_name["d_text.png"]["ict"] == ""
    assert by_name["e_deep.png"]["error"]
    # an existing output is never overwritten silently
    assert main(["score", "--from-metadata", str(stored), "-o", str(out)]) == 2
    assert "pass --resume to continue it or --overwrite" in capsys.readouterr().err
    assert main(["score", "--from-metadata", str(stored), "-o", str(out), "--overwrite", "-q"]) == 0


def test_from_metadata_jsonl_has_no_bare_nan_and_refuses_model_options(stored, tmp_path, capsys):
    out = tmp_path / "meta.jsonl"
    assert main(["score", "--from-metadata", str(stored), "-o", str(out), "--metrics", "ict", "-q"]) == 0
    text = out.read_text()
    rows = [json.loads(line, parse_constant=_bare_token) for line in text.splitlines()]  # strict JSON
    assert rows[0]["ict"] == 0.5
    assert main(["score", "--from-metadata", str(stored), "--engine", "ray"]) == 2
    assert "--from-metadata" in capsys.readouterr().err
    (stored / "b_plain.png").unlink()
    for name in ("c_nan.png", "d_text.png", "e_deep.png", "a.png"):
        (stored / name).unlink()
    Image.new("RGB", (4, 4)).save(stored / "x.png")
    assert main(["score", "--from-metadata", str(stored)]) == 1  # no readable record at all


def test_from_metadata_reads_text_chunks_without_decoding_pixels(tmp_path):
    from icthp_core.data.metadata import read_record

    path = tmp_path / "damaged.png"
    record = build_record({"ict_hp": 0.75}, "a dog", "ICT-HP")
    save_png(Image.new("RGB", (64, 64), (1, 2, 3)), path, record)
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 4
    data[start : start + 20] = b"\xff" * 20  # pixels that cannot be decoded (bad zlib stream and CRC)
    path.write_bytes(bytes(data))
    with pytest.raises(OSError):
        Image.open(path).load()
    assert read_record(path)["scores"] == {"ict_hp": 0.75}
    late = tmp_path / "late.png"  # the same record moved after the pixels (where Pillow reads it only on load)
    raw = path.read_bytes()
    iend = raw.index(b"IEND") - 4
    text_at = raw.index(b"tEXt") - 4
    length = int.from_bytes(raw[text_at : text_at + 4], "big")
    chunk = raw[text_at : text_at + 12 + length]
    late.write_bytes(raw[:text_at] + raw[text_at + len(chunk) : iend] + chunk + raw[iend:])
    assert read_record(late)["prompt"] == "a dog"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--engine", "ray", "--compile"], "--compile and --decode gpu apply to --engine local"),
        (["--actors", "2"], "apply to --engine ray"),
        (["--keep-columns", "x"], "no --dataset was given"),
        (["--retry-errors"], "--retry-errors needs --resume"),
        (["--metrics", "ict,nope"], "unknown metric(s) nope"),
        (["--shard-size", "0"], "--shard-size 0: must be >= 1"),
        (["--from-metadata", "--dataset", "d.parquet"], "--from-metadata reads PNG files"),
        (["-o", "out.txt"], "unsupported file type '.txt'"),
    ],
)
def test_options_that_cannot_work_are_one_line_errors(tmp_path, capsys, extra, message):
    (tmp_path / "a.png").write_bytes(b"x")
    argv = ["score", "--ict", str(tmp_path / "none"), "--prompt", "p", str(tmp_path / "a.png"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and message in err.splitlines()[-1]


def test_single_parquet_keeps_flushed_parts_and_merges_each_row_once(tmp_path):
    from icthp_core.data.parquet_out import ParquetScoreFile

    out = tmp_path / "o.parquet"
    rows = [{"image": f"{i}.png", "prompt": "p", "ict": i / 10, "error": None} for i in range(4)]
    w = ParquetScoreFile(out, ["ict"])
    w.write(rows[:2])
    w.write(rows[2:3])  # killed here: no close(), so no file yet, but two flushed parts
    assert not out.exists() and len(list(w.parts.glob("part-*.parquet"))) == 2
    w = ParquetScoreFile(out, ["ict"], resume=True)  # --resume merges what was flushed
    assert w.done == {(f"{i}.png", "p") for i in range(3)} and out.exists()
    w.write(rows[3:])
    parts = sorted(w.parts.glob("part-*.parquet"))
    w.close()
    # a kill between the merge's rename and the removal of the parts: the parts come back, merged once
    w.parts.mkdir()
    for p in parts:
        (w.parts / p.name).write_bytes(pq.read_table(out).slice(3).to_pandas().to_parquet())
    got = ParquetScoreFile(out, ["ict"], resume=True)
    assert sorted(got.done) == [(f"{i}.png", "p") for i in range(4)]
    got.close()
    assert [r["image"] for r in table_rows(pq.read_table(out))] == [f"{i}.png" for i in range(4)]


def test_resume_with_relative_paths_stored_relative_to_the_output(tiny_ict, tiny_hp, tmp_path, monkeypatch):
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        Image.new("RGB", (20, 20), (40 * i, 9, 9)).save(tmp_path / "imgs" / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    argv = ["score", "--ict", str(tiny_ict), "--hp", str(tiny_hp), "--prompt", "p", "imgs", "-o", "runs/o.jsonl"]
    argv += ["--workers", "0", "--no-progress", "-q"]
    assert main(argv) == 0
    assert [r["image"] for r in read_rows("runs/o.jsonl")] == ["../imgs/0.png", "../imgs/1.png", "../imgs/2.png"]
    assert main([*argv, "--resume"]) == 0
    assert len(list(read_rows("runs/o.jsonl"))) == 3  # recognised, not scored again
