"""ImageReward, BLIP ITC and BLIP ITM against independent references on tiny random models.

ImageReward: the `image-reward` PyPI package's own `ImageReward` class (tiny ViT, tiny med_config, same random
weights saved in its key names), on identical PIL images. ITC/ITM: transformers' `BlipForImageTextRetrieval`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from icthp_core.checkpoints.files import save_state_dict
from icthp_core.errors import CheckpointError
from icthp_core.scoring.blip import BlipITCModel, BlipITMModel, ImageRewardModel
from icthp_core.scoring.scorer import MultiScorer
from icthp_core.testing.blip import TINY_MED, TINY_VIT, save_tiny_blip_retrieval, write_tiny_vocab
from tests.core.scoring.imagereward_reference import load_reference

PROMPTS = [
    "a tiny red dragon in a teacup",
    "A Photo of a Blue Ferrari car, high quality!",
    "cat " * 40 + "dog",  # longer than 35 tokens: truncated
]


def _images(n=3, seed=0):
    rng = np.random.default_rng(seed)
    sizes = [(227, 224), (224, 224), (224, 231)]  # crop margins 3 and 7: torchvision rounds 1.5 and 3.5 up
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes[:n]]


@pytest.fixture(scope="module")
def reference_ir(tmp_path_factory):
    """The package's ImageReward built tiny (its own classes), and a folder with its weights in the published layout."""
    mp = pytest.MonkeyPatch()
    try:
        ref = load_reference(mp)
        blip_mod = __import__("ImageReward.models.BLIP.blip", fromlist=["x"])
        pre_mod = __import__("ImageReward.models.BLIP.blip_pretrain", fromlist=["x"])
        vit_mod = __import__("ImageReward.models.BLIP.vit", fromlist=["x"])
        d = tmp_path_factory.mktemp("imagereward")
        write_tiny_vocab(d)
        (d / "med_config.json").write_text(json.dumps(TINY_MED))
        from transformers import BertTokenizer

        class LocalBert(BertTokenizer):  # its init_tokenizer asks the hub for bert-base-uncased
            @classmethod
            def from_pretrained(cls, *a, **k):
                return super().from_pretrained(str(d))

            @property
            def additional_special_tokens_ids(self):  # transformers 4 name, read by its init_tokenizer
                return self.convert_tokens_to_ids(self.extra_special_tokens)

        def tiny_vit(vit, image_size, *a, **k):
            w = TINY_VIT["hidden_size"]
            return vit_mod.VisionTransformer(
                img_size=image_size, patch_size=TINY_VIT["patch_size"], embed_dim=w, depth=2, num_heads=w // 64
            ), w

        mp.setattr(blip_mod, "BertTokenizer", LocalBert)
        mp.setattr(pre_mod, "create_vit", tiny_vit)
        torch.manual_seed(0)
        model = ref.ImageReward(med_config=str(d / "med_config.json"), device="cpu").eval()
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
        save_state_dict(model.state_dict(), d / "ImageReward.pt")
        yield model, d
    finally:
        mp.undo()


def test_imagereward_matches_the_package(reference_ir):
    ref, d = reference_ir
    ours = ImageRewardModel.from_pretrained(d, device="cpu")
    for p in PROMPTS:  # token ids: [CLS] first, 35 tokens, [DEC]/[ENC] known to the vocabulary
        want = ref.blip.tokenizer(p, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
        got = ours.tokenize([p])
        assert torch.equal(got[0, 0], want.input_ids[0]) and torch.equal(got[0, 1], want.attention_mask[0])
    assert ours.tokenizer.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [
        TINY_MED["vocab_size"] - 2,
        TINY_MED["vocab_size"] - 1,
    ]
    scorer = MultiScorer(["imagereward"], models={"imagereward": ours}, device="cpu")
    images = _images()
    with torch.no_grad():
        want = torch.tensor([ref.score(p, im) for p, im in zip(PROMPTS, images, strict=True)])
    got = scorer.score(images, PROMPTS, batch_size=2)["imagereward"]
    assert (got - want).abs().max().item() <= 1e-5, (got, want)
    assert want.std() > 1e-3  # the scores differ: the comparison is not trivial


def test_imagereward_differentiable_path_matches_score_gard(reference_ir):
    ref, d = reference_ir
    scorer = MultiScorer(["imagereward"], {"imagereward": str(d)}, device="cpu")
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(3), requires_grad=True)
    r = scorer.reward(x, PROMPTS[:2])
    r.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    tokens = scorer.models["imagereward"].tokenize(PROMPTS[:2])
    mean = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
    std = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)
    with torch.no_grad():
        want = ref.score_gard(tokens[:, 0], tokens[:, 1], (x - mean) / std).squeeze(-1)
    torch.testing.assert_close(r.detach(), want, atol=1e-5, rtol=0)


def test_imagereward_strict_keys(reference_ir, tmp_path):
    _, d = reference_ir
    sd = torch.load(d / "ImageReward.pt", weights_only=True)
    for name in ("med_config.json", "vocab.txt"):
        (tmp_path / name).write_bytes((d / name).read_bytes())
    broken = dict(sd)
    broken.pop("blip.text_encoder.encoder.layer.0.crossattention.self.key.weight")
    save_state_dict(broken, tmp_path / "ImageReward.pt")
    with pytest.raises(CheckpointError, match="missing keys.*crossattention.self.key.weight"):
        ImageRewardModel.from_pretrained(tmp_path)
    extra = {**sd, "blip.itm_head.weight": torch.zeros(2, 768)}
    save_state_dict(extra, tmp_path / "ImageReward.pt")
    with pytest.raises(CheckpointError, match=r"unexpected ImageReward keys \['blip.itm_head.weight'\]"):
        ImageRewardModel.from_pretrained(tmp_path)


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    return save_tiny_blip_retrieval(tmp_path_factory.mktemp("blip"), seed=0)


def test_blip_itc_itm_match_transformers(blip_dir):
    from transformers import BlipForImageTextRetrieval, BlipImageProcessor

    ref = BlipForImageTextRetrieval.from_pretrained(blip_dir).eval()
    images = _images()
    pixels = BlipImageProcessor(size={"height": 384, "width": 384})(images, return_tensors="pt")["pixel_values"]
    itc, itm = BlipITCModel.from_pretrained(blip_dir), BlipITMModel.from_pretrained(blip_dir)
    scorer = MultiScorer(["blip_itc", "blip_itm"], models={"blip_itc": itc, "blip_itm": itm}, device="cpu")
    ours_pixels = scorer.preprocess(images)["blip"]
    assert (ours_pixels - pixels).abs().max() < 0.02  # PIL bicubic both; the processor rounds to uint8 first
    got = scorer.score_pixels({"blip": pixels}, PROMPTS)
    tokens = itc.tokenize(PROMPTS)
    assert (tokens[:, 0, 0] == itc.tokenizer.cls_token_id).all()
    enc = itm.tokenize(PROMPTS)
    assert (enc[:, 0, 0] == itm.tokenizer.convert_tokens_to_ids("[ENC]")).all()
    with torch.no_grad():
        sim = ref(tokens[:, 0], pixels, use_itm_head=False, attention_mask=tokens[:, 1]).itm_score
        logits = ref(enc[:, 0], pixels, use_itm_head=True, attention_mask=enc[:, 1]).itm_score
    torch.testing.assert_close(got["blip_itc"], sim.diagonal(), atol=1e-5, rtol=0)
    torch.testing.assert_close(got["blip_itm"], logits.softmax(-1)[:, 1], atol=1e-5, rtol=0)
    assert got["blip_itc"].std() > 1e-4 and got["blip_itm"].std() > 1e-4


def test_blip_itm_cls_variant_matches_the_processor_path(blip_dir):
    """`blip_itm_cls`: [CLS] first, as transformers' BlipProcessor tokenizes (and BLIP's blip_itm.py); the reference
    is the processor's own ids and pixels into `BlipForImageTextRetrieval`. `blip_itm` ([ENC] first) differs."""
    from transformers import BertTokenizer, BlipForImageTextRetrieval, BlipImageProcessor, BlipProcessor

    ref = BlipForImageTextRetrieval.from_pretrained(blip_dir).eval()
    proc = BlipProcessor(
        BlipImageProcessor(size={"height": 384, "width": 384}), BertTokenizer.from_pretrained(blip_dir)
    )
    images = _images()
    enc = proc(images=images, text=PROMPTS, padding="max_length", max_length=35, truncation=True, return_tensors="pt")
    scorer = MultiScorer(["blip_itm", "blip_itm_cls"], {"blip_itm": str(blip_dir), "blip_itm_cls": str(blip_dir)})
    ours = scorer.models["blip_itm_cls"].tokenize(PROMPTS)
    assert torch.equal(ours[:, 0], enc["input_ids"]) and torch.equal(ours[:, 1], enc["attention_mask"])
    got = scorer.score_pixels({"blip": enc["pixel_values"]}, PROMPTS)
    with torch.no_grad():
        want = ref(enc["input_ids"], enc["pixel_values"], attention_mask=enc["attention_mask"]).itm_score
    torch.testing.assert_close(got["blip_itm_cls"], want.softmax(-1)[:, 1], atol=1e-5, rtol=0)
    assert (got["blip_itm_cls"] - got["blip_itm"]).abs().max() > 1e-4  # the two variants are different numbers


@pytest.fixture(scope="module")
def reference_blip_pretrain(reference_ir, tmp_path_factory):
    """ImageReward's own `BLIPScore` (its BLIP_Pretrain; the tiny ViT and local tokenizer patched in by
    `reference_ir`) and its weights as BLIP's `model_large.pth` (`{"model": state dict}` with momentum / queue / ITM
    tensors, which a real pretrain checkpoint also holds and the score does not use)."""
    score_mod = __import__("ImageReward.models.BLIPScore", fromlist=["x"])
    d = tmp_path_factory.mktemp("blip_pretrain")
    write_tiny_vocab(d)
    (d / "med_config.json").write_text(json.dumps(TINY_MED))
    torch.manual_seed(0)
    model = score_mod.BLIPScore(med_config=str(d / "med_config.json"), device="cpu").eval()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    sd = {k: v.clone() for k, v in model.blip.state_dict().items()}
    sd["itm_head.weight"] = torch.zeros(2, TINY_MED["hidden_size"])
    sd["image_queue"] = torch.zeros(256, 8)
    sd["visual_encoder_m.cls_token"] = torch.zeros(1, 1, TINY_VIT["hidden_size"])
    torch.save({"model": sd}, d / "model_large.pth")
    return model, d


def test_blip_pretrain_itc_matches_imagereward_blipscore(reference_blip_pretrain, tmp_path):
    ref, d = reference_blip_pretrain
    images = _images()
    paths = []
    for i, im in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        im.save(paths[-1])
    with torch.no_grad():
        want = torch.tensor([ref.score(p, str(f)) for p, f in zip(PROMPTS, paths, strict=True)])
    scorer = MultiScorer(["blip_pretrain_itc"], {"blip_pretrain_itc": str(d)}, device="cpu")
    got = scorer.score([str(f) for f in paths], PROMPTS, batch_size=2)["blip_pretrain_itc"]
    assert (got - want).abs().max().item() <= 1e-5, (got, want)
    assert want.std() > 1e-3
    # the file alone (no med_config.json / vocab.txt beside it) works: config from the shapes, vocabulary given
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "model_large.pth").write_bytes((d / "model_large.pth").read_bytes())
    from icthp_core.scoring.blip import BlipPretrainITCModel, blip_tokenizer

    m = BlipPretrainITCModel.from_pretrained(alone / "model_large.pth", tokenizer=blip_tokenizer(d))
    got2 = MultiScorer(["blip_pretrain_itc"], models={"blip_pretrain_itc": m}).score([str(f) for f in paths], PROMPTS)
    torch.testing.assert_close(got2["blip_pretrain_itc"], got, atol=1e-6, rtol=0)


def test_blip_pretrain_itc_needs_a_source_and_strict_keys(reference_blip_pretrain, tmp_path):
    from icthp_core.scoring.registry import create_reward_model, parse_metrics

    assert "blip_pretrain_itc" not in parse_metrics("all")  # its weights must be given with --source
    with pytest.raises(CheckpointError, match="--source blip_pretrain_itc=PATH"):
        create_reward_model("blip_pretrain_itc")
    _, d = reference_blip_pretrain
    sd = torch.load(d / "model_large.pth", weights_only=True)["model"]
    torch.save({"model": {**sd, "mystery.weight": torch.zeros(1)}}, tmp_path / "model_large.pth")
    with pytest.raises(CheckpointError, match=r"unexpected BLIP pretrain keys \['mystery.weight'\]"):
        create_reward_model("blip_pretrain_itc", tmp_path)
