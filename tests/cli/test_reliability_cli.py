"""`icthp score` and model loading under bad input: every row kept, clear one-line errors (issue 10)."""

from __future__ import annotations

import csv
import json
import os
import shutil

import pytest
import torch
from PIL import Image

from icthp_cli.main import main
from icthp_core.data.outputs import prepare_resume, read_rows, repair_tail
from icthp_core.data.prompts import read_prompt_rows
from icthp_core.errors import CheckpointError, DataError, OutputError

PROMPT = "a red bicycle"


def _args(tiny_ict, tiny_hp, *extra):
    return ["score", "--ict", str(tiny_ict), "--hp", str(tiny_hp), "--no-progress", "--workers", "0", *extra]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("icthp ")
    return last


@pytest.fixture()
def imgs(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(4):
        Image.new("RGB", (40 + 8 * i, 48), (60 * i, 100, 200 - 40 * i)).save(d / f"{i}.png")
    return d


# ---------------------------------------------------------------------------------------------- classes 2, 5


def test_prompts_file_bad_rows_become_error_rows(tiny_ict, tiny_hp, imgs, tmp_path, capsys):
    pf = tmp_path / "p.jsonl"
    lines = [
        json.dumps({"image": "imgs/0.png", "prompt": "first\u2028line two"}),  # U+2028 is text inside a line
        json.dumps({"image": "imgs/1.png", "prompt": "   "}),  # empty prompt on line 2
        "{not json",
        json.dumps({"image": "imgs/2.png", "prompt": "third\u0085x"}),
        json.dumps({"image": "imgs/3.png", "prompt": "fourth"}),
    ]
    pf.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode("utf-8") + b"\r\n")  # BOM + CRLF
    out = tmp_path / "o.jsonl"
    assert main(_args(tiny_ict, tiny_hp, "--prompts-file", str(pf), "-o", str(out))) == 0
    err = capsys.readouterr().err
    assert f"{pf}:2: 'prompt': the prompt is empty" in err and f"{pf}:3: invalid JSON" in err
    rows = list(read_rows(out))
    ok = {r["image"].rsplit("/", 1)[-1]: r for r in rows if not r["error"]}
    assert sorted(ok) == ["0.png", "2.png", "3.png"] and ok["0.png"]["prompt"] == "first\u2028line two"
    assert len(rows) == 5  # two error rows + three scores: nothing lost, nothing aborted


def test_prompts_file_encodings(tmp_path):
    csv_file = tmp_path / "p.csv"
    csv_file.write_bytes(b'\xef\xbb\xbfimage,prompt\r\na.png,"two\r\nlines"\r\nb.png,\r\nc.png,ok\r\n')
    pairs, errors = read_prompt_rows(csv_file)
    assert pairs == [("a.png", "two\r\nlines"), ("c.png", "ok")]
    assert errors[0]["error"].startswith(f"{csv_file}:4:")  # the empty prompt, on its physical line
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"image": "a.png", "prompt": "ok"}\n{"image": "b.png", "prompt": "caf\xe9"}\n')
    with pytest.raises(DataError, match=rf"{latin}:2: not UTF-8 \(byte 0xe9 at column 34\)"):
        read_prompt_rows(latin)


def test_latin1_prompts_file_is_one_line(tiny_ict, tiny_hp, tmp_path, capsys):
    f = tmp_path / "p.csv"
    f.write_bytes(b"image,prompt\nx.png,caf\xe9\n")
    assert main(_args(tiny_ict, tiny_hp, "--prompts-file", str(f))) == 2
    assert f"{f}:2: not UTF-8" in _one_line_error(capsys)


# ------------------------------------------------------------------------------------------------- class 3


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_file_names_that_are_not_utf8(tiny_ict, tiny_hp, imgs, tmp_path, fmt, capsys):
    raw = os.fsencode(imgs) + b"/caf\xe9 \xff.png"
    shutil.copy(imgs / "0.png", raw)
    out = tmp_path / f"o.{fmt}"
    assert main(_args(tiny_ict, tiny_hp, "--prompt", PROMPT, str(imgs), "-o", str(out))) == 0
    table = capsys.readouterr().out
    assert "caf\\xe9 \\xff.png" in table  # printed, not crashed
    out.read_bytes().decode("utf-8" if fmt == "jsonl" else "latin-1")  # JSONL stays valid UTF-8
    rows = list(read_rows(out))
    assert len(rows) == 5 and not any(r["error"] for r in rows)
    assert raw in {os.fsencode(r["image"]) for r in rows}  # reversible: the exact bytes come back
    assert main(_args(tiny_ict, tiny_hp, "--prompt", PROMPT, str(imgs), "-o", str(out), "--resume")) == 0
    assert len(list(read_rows(out))) == 5  # and resume recognises it


# ------------------------------------------------------------------------------------------------- class 4


def test_resume_refuses_other_metrics(tiny_ict, tiny_hp, imgs, tmp_path, capsys):
    out = tmp_path / "o.csv"
    assert main(_args(tiny_ict, tiny_hp, "--prompt", PROMPT, str(imgs), "-o", str(out), "--metrics", "ict")) == 0
    before = out.read_bytes()
    assert main(_args(tiny_ict, tiny_hp, "--prompt", PROMPT, str(imgs), "-o", str(out), "--resume")) == 2
    assert "cannot resume" in _one_line_error(capsys) and out.read_bytes() == before


def test_torn_multiline_csv_record_is_cut(tmp_path):
    out = tmp_path / "o.csv"
    out.write_bytes(b'image,prompt,ict,error\r\na.png,"one\nline",0.5,\r\nb.png,"two\nli')  # killed in a field
    assert repair_tail(out) > 0
    assert out.read_bytes() == b'image,prompt,ict,error\r\na.png,"one\nline",0.5,\r\n'
    out.write_bytes(b'image,prompt,ict,error\r\na.png,"x",0.5')  # cut before the newline
    repair_tail(out)
    assert out.read_bytes() == b"image,prompt,ict,error\r\n"
    with pytest.raises(OutputError, match="cannot resume"):
        prepare_resume(out, ["hp"])


def test_retry_errors_and_duplicates(tiny_ict, tiny_hp, imgs, tmp_path, capsys):
    pf = tmp_path / "p.csv"
    with open(pf, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "prompt"])
        for i in [0, 1, 1, 2]:  # (1.png, same prompt) twice: scored once
            w.writerow([str(imgs / f"{i}.png"), "p"])
    bad = imgs / "2.png"
    keep = bad.read_bytes()
    bad.write_bytes(b"broken")
    out = tmp_path / "o.jsonl"
    assert main(_args(tiny_ict, tiny_hp, "--prompts-file", str(pf), "-o", str(out))) == 0
    assert "1 repeated (image, prompt) items scored once" in capsys.readouterr().err
    rows = list(read_rows(out))
    assert len(rows) == 3 and rows[2]["error"]
    bad.write_bytes(keep)
    assert main(_args(tiny_ict, tiny_hp, "--prompts-file", str(pf), "-o", str(out), "--resume")) == 0
    assert len(list(read_rows(out))) == 3  # a plain resume keeps the error row
    assert main(_args(tiny_ict, tiny_hp, "--prompts-file", str(pf), "-o", str(out), "--resume", "--retry-errors")) == 0
    rows = list(read_rows(out))
    assert len(rows) == 3 and not any(r["error"] for r in rows)


# ---------------------------------------------------------------------------------------------- classes 8, 11


def test_unwritable_output_fails_before_loading(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    # the model sources do not exist: had the models been loaded first, the error would name them
    argv = ["score", "--ict", str(tmp_path / "nope"), "--prompt", "p", "x.png", "-o", str(blocker / "o.jsonl")]
    assert main(argv) == 2
    line = _one_line_error(capsys)
    assert "o.jsonl: cannot be written" in line and "nope" not in line


def test_full_disk_is_one_line(tiny_ict, tiny_hp, imgs, tmp_path, capsys):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this OS")
    out = tmp_path / "o.jsonl"
    out.symlink_to("/dev/full")
    assert main(_args(tiny_ict, tiny_hp, "--prompt", PROMPT, str(imgs), "-o", str(out), "--overwrite")) == 2
    assert "No space left on device" in _one_line_error(capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_without_gpu_is_one_line(tiny_ict, tiny_hp, imgs, capsys):
    assert main(_args(tiny_ict, tiny_hp, "--prompt", PROMPT, str(imgs), "--device", "cuda")) == 2
    assert "no CUDA GPU is available" in _one_line_error(capsys)


def _copy_model(src, dst):
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(
    "content, message",
    [
        (b"{not json", "not a readable JSON config"),
        (b'{"vision_config": {"hidden_size": "wide"}, "text_config": {}}', "'vision_config.hidden_size'"),
        (b'{"vision_config": 5}', "'vision_config' must be an object"),
        (b'{"text_config": {}, "vision_config": {}, "x": "\xe9"}', "not UTF-8"),
    ],
)
def test_malformed_config_is_one_line(tiny_ict, tiny_hp, imgs, tmp_path, capsys, content, message):
    ict = _copy_model(tiny_ict, tmp_path / "ict")
    (ict / "config.json").write_bytes(content)
    assert main(_args(ict, tiny_hp, "--prompt", PROMPT, str(imgs))) == 2
    line = _one_line_error(capsys)
    assert "config.json" in line and message in line


# ------------------------------------------------------------------------------------------------- class 7


def test_loading_is_strict(tiny_ict, tiny_hp, tmp_path):
    from icthp_core.checkpoints.files import load_state_dict
    from icthp_core.scoring.models import HPModel, ICTModel

    # NaN weights: refused at load time, naming the file and the key as written
    ict = _copy_model(tiny_ict, tmp_path / "ict")
    weights = next(p for p in ict.iterdir() if p.name in ("pytorch_model.bin", "model.safetensors"))
    sd = {k: v.clone() for k, v in load_state_dict(weights).items()}  # not memory-mapped: the file is rewritten
    key = "vision_model.encoder.layers.1.mlp.fc2.weight"
    assert key in sd  # the tiny ICT is in the HF layout
    sd[key] = sd[key].clone()
    sd[key][0, 0] = float("nan")
    torch.save(sd, weights)
    with pytest.raises(CheckpointError, match=rf"{weights}: NaN or infinite values in {key}"):
        ICTModel.from_pretrained(ict)
    # a missing key is named as in the user's (HF) file, not by its internal open_clip name
    del sd[key]
    torch.save(sd, weights)
    with pytest.raises(CheckpointError, match=rf"missing keys: {key}") as e:
        ICTModel.from_pretrained(ict)
    assert "resblocks" not in str(e.value)
    # an HP head that does not fit its backbone: refused at load, not at the first score
    hp = _copy_model(tiny_hp, tmp_path / "hp")
    head_file = next((hp / "hp_scorer").iterdir())
    head = {k: v.clone() for k, v in load_state_dict(head_file).items()}
    head["layers.0.weight"] = torch.zeros(head["layers.0.weight"].shape[0], 7)
    torch.save(head, head_file)
    with pytest.raises(CheckpointError, match="head takes 7 features but the backbone"):
        HPModel.from_pretrained(hp)
