"""Strict, safe loading: wrong or truncated files never score silently; errors name the file and keys."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from icthp_core import CheckpointError, WeightsNotFoundError, load_scorer
from icthp_core.checkpoints.convert import hf_to_open_clip, open_clip_to_hf
from icthp_core.checkpoints.files import load_state_dict, save_state_dict
from icthp_core.checkpoints.hub import resolve_file
from icthp_core.scoring.models import HPModel, ICTModel
from icthp_core.testing.tiny import save_tiny_clip, tiny_hf_clip


def _copy_ict(src, dst, edit):
    dst.mkdir(parents=True)
    (dst / "config.json").write_text((src / "config.json").read_text())
    sd = torch.load(src / "pytorch_model.bin", weights_only=True)
    edit(sd)
    torch.save(sd, dst / "pytorch_model.bin")
    return dst


def test_missing_key_is_an_error_naming_file_and_key(tiny_ict, tmp_path):
    bad = _copy_ict(tiny_ict, tmp_path / "bad", lambda sd: sd.pop("vision_model.post_layernorm.weight"))
    # named as written in the user's (HF-layout) file, not by the internal open_clip name visual.ln_post.weight
    with pytest.raises(
        CheckpointError, match=r"pytorch_model\.bin.*missing keys: vision_model\.post_layernorm\.weight"
    ):
        ICTModel.from_pretrained(bad, device="cpu")


def test_unexpected_key_is_an_error(tiny_ict, tmp_path):
    bad = _copy_ict(tiny_ict, tmp_path / "bad", lambda sd: sd.__setitem__("vision_model.extra.weight", torch.ones(1)))
    with pytest.raises(CheckpointError, match=r"vision_model\.extra\.weight"):
        ICTModel.from_pretrained(bad, device="cpu")


def test_wrong_shape_is_an_error(tiny_ict, tmp_path):
    def edit(sd):
        sd["visual_projection.weight"] = torch.zeros(8, 32)

    bad = _copy_ict(tiny_ict, tmp_path / "bad", edit)
    with pytest.raises(CheckpointError, match="size mismatch"):
        ICTModel.from_pretrained(bad, device="cpu")


def test_position_ids_buffers_are_ignored(tiny_ict):
    sd = torch.load(tiny_ict / "pytorch_model.bin", weights_only=True)
    assert "text_model.embeddings.position_ids" in sd  # the fixture carries them, like transformers 4.27 did
    ICTModel.from_pretrained(tiny_ict, device="cpu")


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage"])
def test_damaged_file_is_an_error(tiny_ict, tmp_path, damage):
    dst = tmp_path / "dmg"
    dst.mkdir()
    (dst / "config.json").write_text((tiny_ict / "config.json").read_text())
    data = (tiny_ict / "pytorch_model.bin").read_bytes()
    blob = {"truncate": data[: len(data) // 2], "empty": b"", "garbage": b"not a checkpoint" * 10}[damage]
    (dst / "pytorch_model.bin").write_bytes(blob)
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin"):
        ICTModel.from_pretrained(dst, device="cpu")


def test_pickled_code_is_never_run(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pickle code ran')",))

    f = tmp_path / "evil.bin"
    with open(f, "wb") as fh:
        pickle.dump({"x": Boom()}, fh)
    with pytest.raises(CheckpointError, match="evil.bin"):
        load_state_dict(f)


def test_hp_head_with_wrong_keys_is_an_error(tiny_hp, tmp_path):
    import shutil

    dst = tmp_path / "HP"
    shutil.copytree(tiny_hp, dst)
    save_state_dict({"layers.0.weight": torch.zeros(4, 16)}, dst / "hp_scorer" / "mlp_pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"mlp_pytorch_model\.bin.*missing keys"):
        HPModel.from_pretrained(dst, device="cpu")


def test_hp_accepts_vision_only_backbone(tiny_hp, tmp_path):
    """A backbone file with only the vision tower (what our trainer writes) loads; text keys are never kept."""
    import shutil

    dst = tmp_path / "HP"
    shutil.copytree(tiny_hp, dst)
    sd = torch.load(dst / "hp_backbone/pytorch_model.bin", weights_only=True)
    sd = {k: v for k, v in sd.items() if k.startswith(("vision_model.", "visual_projection"))}
    torch.save(sd, dst / "hp_backbone/pytorch_model.bin")
    x = torch.rand(2, 3, 224, 224)
    a = load_scorer(None, tiny_hp, device="cpu").score(x)["hp"]
    b = load_scorer(None, dst, device="cpu").score(x)["hp"]
    assert torch.allclose(a, b, atol=1e-6)


def test_architecture_from_config_json(tmp_path):
    """Heads are not recoverable from shapes: config.json decides (4 heads vs 2 heads give different scores)."""
    from icthp_core.testing.tiny import tiny_clip_config

    cfg = tiny_clip_config(vision_config={"num_attention_heads": 4}, text_config={"num_attention_heads": 4})
    d = save_tiny_clip(tmp_path / "h4", seed=3, config=cfg)
    model = ICTModel.from_pretrained(d, device="cpu")
    assert model.clip.visual.transformer.resblocks[0].attn.num_heads == 4
    assert model.clip.transformer.resblocks[0].attn.num_heads == 4


def test_missing_config_defaults_to_vit_h(tiny_ict, tmp_path):
    dst = tmp_path / "nocfg"
    dst.mkdir()
    (dst / "pytorch_model.bin").write_bytes((tiny_ict / "pytorch_model.bin").read_bytes())
    with pytest.raises(CheckpointError, match="size mismatch|does not match"):
        ICTModel.from_pretrained(dst, device="cpu")  # tiny weights vs the ViT-H/14 default architecture


def test_conversion_round_trip():
    sd = {k: v for k, v in tiny_hf_clip(5).state_dict().items() if not k.endswith("position_ids")}
    oc, unknown = hf_to_open_clip(sd)
    assert not unknown
    back = open_clip_to_hf(oc)
    assert set(back) == set(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_local_path_that_does_not_exist(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="no such file or directory"):
        resolve_file(str(tmp_path / "nope" / "x"), ["pytorch_model.bin"])


def test_offline_without_weights_says_how_to_get_them(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(WeightsNotFoundError, match=r"8y/ICT.*(download|local directory)"):
        load_scorer("8y/ICT", None, device="cpu")


def test_offline_with_cached_weights_makes_no_network_call(monkeypatch, tmp_path, tiny_ict):
    """Weights in the hub cache layout + HF_HUB_OFFLINE=1: loads, and any network use would fail the test."""
    import socket

    import huggingface_hub.constants as c

    cache = tmp_path / "cache"
    snap = cache / "models--8y--ICT" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    for f in ("pytorch_model.bin", "config.json"):
        (snap / f).write_bytes((tiny_ict / f).read_bytes())
    (cache / "models--8y--ICT" / "refs").mkdir()
    (cache / "models--8y--ICT" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))

    def no_network(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    scorer = load_scorer("8y/ICT", None, device="cpu")
    assert scorer.score(torch.rand(1, 3, 224, 224), "a cat")["ict"].shape == (1,)
    assert json.loads((snap / "config.json").read_text())["projection_dim"] == 16


def test_bad_dtype_argument():
    with pytest.raises(ValueError, match="dtype='fp8'"):
        load_scorer("x/y", None, dtype="fp8")


def test_hp_from_safetensors_never_reads_the_text_tower(tmp_path, monkeypatch):
    import safetensors

    from icthp_core.testing.tiny import save_tiny_hp

    d = save_tiny_hp(tmp_path / "HP", fmt="safetensors")
    read: list[str] = []
    real_open = safetensors.safe_open

    class Spy:
        def __init__(self, *a, **k):
            self._fh = real_open(*a, **k)

        def __enter__(self):
            self._inner = self._fh.__enter__()
            return self

        def __exit__(self, *exc):
            return self._fh.__exit__(*exc)

        def keys(self):
            return self._inner.keys()

        def get_tensor(self, k):
            read.append(k)
            return self._inner.get_tensor(k)

    monkeypatch.setattr("icthp_core.checkpoints.files.safe_open", Spy)
    HPModel.from_pretrained(d, device="cpu")
    assert read and [k for k in read if not k.startswith(("vision_model.", "visual_projection", "layers."))] == []
