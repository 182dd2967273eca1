"""Dataset inputs (parquet bytes/paths, WebDataset, HF datasets) and parquet outputs on the single-process engine,
the server's payload parsing, and the in-process reward (no Ray here)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from scale_data import png, write_hf, write_path_parquet, write_pickapic, write_wds

from icthp_cli.main import main
from icthp_core import LocalReward, load_scorer
from icthp_core.scale.protocol import BadRequest, parse_json
from icthp_core.scale.serve_config import ServeLimits

ARGS = ["--no-progress", "--workers", "0", "-q"]


def _models(tiny_ict, tiny_hp):
    return ["--ict", str(tiny_ict), "--hp", str(tiny_hp)]


def _pil(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def test_pickapic_parquet_scores_every_image_column(tiny_ict, tiny_hp, tmp_path, capsys):
    src = write_pickapic(tmp_path / "pick.parquet")
    out = tmp_path / "out.parquet"
    argv = ["score", *_models(tiny_ict, tiny_hp), "--dataset", str(src), "--keep-columns", "ranking_id"]
    assert main([*argv, "-o", str(out), "--batch-size", "3", *ARGS]) == 0
    t = pq.read_table(out).to_pylist()
    assert len(t) == 10 and {"image", "prompt", "ranking_id", "ict", "hp", "ict_hp", "error"} <= set(t[0])
    bad = [r for r in t if r["error"]]
    assert [r["image"] for r in bad] == [f"{src}#1:jpg_1"] and bad[0]["ict_hp"] is None
    assert "pick.parquet#1:jpg_1" in capsys.readouterr().err
    # reference: the image bytes decoded with PIL and scored with the in-memory scorer
    src_rows = pq.read_table(src).to_pylist()
    ok = [r for r in t if not r["error"]]
    images = [_pil(src_rows[int(r["image"].split("#")[1].split(":")[0])][r["image"].rsplit(":", 1)[1]]) for r in ok]
    ref = load_scorer(tiny_ict, tiny_hp, device="cpu").score(images, [r["prompt"] for r in ok])
    assert torch.allclose(torch.tensor([r["ict_hp"] for r in ok], dtype=torch.float32), ref["ict_hp"], atol=1e-5)
    assert [r["ranking_id"] for r in t[:4]] == ["0", "0", "1", "1"]


def test_wds_hf_and_path_parquet_with_jsonl_output_and_resume(tiny_ict, tiny_hp, image_dir, tmp_path):
    wds, hf = write_wds(tmp_path / "shard-000.tar"), write_hf(tmp_path / "hfds")
    (tmp_path / "pp").mkdir()
    paths = write_path_parquet(tmp_path / "pp" / "paths.parquet", image_dir)
    out = tmp_path / "o.jsonl"
    base = ["score", *_models(tiny_ict, tiny_hp), "--dataset", str(wds), "--dataset", str(paths)]
    hf_args = ["--dataset", str(hf), "--image-column", "picture", "--prompt-column", "text"]
    # wds + path parquet first (auto columns), then resume adds nothing, then the HF set in a second run
    assert main([*base, "-o", str(out), *ARGS]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 7 and all(r["error"] is None for r in rows)
    assert [r["prompt"] for r in rows[:4]] == ["text prompt 0", "text prompt 1", "text prompt 2", "json caption 3"]
    assert main([*base, "-o", str(out), "--resume", *ARGS]) == 0
    assert len(out.read_text().splitlines()) == 7
    out2 = tmp_path / "hf.jsonl"
    assert main(["score", *_models(tiny_ict, tiny_hp), *hf_args, "-o", str(out2), *ARGS]) == 0
    hf_rows = [json.loads(x) for x in out2.read_text().splitlines()]
    assert [r["image"] for r in hf_rows] == [f"{hf}#{i}:picture" for i in range(3)]
    ref = load_scorer(tiny_ict, tiny_hp, device="cpu").score(
        [_pil(png(300 + i)) for i in range(3)], [f"hf prompt {i}" for i in range(3)]
    )
    assert torch.allclose(torch.tensor([r["ict"] for r in hf_rows]), ref["ict"], atol=1e-5)
    # the path parquet rows score the files themselves
    names = sorted(p.name for p in image_dir.iterdir())[:3]
    ref2 = load_scorer(tiny_ict, tiny_hp, device="cpu").score(
        [str(image_dir / n) for n in names], [f"prompt {k}" for k in range(3)]
    )
    assert torch.allclose(torch.tensor([r["hp"] for r in rows[4:]]), ref2["hp"], atol=1e-5)


def test_bad_dataset_arguments_are_one_line_errors(tiny_ict, tiny_hp, tmp_path, capsys):
    src = write_pickapic(tmp_path / "pick.parquet")
    assert main(["score", *_models(tiny_ict, tiny_hp), "--dataset", str(src), "--image-column", "nope", *ARGS]) == 2
    assert "no column 'nope'" in capsys.readouterr().err
    assert main(["score", *_models(tiny_ict, tiny_hp), "--dataset", str(tmp_path / "missing.parquet"), *ARGS]) == 2
    assert "no such file" in capsys.readouterr().err


def test_folder_output_resumes_per_shard(tiny_ict, tiny_hp, image_dir, tmp_path, capsys):
    out = tmp_path / "shards"
    argv = ["score", *_models(tiny_ict, tiny_hp), "--prompt", "a cat", str(image_dir), "--shard-size", "2"]
    assert main([*argv, "-o", str(out), "--no-progress", "--workers", "0"]) == 0
    first = pq.read_table(out).to_pandas().sort_values("image").reset_index(drop=True)
    (out / "part-00001.parquet").unlink()
    capsys.readouterr()
    assert main([*argv, "-o", str(out), "--no-progress", "--workers", "0"]) == 2  # an existing output needs --resume
    assert "pass --resume" in capsys.readouterr().err
    assert main([*argv, "-o", str(out), "--no-progress", "--workers", "0", "--resume"]) == 0
    assert "shards written 1, skipped (already done) 2" in capsys.readouterr().err
    again = pq.read_table(out).to_pandas().sort_values("image").reset_index(drop=True)
    assert again.equals(first) and len(again) == 6
    assert main([*argv, "--shard-size", "3", "-o", str(out), "--no-progress", "--resume"]) == 2  # another plan
    assert "different run" in capsys.readouterr().err


def _payload(**kw) -> bytes:
    return json.dumps(kw).encode()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (_payload(images=["%%%"], prompts=["x"]), "not valid base64"),
        (_payload(images=[base64.b64encode(b"hello").decode()], prompts=["x"]), r"images\[0\]: not an image"),
        (_payload(images=[base64.b64encode(png(1)).decode()] * 2, prompts=["a", "b", "c"]), "3 prompts for 2"),
        (_payload(images=[base64.b64encode(png(1)).decode()], prompts=[" "]), "need a non-empty prompt"),
        (_payload(images=[base64.b64encode(png(1)).decode()], prompt="x", metrics=["clip"]), "not served"),
        (_payload(array={"shape": [1, 4, 4, 3], "dtype": "uint8", "data": "AAAA"}, prompt="x"), "do not fill"),
        (_payload(images=[base64.b64encode(png(1)).decode()] * 5, prompt="x"), "limit is 4"),
    ],
)
def test_bad_payloads_name_the_problem(body, message):
    with pytest.raises(BadRequest, match=message):
        parse_json(body, ["ict", "hp", "ict_hp"], {"ict", "ict_hp"}, ServeLimits(max_images=4))


def test_prompt_free_request_for_prompt_free_metric():
    body = _payload(images=[base64.b64encode(png(2)).decode()], metrics=["hp"])
    req = parse_json(body, ["ict", "hp"], {"ict"}, ServeLimits(max_images=4))
    assert req.prompts is None and req.metrics == ["hp"] and req.items[0].size == (72, 60)


def test_local_reward_takes_tensors_arrays_and_pil(tiny_ict, tiny_hp):
    scorer = load_scorer(tiny_ict, tiny_hp, device="cpu")
    reward = LocalReward(scorer)
    torch.manual_seed(0)
    x = torch.rand(3, 3, 40, 48)
    arr = (x.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)
    ref = scorer.score([Image.fromarray(a) for a in arr], "a cat")["ict_hp"]
    got = reward(x, "a cat")
    assert isinstance(got, torch.Tensor) and torch.allclose(got, ref, atol=1e-6)
    assert np.allclose(reward(arr, "a cat"), ref.numpy(), atol=1e-6)
    assert np.allclose(reward([Image.fromarray(a) for a in arr], "a cat", metric="ict_hp"), ref.numpy(), atol=1e-6)
