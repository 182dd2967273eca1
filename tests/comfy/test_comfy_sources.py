"""Model sources from workflows: only inside ComfyUI's model folders unless allowed; shallow fingerprints."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.comfyui]


def test_sources_outside_model_folders_are_refused(icthp_folder, tmp_path, monkeypatch):
    from comfy_nodes.paths import ALLOW_ANY_PATH_ENV, free_text_source, resolve_source, source_fingerprint

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    monkeypatch.delenv(ALLOW_ANY_PATH_ENV, raising=False)
    with pytest.raises(PermissionError, match="outside ComfyUI's model folders") as e:
        resolve_source(str(outside))
    assert str(tmp_path) not in str(e.value)  # the message names the folder, not the server layout
    with pytest.raises(PermissionError, match=ALLOW_ANY_PATH_ENV):
        free_text_source(f"  {outside}  ")
    with pytest.raises(PermissionError):
        free_text_source("../../etc")
    assert free_text_source("openai/clip-vit-base-patch32") == "openai/clip-vit-base-patch32"  # a hub id
    assert resolve_source("ict") == str(icthp_folder / "ict")  # the model folder itself is fine
    monkeypatch.setenv(ALLOW_ANY_PATH_ENV, "1")
    assert resolve_source(str(outside)) == str(outside)
    assert source_fingerprint("ict")[1]  # files of the folder, read without walking a whole tree


def test_baseline_source_field_is_checked(icthp_folder, tmp_path, monkeypatch):
    from comfy_nodes.models import load_reward_model
    from comfy_nodes.paths import ALLOW_ANY_PATH_ENV

    monkeypatch.delenv(ALLOW_ANY_PATH_ENV, raising=False)
    with pytest.raises(PermissionError, match="outside ComfyUI's model folders"):
        load_reward_model("clip", "ict", "hp", baseline_source=str(tmp_path), device="cpu")


def test_fingerprint_does_not_walk_deep_trees(tmp_path):
    from comfy_nodes.paths import _shallow_stat

    deep = tmp_path / "m"
    (deep / "a" / "b" / "c").mkdir(parents=True)
    (deep / "config.json").write_text("{}")
    (deep / "a" / "w.bin").write_bytes(b"x")
    (deep / "a" / "b" / "c" / "ignored.bin").write_bytes(b"x")
    names = [n for n, *_ in _shallow_stat(deep)]
    assert names == ["config.json", "a/w.bin"]


def test_dropdown_lists_every_layout_the_core_loads(tmp_path):
    from comfy_nodes.paths import is_hp_dir, is_ict_dir
    from icthp_core.checkpoints.config import CLIP_WEIGHT_NAMES, HP_BACKBONE_NAMES, HP_HEAD_NAMES

    for name in CLIP_WEIGHT_NAMES:  # one list of weight-file names: the core's
        d = tmp_path / name
        d.mkdir()
        (d / name).write_bytes(b"x")
        assert is_ict_dir(d)
    hp = tmp_path / "hp"
    (hp / "hp_backbone").mkdir(parents=True)
    (hp / "hp_scorer").mkdir()
    assert not is_hp_dir(hp)  # empty folders are not a model
    (hp / HP_BACKBONE_NAMES[-1]).write_bytes(b"x")
    (hp / HP_HEAD_NAMES[0]).write_bytes(b"x")
    assert is_hp_dir(hp)
