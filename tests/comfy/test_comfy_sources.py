"""Model sources from workflows: only inside ComfyUI's model folders unless allowed; shallow fingerprints."""

from __future__ import annotations

import pytest


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
