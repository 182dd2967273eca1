"""Data loaders: formats, bad-row reports, pickle trust flag, converter."""

import io
import json

import pandas as pd
import pytest
import torch
from PIL import Image

from icthp_core.data.datasets import (
    DataFormatError,
    PairDataset,
    TripletDataset,
    UnsafeDataError,
    collate,
    convert_pick_high,
    load_pairs,
    load_triplets,
)


def _png(path, color=(200, 10, 10)):
    Image.new("RGB", (8, 8), color).save(path)


def _png_bytes(color=(10, 200, 10)):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def _transform(img):
    return torch.from_numpy(__import__("numpy").asarray(img.resize((4, 4)), dtype="float32")).permute(2, 0, 1)


def _tok(prompts):
    return torch.tensor([[len(p), 1, 2] for p in prompts])


@pytest.fixture
def triplet_dir(tmp_path):
    for n in "abc":
        _png(tmp_path / f"{n}.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    good = {
        "easy_prompt": "a cat",
        "refine_prompt": "a cat, detailed",
        "image_1": "a.png",
        "image_2": "b.png",
        "image_3": "c.png",
        "E1": 0.2,
        "E2": 0.5,
        "R1": 0.1,
        "R2": 0.4,
    }
    rows = [
        good,
        {**good, "image_2": "missing.png"},
        {**good, "E2": float("nan")},
        {**good, "easy_prompt": ""},
        {**good, "image_3": "bad.png"},
        {**good, "R1": 0.3},
    ]
    with open(tmp_path / "t.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r).replace("NaN", "null") + "\n")
    return tmp_path


def test_triplets_jsonl_skips_bad_rows(triplet_dir):
    recs, rep = load_triplets(triplet_dir / "t.jsonl", verify_images=True)
    assert rep.total == 6 and rep.kept == 2
    assert dict(rep.skipped) == {
        "image_not_found": 1,
        "nan_label": 1,
        "missing_prompt": 1,
        "unreadable_image": 1,
    }
    assert "kept 2/6" in rep.summary()
    assert recs[0].labels == {"E1": 0.2, "E2": 0.5, "R1": 0.1, "R2": 0.4}
    assert recs[1].labels["R1"] == 0.3 and recs[1].labels["E2"] == 0.5  # each label from its own column
    # evaluation / HP stage: labels are not needed, a NaN label does not drop the row
    recs, rep = load_triplets(triplet_dir / "t.jsonl", verify_images=True, use_labels=False)
    assert rep.kept == 3 and all(r.labels is None for r in recs)


def test_triplet_dataset_replaces_undecodable(triplet_dir):
    recs, rep = load_triplets(triplet_dir / "t.jsonl")  # no verification: bad.png row is kept
    assert rep.kept == 3
    ds = TripletDataset(recs, _transform, _tok, rep)
    item = ds[1]  # row with bad.png -> replaced by the next example
    assert rep.decode_failures == 1
    assert item["pixels_3"].shape == (3, 4, 4)
    assert torch.allclose(item["labels_easy"], torch.tensor([0.2, 0.5, 1.0]))
    batch = collate([ds[0], ds[2]])
    assert batch["pixels_1"].shape == (2, 3, 4, 4) and batch["easy_tokens"].shape == (2, 3)
    assert torch.allclose(batch["labels_ref"][1], torch.tensor([0.3, 0.4, 1.0]))


def test_csv_triplets_without_labels(tmp_path):
    for n in "abc":
        _png(tmp_path / f"{n}.png")
    pd.DataFrame(
        [
            {
                "easy_prompt": "x",
                "refine_prompt": "y",
                "image_1": str(tmp_path / "a.png"),
                "image_2": "b.png",
                "image_3": "c.png",
            }
        ]
    ).to_csv(tmp_path / "t.csv", index=False)
    recs, rep = load_triplets(tmp_path / "t.csv")
    assert rep.kept == 1 and recs[0].labels is None
    item = TripletDataset(recs, _transform, _tok)[0]
    assert torch.isnan(item["labels_easy"][:2]).all()
    with pytest.raises(DataFormatError, match="labels"):
        load_triplets(tmp_path / "t.csv", require_labels=True)


def test_pickapic_parquet_pairs(tmp_path):
    b = _png_bytes()
    df = pd.DataFrame(
        [
            {"caption": "a dog", "jpg_0": b, "jpg_1": b, "label_0": 1.0, "label_1": 0.0},
            {"caption": "a dog", "jpg_0": b, "jpg_1": b, "label_0": 0.5, "label_1": 0.5},
            {"caption": "a dog", "jpg_0": b"", "jpg_1": b, "label_0": 0.0, "label_1": 1.0},
            {"caption": "a dog", "jpg_0": b, "jpg_1": b, "label_0": None, "label_1": None},
            {"caption": None, "jpg_0": b, "jpg_1": b, "label_0": 1.0, "label_1": 0.0},
        ]
    )
    df.to_parquet(tmp_path / "p.parquet")
    recs, rep = load_pairs(tmp_path / "p.parquet")
    assert rep.kept == 2 and dict(rep.skipped) == {
        "empty_image_bytes": 1,
        "nan_label": 1,
        "missing_prompt": 1,
    }
    assert [r.label_0 for r in recs] == [1.0, 0.5]
    ds = PairDataset(recs, _transform, _tok, rep)
    assert ds[1]["label_0"].item() == 0.5 and ds[0]["pixels_0"].shape == (3, 4, 4)


def test_pairs_label_1_only(tmp_path):
    _png(tmp_path / "a.png")
    with open(tmp_path / "p.jsonl", "w") as f:
        f.write(json.dumps({"prompt": "p", "image_0": "a.png", "image_1": "a.png", "label_1": 1.0}) + "\n")
    recs, _ = load_pairs(tmp_path / "p.jsonl")
    assert recs[0].label_0 == 0.0


def _pick_high(root):
    (root / "Pick-High").mkdir()
    for sub in ("pick_easy_img/val", "pick_refine_img/val"):
        (root / sub).mkdir(parents=True)
    _png(root / "pick_easy_img/val/l.jpg")
    _png(root / "pick_easy_img/val/w.jpg")
    _png(root / "pick_refine_img/val/r.jpg")
    df = pd.DataFrame(
        [
            {
                "easy_prompt": "a cat",
                "refine_prompt": "a cat, 8k",
                "easy_image_0": "l.jpg",
                "easy_image_1": "w.jpg",
                "refine_image": "r.jpg",
                "E1": 0.1,
                "E2": 0.7,
                "R1": 0.05,
                "R2": 0.6,
            },
            {
                "easy_prompt": "a dog",
                "refine_prompt": "a dog, 8k",
                "easy_image_0": "gone.jpg",
                "easy_image_1": "w.jpg",
                "refine_image": "r.jpg",
                "E1": 0.1,
                "E2": 0.7,
                "R1": 0.05,
                "R2": 0.6,
            },
        ]
    )
    df.to_pickle(root / "Pick-High" / "val.pkl")


def test_pick_high_pickle_needs_trust(tmp_path):
    _pick_high(tmp_path)
    with pytest.raises(UnsafeDataError, match="trust"):
        load_triplets(tmp_path / "Pick-High" / "val.pkl")
    recs, rep = load_triplets(tmp_path / "Pick-High" / "val.pkl", trust_pickle=True)
    assert rep.kept == 1 and rep.skipped["image_not_found"] == 1
    assert recs[0].images[2].endswith("pick_refine_img/val/r.jpg")
    assert recs[0].labels["E2"] == 0.7  # not R1


@pytest.mark.parametrize("fmt,embed", [("jsonl", False), ("parquet", True)])
def test_convert_pick_high(tmp_path, fmt, embed):
    _pick_high(tmp_path)
    with pytest.raises(UnsafeDataError):
        convert_pick_high(tmp_path, tmp_path / "out", splits=["val"])
    out = convert_pick_high(
        tmp_path, tmp_path / "out", splits=["val", "train"], trust_pickle=True, fmt=fmt, embed_images=embed
    )
    assert list(out) == ["val"]
    recs, rep = load_triplets(out["val"])  # safe loader, no trust flag
    assert rep.kept == 1 and recs[0].easy_prompt == "a cat" and recs[0].labels["E2"] == 0.7
    assert isinstance(recs[0].images[0], bytes) == embed
    report = json.loads((tmp_path / "out" / "val.report.json").read_text())
    assert report["skipped"] == {"image_not_found": 1}


def test_synthetic_dataset_loads(tmp_path):
    from icthp_core.testing.synthetic import make_dataset

    paths = make_dataset(tmp_path, triplets=4, pairs=6)
    recs, rep = load_triplets(paths["triplets"], require_labels=True, verify_images=True)
    assert rep.kept == 4
    precs, prep = load_pairs(paths["pairs"], verify_images=True)
    assert prep.kept == 6
    lab = recs[0].labels
    assert lab["E1"] < lab["E2"] < 1
