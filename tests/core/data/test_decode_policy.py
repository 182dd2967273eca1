"""`decode_policy="upstream"` gives the upstream code's exact pixels and scores; "view" (default) differs only on
transparent or EXIF-rotated inputs (issue 22 point 7).

The references are written here with plain PIL, torchvision and transformers, as the upstream code runs them:
ICT/HP `Image.open(p).convert("RGB")` then CLIPImageProcessor; ImageReward `Resize(224, bicubic)`,
`CenterCrop(224)`, `convert("RGB")`; HPSv2 resize longest side + pad, then `convert("RGB")`.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from reference import MEAN, STD, load_hf_clip, load_mlp, ref_cosine, ref_hp, ref_pixels, ref_tokens
from scale_data import make_image

from icthp_core import load_scorer
from icthp_core.data.images import DecodePolicy, decode_image, parse_decode_policy, to_pil
from icthp_core.data.preprocess import preprocess_pil
from icthp_core.errors import ConfigError


def _exif_jpeg(img: Image.Image, orientation: int = 6) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    return buf.getvalue()


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _inputs() -> dict[str, bytes]:
    base = make_image(7, (180, 120))
    rgba = base.convert("RGBA")
    alpha = np.zeros((120, 180), np.uint8)
    alpha[:, 60:] = 255
    alpha[40:80, :] = 90
    rgba.putalpha(Image.fromarray(alpha))
    pal = base.quantize(16)
    return {
        "rgb.png": _png(base),
        "rgba.png": _png(rgba),
        "palette_transparent.png": _png(pal, transparency=int(np.asarray(pal)[0, 0])),
        "exif_rotated.jpg": _exif_jpeg(base, 6),
    }


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("policy")
    out = {}
    for name, data in _inputs().items():
        (d / name).write_bytes(data)
        out[name] = d / name
    return out


def _tensor(img: Image.Image) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


def _clip_reference(paths) -> torch.Tensor:
    """`Image.open(p).convert("RGB")` then CLIPImageProcessor, as upstream ran it (transformers 4.27, whose
    convert_rgb is `convert("RGB")`). transformers 5 composites a colour key that Pillow's P -> RGB conversion leaves
    in `info["transparency"]`, which transformers 4.27 did not: the pixels are passed without that info."""
    return ref_pixels([Image.fromarray(np.asarray(Image.open(p).convert("RGB"))) for p in paths])


def _imagereward_reference(path) -> torch.Tensor:
    """ImageReward's transform: Resize(224, bicubic), CenterCrop(224), convert("RGB"), ToTensor, Normalize."""
    from torchvision.transforms import CenterCrop, InterpolationMode, Resize

    img = CenterCrop(224)(Resize(224, interpolation=InterpolationMode.BICUBIC)(Image.open(path)))
    return _tensor(img.convert("RGB"))


def _hpsv2_reference(path) -> torch.Tensor:
    """HPSv2's open_clip ResizeMaxSize (resize longest side, pad 0), then convert("RGB")."""
    import torchvision.transforms.functional as F

    img = Image.open(path)
    w, h = img.size
    scale = 224 / max(w, h)
    new_h, new_w = round(h * scale), round(w * scale)
    img = F.resize(img, [new_h, new_w], interpolation=F.InterpolationMode.BICUBIC)
    pad_h, pad_w = 224 - new_h, 224 - new_w
    img = F.pad(img, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)
    return _tensor(img.convert("RGB"))


def _ours(path, mode: str, policy: str) -> torch.Tensor:
    return preprocess_pil(decode_image(path, policy=policy), mode, policy=policy)


@pytest.mark.parametrize("name", ["rgb.png", "rgba.png", "palette_transparent.png", "exif_rotated.jpg"])
def test_upstream_policy_gives_the_upstream_pixels(files, name):
    p = files[name]
    clip_ref = _clip_reference([p])[0]
    assert (_ours(p, "crop", "upstream") - clip_ref).abs().max() <= 1e-6
    assert (_ours(p, "imagereward", "upstream") - _imagereward_reference(p)).abs().max() <= 1e-6
    assert (_ours(p, "letterbox", "upstream") - _hpsv2_reference(p)).abs().max() <= 1e-6
    view = _ours(p, "crop", "view")
    if name == "rgb.png":  # ordinary RGB images: both policies give the same pixels
        assert torch.equal(view, _ours(p, "crop", "upstream"))
    else:  # what a person sees (alpha on white, rotated) is not what upstream computes
        assert (view - clip_ref).abs().max() > 0.5


def test_imagereward_upstream_resizes_before_dropping_alpha(files):
    """Resizing RGBA premultiplies alpha, so the order matters: convert-then-resize is not the upstream pixels."""
    p = files["rgba.png"]
    convert_first = preprocess_pil(Image.open(p).convert("RGB"), "imagereward", policy="upstream")
    assert (convert_first - _imagereward_reference(p)).abs().max() > 0.1
    assert (_ours(p, "imagereward", "upstream") - _imagereward_reference(p)).abs().max() <= 1e-6


def test_scores_under_upstream_policy_match_the_upstream_computation(tiny_ict, tiny_hp, files):
    names = sorted(files)
    paths = [str(files[n]) for n in names]
    prompts = [f"prompt {n}" for n in names]
    pixels = _clip_reference(paths)
    ict_ref = ref_cosine(load_hf_clip(tiny_ict), pixels, ref_tokens(prompts))
    head = load_mlp(tiny_hp / "hp_scorer/mlp_pytorch_model.bin")
    hp_ref = ref_hp(load_hf_clip(tiny_hp / "hp_backbone"), head, pixels)
    up = load_scorer(tiny_ict, tiny_hp, device="cpu", decode_policy="upstream")
    got = up.score(paths, prompts)
    assert (got["ict"] - ict_ref).abs().max() <= 1e-5 and (got["hp"] - hp_ref).abs().max() <= 1e-5
    files_rows = list(up.score_files(list(zip(paths, prompts, strict=True)), num_workers=0))
    assert np.allclose([r["ict_hp"] for r in files_rows], (ict_ref * hp_ref).numpy(), atol=1e-5)
    view = load_scorer(tiny_ict, tiny_hp, device="cpu").score(paths, prompts)
    differs = {n for n, a, b in zip(names, view["ict"], got["ict"], strict=True) if abs(float(a - b)) > 1e-5}
    assert differs == {"rgba.png", "palette_transparent.png", "exif_rotated.jpg"}


def test_evaluation_decodes_with_the_scorers_policy(tiny_ict, tiny_hp, files):
    from icthp_core.evaluation.preference import score_images

    paths = [str(files[n]) for n in sorted(files)]
    for policy in ("view", "upstream"):
        scorer = load_scorer(tiny_ict, tiny_hp, device="cpu", decode_policy=policy)
        got = score_images(scorer, paths, ["a photo"] * len(paths), batch_size=8, workers=0)
        assert np.allclose(got["ict_hp"], scorer.score(paths, "a photo")["ict_hp"].numpy(), atol=1e-6)


def test_icthp_eval_decode_policy(tiny_ict, tiny_hp, files, tmp_path):
    """`icthp eval --decode-policy upstream` scores each image as the upstream-policy scorer does."""
    import json

    from icthp_cli.main import main

    names = ["rgba.png", "palette_transparent.png", "exif_rotated.jpg"]
    row = {"easy_prompt": "a photo", "refine_prompt": "a photo of a thing"}
    row |= {f"image_{k + 1}": str(files[n]) for k, n in enumerate(names)}
    (tmp_path / "t.jsonl").write_text(json.dumps(row) + "\n")
    scores = {}
    for policy in ("view", "upstream"):
        out = tmp_path / f"{policy}.jsonl"
        argv = ["eval", "--data", str(tmp_path / "t.jsonl"), "--ict", str(tiny_ict), "--hp", str(tiny_hp)]
        argv += ["--workers", "0", "--bootstrap", "0", "--scores-out", str(out), "--decode-policy", policy]
        assert main(argv) == 0
        scores[policy] = json.loads(out.read_text().splitlines()[0])
        scorer = load_scorer(tiny_ict, tiny_hp, device="cpu", decode_policy=policy)
        want = scorer.score([str(files[n]) for n in names], "a photo")
        assert np.allclose([scores[policy][f"hp_I{k}"] for k in (1, 2, 3)], want["hp"].numpy(), atol=1e-6)
    assert scores["view"]["hp_I1"] != pytest.approx(scores["upstream"]["hp_I1"], abs=1e-7)


def test_gpu_decoding_is_view_only(tiny_hp, files):
    up = load_scorer(None, tiny_hp, device="cpu", decode_policy="upstream")
    with pytest.raises(ConfigError, match='decode="gpu"'):
        list(up.score_files([(str(files["rgb.png"]), None)], decode="gpu", num_workers=0))
    rows = list(up.score_files([(str(files["rgba.png"]), None)], decode="auto", num_workers=0))
    assert rows[0]["error"] is None and rows[0]["hp"] == pytest.approx(
        float(up.score([str(files["rgba.png"])])["hp"][0])
    )


def test_policy_names_are_checked():
    assert parse_decode_policy(None) is DecodePolicy.VIEW and parse_decode_policy("upstream") is DecodePolicy.UPSTREAM
    with pytest.raises(ConfigError, match=r"--decode-policy='raw': expected one of view, upstream"):
        parse_decode_policy("raw", "--decode-policy")
    with pytest.raises(ConfigError, match="decode_policy"):
        to_pil(Image.new("RGB", (4, 4)), policy="nope")


def _upstream_scores(tiny_ict, tiny_hp, sources, prompt: str) -> np.ndarray:
    """ict_hp of each source (path or BytesIO) as upstream computes it: `convert("RGB")`, then the HF models."""
    pixels = _clip_reference(sources)
    ict = ref_cosine(load_hf_clip(tiny_ict), pixels, ref_tokens([prompt] * len(sources)))
    head = load_mlp(tiny_hp / "hp_scorer/mlp_pytorch_model.bin")
    hp = ref_hp(load_hf_clip(tiny_hp / "hp_backbone"), head, pixels)
    return (ict * hp).numpy()


def _icthp_score(argv: list[str]) -> list[dict]:
    """Run `icthp score ARGV -o out.jsonl` in its own process (the user's path; tests/jobproc.py); the rows written."""
    import json

    import jobproc

    r = jobproc.run(["score", *argv])
    assert r.returncode == 0, r.stderr
    out = argv[argv.index("-o") + 1]
    return [json.loads(line) for line in open(out).read().splitlines()]


@pytest.mark.slow
def test_icthp_score_decode_policy(tiny_ict, tiny_hp, files, tmp_path):
    """`icthp score --decode-policy upstream` (image files and a parquet dataset) gives the upstream scores, and the
    default (view) differs from them on the transparent and the EXIF-rotated image."""
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    names = ["rgba.png", "exif_rotated.jpg"]
    blobs = [files[n].read_bytes() for n in names]
    pq.write_table(pa.table({"image": blobs, "name": names}), tmp_path / "d.parquet")
    want = dict(zip(names, _upstream_scores(tiny_ict, tiny_hp, [files[n] for n in names], "a photo"), strict=True))
    argv = ["--ict", str(tiny_ict), "--hp", str(tiny_hp), "--prompt", "a photo", "--workers", "0", "--no-progress"]
    argv += [*(str(files[n]) for n in names), "--dataset", str(tmp_path / "d.parquet"), "--keep-columns", "name"]
    argv += ["--batch-size", "1"]
    got = {}
    for policy in ("view", "upstream"):
        flag = ["--decode-policy", policy] if policy == "upstream" else []  # view is the default
        rows = _icthp_score([*argv, *flag, "-o", str(tmp_path / f"{policy}.jsonl")])
        got[policy, "files"] = {os.path.basename(r["image"]): r["ict_hp"] for r in rows if r["name"] is None}
        got[policy, "dataset"] = {r["name"]: r["ict_hp"] for r in rows if r["name"] is not None}
    for source in ("files", "dataset"):
        assert got["upstream", source] == pytest.approx(want, abs=1e-5)
        for n in names:
            assert abs(got["view", source][n] - want[n]) > 1e-4, (source, n)


def test_icthp_score_upstream_policy_refuses_gpu_decoding(tiny_hp, files, capsys):
    from icthp_cli.main import main

    argv = ["score", "--hp", str(tiny_hp), "--metrics", "hp", str(files["rgb.png"]), "--decode", "gpu"]
    assert main([*argv, "--decode-policy", "upstream"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == 'icthp score: --decode gpu decodes with the "view" policy only; use --decode cpu or auto'


def test_ray_decode_stage_uses_the_policy(files, tmp_path):
    """The Ray pipeline's decode task (`_decode_batch`, given `policy` through `fn_kwargs`) decodes as
    `decode_records` does under that policy (the Ray engine itself runs in tests/cli/test_score_matrix.py)."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from icthp_core.data.sources import decode_records, plan_dataset, read_shard
    from icthp_core.scale.pipeline import _decode_batch, _read_rows

    pq.write_table(pa.table({"image": [files["rgba.png"].read_bytes()]}), tmp_path / "d.parquet")
    (shard,) = plan_dataset(str(tmp_path / "d.parquet"), prompt="a photo")
    rows = _read_rows({"shard": 0, "spec": json.dumps(shard)})
    batch = {k: np.array([r[k] for r in rows], dtype=object) for k in rows[0]}
    px = {p: _decode_batch(batch, ["crop"], p)["px_crop"] for p in ("view", "upstream")}
    for p in ("view", "upstream"):
        assert np.array_equal(px[p], decode_records(read_shard(shard), ["crop"], p)[1]["crop"])
    assert np.abs(px["view"] - px["upstream"]).max() > 0.5
