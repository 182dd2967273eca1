"""The reward-training option `tokenizer: open_clip | hf`: it selects how the stages tokenise prompts (data sets
and ICT labels), the recipes set it (paper: open_clip, upstream: hf as upstream's trainer), bad values fail in
one line, and ICT labels built with one flavour are not reused for the other."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from icthp_cli.main import main as icthp_main
from icthp_cli.options import cli_config
from icthp_core.checkpoints.loading import load_clip
from icthp_core.data.datasets import load_triplets, open_image
from icthp_core.data.preprocess import preprocess_pil
from icthp_core.errors import ConfigError
from icthp_core.scoring.models import ICTModel
from icthp_core.scoring.text import TOKENIZERS, tokenize, tokenize_hf
from icthp_core.training.common import image_size
from icthp_core.training.hp import HPStage
from icthp_core.training.hp_config import HPConfig
from icthp_core.training.ict import ICTStage, build_labels
from icthp_core.training.ict_config import ICTConfig
from icthp_core.training.labels import ict_labels
from tests.core.training.conftest import REPO

EASY = ["a “red” square &amp; a circle", "ＲＥＤ ｓｑｕａｒｅ", "salt &amp; pepper"]
REFINE = ["a ‘red’ square, &lt;sharp&gt;", "a red square, bright", "salt & pepper, “detailed”"]


@pytest.fixture()
def tricky(synth, tmp_path):
    """Triplet and pair tables of the synthetic images with prompts the two tokenizers split differently."""
    recs, _ = load_triplets(synth["train"])
    rows = [
        {"easy_prompt": e, "refine_prompt": r, **{f"image_{k + 1}": str(x) for k, x in enumerate(rec.images)}}
        for e, r, rec in zip(EASY, REFINE, recs, strict=False)
    ]
    pairs = [
        {"prompt": r["easy_prompt"], "image_0": r["image_1"], "image_1": r["image_2"], "label_0": 1.0} for r in rows
    ]
    unlabelled = tmp_path / "triplets.jsonl"
    unlabelled.write_text("".join(json.dumps(r) + "\n" for r in rows))
    labelled = tmp_path / "labelled.jsonl"
    labels = {"E1": 0.2, "E2": 0.5, "R1": 0.1, "R2": 0.4}
    labelled.write_text("".join(json.dumps({**r, **labels}) + "\n" for r in rows))
    pair_table = tmp_path / "pairs.jsonl"
    pair_table.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return {"triplets": unlabelled, "labelled": labelled, "pairs": pair_table, "rows": rows}


def _tokens(ds, key: str) -> torch.Tensor:
    return torch.stack([ds[i][key] for i in range(len(ds))])


def test_flavours_differ_on_these_prompts():
    assert not torch.equal(tokenize(EASY), tokenize_hf(EASY))
    for e in EASY:  # every prompt on its own
        assert not torch.equal(tokenize([e]), tokenize_hf([e])), e


@pytest.mark.parametrize(("name", "reference"), [("hf", tokenize_hf), ("open_clip", tokenize)])
def test_option_selects_the_stage_tokenizer(name, reference, tricky, tmp_path):
    """ICT and HP data sets (triplets, and HP's pairs) carry the ids of the configured flavour."""
    common = dict(output_dir=str(tmp_path / "run"), tokenizer=name)
    ict = ICTStage(ICTConfig(train_data=str(tricky["labelled"]), val_data=str(tricky["triplets"]), **common))
    ict.size = 32
    for ds in (ict.train_dataset(None), ict.val_dataset(None)):
        assert torch.equal(_tokens(ds, "easy_tokens"), reference(EASY))
        assert torch.equal(_tokens(ds, "ref_tokens"), reference(REFINE))
    hp = HPStage(HPConfig(train_data=str(tricky["triplets"]), val_data=str(tricky["pairs"]), **common))
    hp.size = 32
    assert torch.equal(_tokens(hp.train_dataset(None), "easy_tokens"), reference(EASY))
    assert torch.equal(_tokens(hp.val_dataset(None), "tokens"), reference(EASY))


def test_recipes_set_the_tokenizer():
    for cls in (ICTConfig, HPConfig):
        # the light config names the flavours itself (no torch for `--help`); they must be scoring's flavours
        assert cls.CHOICES["tokenizer"] == tuple(TOKENIZERS)
        assert cli_config(cls, None, []).tokenizer == "open_clip"  # no recipe: inference's tokenizer
        assert cli_config(cls, None, ["recipe=paper"]).tokenizer == "open_clip"
        assert cli_config(cls, None, ["recipe=upstream"]).tokenizer == "hf"
        assert cli_config(cls, None, ["recipe=upstream", "tokenizer=open_clip"]).tokenizer == "open_clip"
        assert cli_config(cls, None, ["recipe=paper", "tokenizer=hf"]).tokenizer == "hf"
    configs = REPO / "train" / "configs"
    assert cli_config(ICTConfig, configs / "ict_upstream.yaml").tokenizer == "hf"
    assert cli_config(HPConfig, configs / "hp_upstream.yaml").tokenizer == "hf"
    assert cli_config(ICTConfig, configs / "ict_paper.yaml").tokenizer == "open_clip"
    assert cli_config(HPConfig, configs / "hp_paper.yaml").tokenizer == "open_clip"


def test_bad_tokenizer_is_a_one_line_config_error(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"command line: option tokenizer='bpe': expected one of open_clip, hf"):
        cli_config(ICTConfig, None, ["tokenizer=bpe"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("recipe: upstream\ntokenizer: HF\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: option tokenizer='HF'"):
        cli_config(HPConfig, bad)
    with pytest.raises(ValueError, match="tokenizer 'bpe'"):  # a config built in code fails before any model loads
        ICTStage(ICTConfig(tokenizer="bpe"))
    assert icthp_main(["train-ict", "tokenizer=bpe"]) == 2
    err = capsys.readouterr().err.strip()
    assert "tokenizer='bpe'" in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_ict_labels_use_the_configured_tokenizer(tiny_base, tricky):
    """build_labels with `hf` = eq. 2-8 on transformers' CLIP fed tokenize_hf ids (and differs from open_clip)."""
    from transformers import CLIPModel

    recs, _ = load_triplets(tricky["triplets"])
    model = ICTModel(load_clip(tiny_base)).eval()
    got = {
        t: build_labels(recs, model, image_size(model.clip.visual), 0.05, 10.0, tokenizer=t)[0]
        for t in ("hf", "open_clip")
    }
    hf = CLIPModel.from_pretrained(tiny_base).eval()
    rows = tricky["rows"]
    with torch.no_grad():
        px = {k: torch.stack([preprocess_pil(open_image(r[f"image_{k}"])) for r in rows]) for k in (1, 2)}
        img = {k: torch.nn.functional.normalize(hf.get_image_features(pixel_values=v).pooler_output, dim=-1)
               for k, v in px.items()}  # fmt: skip
        te, tr = (
            torch.nn.functional.normalize(hf.get_text_features(input_ids=tokenize_hf(p)).pooler_output, dim=-1)
            for p in (EASY, REFINE)
        )
    want = ict_labels((img[1] * te).sum(-1), (img[2] * te).sum(-1), (te * tr).sum(-1), 0.05)
    for k in ("E1", "E2", "R1", "R2"):
        torch.testing.assert_close(torch.tensor([r.labels[k] for r in got["hf"]]), getattr(want, k), atol=1e-4, rtol=0)
    assert any(a.labels != b.labels for a, b in zip(got["hf"], got["open_clip"], strict=True))
    # the build-labels command takes the same choice and records it
    out = tricky["triplets"].parent / "cli_labels.jsonl"
    args = ["build-labels", "--data", str(tricky["triplets"]), "-o", str(out), "--clip", str(tiny_base)]
    assert icthp_main([*args, "--theta", "0.05", "--tokenizer", "hf", "--device", "cpu"]) == 0
    assert json.loads(Path(f"{out}.meta.json").read_text())["tokenizer"] == "hf"
    cli, _ = load_triplets(out, require_labels=True)
    for a, b in zip(cli, got["hf"], strict=True):
        assert a.labels == pytest.approx(b.labels, abs=1e-6)
    with pytest.raises(SystemExit):
        icthp_main([*args, "--tokenizer", "bpe"])


def test_switching_the_tokenizer_invalidates_saved_labels(tmp_path):
    target, meta = tmp_path / "train_labeled.jsonl", tmp_path / "labels_meta.json"
    target.write_text("{}\n")
    wanted = {"theta_given": None, "label_model": "m", "tokenizer": "open_clip"}
    meta.write_text(json.dumps({"theta": 0.3, **wanted}))
    assert ICTStage._labels_reusable(target, meta, wanted)
    assert not ICTStage._labels_reusable(target, meta, {**wanted, "tokenizer": "hf"})
    meta.write_text(json.dumps({"theta": 0.3, "theta_given": None, "label_model": "m"}))  # before the key existed
    assert ICTStage._labels_reusable(target, meta, wanted)  # those were open_clip labels
    assert not ICTStage._labels_reusable(target, meta, {**wanted, "tokenizer": "hf"})
