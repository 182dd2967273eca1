"""The app's pure modules: ranking, winners, paradox, upload checks, folder roots, A/B matching, CSV."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from icthp_app import csv_export, matching, ranking, uploads
from icthp_app.logic import InputError
from icthp_app.uploads import UploadLimits
from PIL import Image

from icthp_core.evaluation.stats import win_rate


def _img(path: Path, color=(255, 0, 0), size=(16, 12)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def test_rank_and_winners():
    assert ranking.rank([0.1, 0.5, 0.5, float("nan"), 0.2]) == [4, 1, 1, None, 3]
    assert ranking.winners([0.1, 0.5, 0.5]) == [1, 2]
    assert ranking.winners([float("nan")]) == []
    assert ranking.rank_scores({"hp": [2.0, 1.0]}) == {"hp": [1, 2]}


def test_paradox_detected_only_when_clip_family_winner_disagrees():
    scores = {
        "ict_hp": [0.2, 0.9, 0.5],
        "clip": [0.3, 0.1, 0.2],
        "pickscore": [20, 22, 21],
        "aesthetic": [9, 1, 1],
    }
    p = ranking.detect_paradox(scores)
    assert [x.metric for x in p] == ["clip"]  # aesthetic is not CLIP-family; PickScore agrees
    assert p[0].metric_winners == (0,) and p[0].primary_winners == (1,)
    md = ranking.paradox_markdown(p, ["a.png", "b.png", "c.png"])
    assert "**b.png**" in md and "CLIP picks **a.png**" in md
    assert ranking.detect_paradox({"clip": [1, 2]}) == []  # no ICT-HP → nothing to compare
    assert ranking.detect_paradox({"ict_hp": [1, 2], "clip": [2, 2]}) == []  # tie includes ICT-HP winner
    assert ranking.paradox_markdown([], []) == ""


def test_comparison_table():
    df = ranking.comparison_table(["x", "y"], {"ict": [0.1, 0.3], "hp": [0.9, 0.2]})
    assert list(df.columns) == ["image", "ICT", "ICT rank", "HP", "HP rank"]
    assert df["ICT rank"].tolist() == [2, 1] and df["HP"].tolist() == [0.9, 0.2]


def test_validate_images_rejects_non_images_and_limits(tmp_path):
    imgs = [_img(tmp_path / f"{i}.png") for i in range(3)]
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    ok, rejected = uploads.validate_images([*imgs, bad], UploadLimits())
    assert ok == imgs and rejected == ["notes.png: not an image (unrecognised format)"]
    with pytest.raises(InputError, match="at least 2"):
        uploads.validate_images([imgs[0], bad], UploadLimits())
    with pytest.raises(InputError, match="at most 2"):
        uploads.validate_images(imgs, UploadLimits(max_count=2))
    big = _img(tmp_path / "big.png", size=(300, 300))
    assert "limit" in uploads.check_image(big, UploadLimits(max_bytes=100))
    # the same decode-and-limit check as scoring (icthp_core.data.images.decode_image)
    assert "300x300 = 90,000 pixels is over the limit of 1,000" in uploads.check_image(
        big, UploadLimits(max_pixels=1000)
    )
    assert uploads.unique_names(["a/x.png", "b/x.png", "y.png"]) == ["x.png", "x.png (2)", "y.png"]


def test_resolve_allowed_dir(tmp_path):
    root = tmp_path / "root"
    (root / "runA").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (root / "escape").symlink_to(tmp_path / "outside")
    assert uploads.resolve_allowed_dir("runA", [root]) == (root / "runA").resolve()
    assert uploads.resolve_allowed_dir(str(root / "runA"), [root]) == (root / "runA").resolve()
    for bad in ["../outside", str(tmp_path / "outside"), "escape", "/etc"]:
        with pytest.raises(InputError, match="outside the allowed roots"):
            uploads.resolve_allowed_dir(bad, [root])
    with pytest.raises(InputError, match="disabled"):
        uploads.resolve_allowed_dir("runA", [])
    with pytest.raises(InputError, match="not found"):
        uploads.resolve_allowed_dir("nope", [root])


def test_list_folder_skips_links_out_of_root(tmp_path):
    root = tmp_path / "root"
    _img(root / "a" / "1.png")
    (root / "a" / "1.txt").write_text("p")
    (root / "a" / "x.bin").write_bytes(b"0")
    _img(tmp_path / "secret.png")
    (root / "a" / "2.png").symlink_to(tmp_path / "secret.png")
    names = [p.name for p in uploads.list_folder(root / "a", [root])]
    assert names == ["1.png", "1.txt"]


def test_match_by_stem_with_sidecars_and_default(tmp_path):
    a = [_img(tmp_path / "A" / n) for n in ["001.png", "002.png", "003.png"]]
    b = [_img(tmp_path / "B" / n) for n in ["001.jpg", "002.png", "004.png"]]
    (tmp_path / "A" / "001.txt").write_text("a red fox\n")
    (tmp_path / "B" / "002.txt").write_text("a blue bird")
    res = matching.match_pairs([*a, tmp_path / "A" / "001.txt"], [*b, tmp_path / "B" / "002.txt"])
    assert [(p.key, p.prompt, p.a.name, p.b.name) for p in res.pairs] == [
        ("001", "a red fox", "001.png", "001.jpg"),
        ("002", "a blue bird", "002.png", "002.png"),
    ]
    assert res.unmatched_a == ["003.png"] and res.unmatched_b == ["004.png"]
    assert "2 pair(s)" in res.summary() and "003.png" in res.summary()
    with pytest.raises(InputError, match="No prompt for 001.png"):
        matching.match_pairs(a, b)
    res = matching.match_pairs(a, b, default_prompt="shared")
    assert {p.prompt for p in res.pairs} == {"shared"}
    with pytest.raises(InputError, match="No A/B pairs"):
        matching.match_pairs(a[:1], b[2:], default_prompt="x")
    with pytest.raises(InputError, match="stem"):
        matching.match_pairs([a[0], _img(tmp_path / "A2" / "001.jpg")], b, default_prompt="x")


def test_read_index_formats_and_match(tmp_path):
    a = [_img(tmp_path / "A" / n) for n in ["x.png", "y.png"]]
    b = [_img(tmp_path / "B" / n) for n in ["x.png", "y2.png"]]
    csv_p = tmp_path / "idx.csv"
    csv_p.write_text("Prompt,a,b\ncat,x.png,x.png\ndog,y.png,y2.png\nowl,z.png,z.png\n")
    js1 = tmp_path / "i1.json"
    js1.write_text(json.dumps({"cat": "x.png", "dog": {"a": "y.png", "b": "y2.png"}}))
    js2 = tmp_path / "i2.json"
    js2.write_text(json.dumps([{"prompt": "cat", "file": "sub/../x.png"}]))
    e_csv = matching.read_index(csv_p)
    assert e_csv[1] == matching.IndexEntry("dog", "y.png", "y2.png")
    assert matching.read_index(js1)[:2] == e_csv[:2]
    assert matching.read_index(js2) == [matching.IndexEntry("cat", "x.png", "x.png")]  # base names only
    res = matching.match_pairs(a, b, index=e_csv)
    assert [(p.prompt, p.a.name, p.b.name) for p in res.pairs] == [
        ("cat", "x.png", "x.png"),
        ("dog", "y.png", "y2.png"),
    ]
    assert "owl" in res.problems[0] and "A:z.png" in res.problems[0]
    bad = tmp_path / "bad.csv"
    bad.write_text("text,file\na,b\n")
    with pytest.raises(InputError, match="bad.csv.*'prompt'"):
        matching.read_index(bad)
    bad.write_text("prompt\ncat\n")
    with pytest.raises(InputError, match="bad.csv line 2"):
        matching.read_index(bad)
    bad_j = tmp_path / "bad.json"
    bad_j.write_text("[1, 2]")
    with pytest.raises(InputError, match="bad.json"):
        matching.read_index(bad_j)
    with pytest.raises(InputError, match=r"\.csv, \.tsv or \.json"):
        matching.read_index(_img(tmp_path / "i.png"))


def test_ab_frame_win_table_and_csv(tmp_path):
    pairs = [matching.Pair(f"p{i}", str(i), Path(f"A/{i}.png"), Path(f"B/{i}.png")) for i in range(4)]
    sa = {"ict_hp": [0.5, 0.6, 0.1, 0.3], "clip": [0.2, 0.2, 0.2, 0.2]}
    sb = {"ict_hp": [0.4, 0.7, 0.0, 0.3], "clip": [0.1, 0.3, 0.2, 0.1]}
    df = matching.ab_frame(pairs, sa, sb)
    assert list(df.columns) == [
        "prompt",
        "key",
        "a_file",
        "b_file",
        "A ICT-HP",
        "B ICT-HP",
        "A CLIP",
        "B CLIP",
    ]
    t = matching.win_rate_table(sa, sb)
    row = t.set_index("metric").loc["ICT-HP"]
    ref = win_rate(sa["ict_hp"], sb["ict_hp"])
    assert (row["A wins"], row["ties"], row["B wins"]) == (2, 1, 1)
    assert row["A win rate"] == pytest.approx(2.5 / 4) and row["CI low"] == pytest.approx(ref.low)
    out = csv_export.write_csv(df, tmp_path / "o" / "s.csv")
    back = pd.read_csv(out)
    assert back["prompt"].tolist() == ["p0", "p1", "p2", "p3"]
    np.testing.assert_allclose(back["A ICT-HP"], sa["ict_hp"], rtol=1e-7)
    assert not math.isnan(back["B CLIP"].sum())
