"""ICTHPLoraLoader on real ComfyUI SD3 / FLUX ModelPatchers: deltas, unpatching, strict key checks."""

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

pytestmark = [pytest.mark.comfyui]


def _file_tensors(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def _expected_deltas(path, strength, scale, key_map):
    """{(comfy key, offset|None): delta} computed straight from the file: strength * scale * B @ A."""
    tensors, _ = _file_tensors(path)
    out = {}
    for k in tensors:
        if k.endswith(".lora_A.weight"):
            mod = k[: -len(".lora_A.weight")]
            delta = strength * scale * (tensors[f"{mod}.lora_B.weight"] @ tensors[k])
            target = key_map[mod]
            key, offset = (target, None) if isinstance(target, str) else target
            out[(key, offset)] = out.get((key, offset), 0) + delta
    return out


def _check_patch_and_restore(model, patched, deltas):
    """Load the patched clone the way ComfyUI does (model management), then the original again."""
    import comfy.model_management as mm

    mm.load_models_gpu([model])
    sd0 = {k: v.clone() for k, v in model.model.state_dict().items()}
    mm.load_models_gpu([patched])
    sd1 = {k: v.clone() for k, v in patched.model.state_dict().items()}
    mm.load_models_gpu([model])  # unpatches the clone's weights
    sd2 = model.model.state_dict()
    touched = set()
    for (key, offset), delta in deltas.items():
        before, after = sd0[key], sd1[key]
        if offset is not None:
            before, after = before.narrow(*offset), after.narrow(*offset)
        torch.testing.assert_close(after - before, delta, rtol=1e-4, atol=1e-6)
        touched.add(key)
    for k in sd0:
        torch.testing.assert_close(sd2[k], sd0[k], rtol=0, atol=0)  # unpatch restores exactly
        if k not in touched:
            assert torch.equal(sd1[k], sd0[k]), f"{k} changed but the LoRA does not touch it"
    return touched


@pytest.mark.parametrize("arch", ["sd3", "flux"])
def test_lora_deltas_equal_strength_scale_BA_and_unpatch_restores(
    arch, make_sd3_model, make_flux_model, make_lora_file, tmp_path
):
    import comfy.lora

    from comfy_nodes.lora_node import apply_lora
    from icthp_core.diffusion.lora_io import read_lora

    model = make_sd3_model() if arch == "sd3" else make_flux_model()
    path = make_lora_file(tmp_path / f"{arch}.safetensors", arch, rank=4, alpha=8.0)
    new_model, new_clip = apply_lora(model, None, read_lora(path), 0.7, 1.0)
    assert new_model is not model and new_clip is None and not model.patches
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    deltas = _expected_deltas(path, 0.7, 8.0 / 4, key_map)
    touched = _check_patch_and_restore(model, new_model, deltas)
    n_modules = sum(1 for k in _file_tensors(path)[0] if k.endswith("lora_A.weight"))
    assert len(deltas) == n_modules and len(touched) > 4
    # the diffusers -> ComfyUI mapping, pinned independently of ComfyUI's key map for one module
    if arch == "sd3":
        assert key_map["transformer.transformer_blocks.0.attn.to_k"] == (
            "diffusion_model.joint_blocks.0.x_block.attn.qkv.weight",
            (0, 128, 128),
        )
    else:
        assert key_map["transformer.single_transformer_blocks.0.proj_mlp"] == (
            "diffusion_model.single_blocks.0.linear1.weight",
            (0, 96, 128),
        )


def test_alpha_from_tensors_metadata_or_default(make_sd3_model, make_lora_file, tmp_path):
    import comfy.lora

    from comfy_nodes.lora_node import apply_lora
    from icthp_core.diffusion.lora_io import read_lora

    model = make_sd3_model()
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    # alpha tensors win over metadata
    p1 = make_lora_file(
        tmp_path / "a.safetensors", "sd3", rank=4, alpha=2.0, alpha_tensors=True, metadata={"icthp.alpha": "16"}
    )
    new, _ = apply_lora(model, None, read_lora(p1), 1.0, 1.0)
    _check_patch_and_restore(model, new, _expected_deltas(p1, 1.0, 2.0 / 4, key_map))
    # no alpha anywhere: scale 1 (alpha = rank), as diffusers loads such a file
    p2 = make_lora_file(
        tmp_path / "b.safetensors",
        "sd3",
        rank=4,
        alpha=2.0,
        metadata={"icthp.alpha": None, "lora_adapter_metadata": None},
    )
    lora = read_lora(p2)
    assert {m.scale for m in lora.modules.values()} == {1.0}
    new, _ = apply_lora(model, None, lora, 1.0, 1.0)
    _check_patch_and_restore(model, new, _expected_deltas(p2, 1.0, 1.0, key_map))


def test_flux_lora_on_sd3_fails_listing_keys(make_sd3_model, make_flux_model, make_lora_file, tmp_path):
    from comfy_nodes.lora_node import apply_lora
    from icthp_core.diffusion.lora_io import read_lora

    flux_lora = make_lora_file(tmp_path / "f.safetensors", "flux")
    with pytest.raises(ValueError, match="trained for flux .* MODEL is sd3"):
        apply_lora(make_sd3_model(), None, read_lora(flux_lora), 1.0, 1.0)
    no_meta = make_lora_file(tmp_path / "g.safetensors", "flux", metadata={"icthp.base_arch": None})
    with pytest.raises(ValueError, match=r"modules match no weight of the sd3 MODEL: transformer\.single_"):
        apply_lora(make_sd3_model(), None, read_lora(no_meta), 1.0, 1.0)
    sd3_lora = make_lora_file(tmp_path / "s.safetensors", "sd3", metadata={"icthp.base_arch": None})
    with pytest.raises(ValueError, match="match no weight of the flux MODEL"):
        apply_lora(make_flux_model(), None, read_lora(sd3_lora), 1.0, 1.0)


def test_text_encoder_weights_need_clip(make_sd3_model, make_lora_file, tmp_path):
    from comfy_nodes.lora_node import apply_lora
    from icthp_core.diffusion.lora_io import read_lora

    path = make_lora_file(tmp_path / "t.safetensors", "sd3")
    tensors, meta = _file_tensors(path)
    tensors["text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight"] = torch.zeros(4, 32)
    tensors["text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight"] = torch.zeros(32, 4)
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(ValueError, match="text-encoder weights .*connect the CLIP"):
        apply_lora(make_sd3_model(), None, read_lora(path), 1.0, 1.0)


def test_lora_io_rejects_bad_files(make_lora_file, tmp_path):
    from icthp_core.diffusion.lora_io import LoraFormatError, describe, read_lora

    good = make_lora_file(tmp_path / "ok.safetensors", "sd3", rank=4)
    text = describe(read_lora(good))
    assert "reward: ict_hp" in text and "steps: 123" in text and "base_arch: sd3" in text and "rank [4]" in text
    tensors, meta = _file_tensors(good)
    with pytest.raises(LoraFormatError, match="icthp.rank=8"):
        save_file(tensors, str(tmp_path / "r.safetensors"), metadata={**meta, "icthp.rank": "8"})
        read_lora(tmp_path / "r.safetensors")
    a_key = next(k for k in tensors if k.endswith("lora_A.weight"))
    broken = {k: v for k, v in tensors.items() if k != a_key}
    save_file(broken, str(tmp_path / "u.safetensors"), metadata=meta)
    with pytest.raises(LoraFormatError, match="has no lora_A.weight"):
        read_lora(tmp_path / "u.safetensors")
    save_file({**tensors, "unet.foo.weight": torch.zeros(1)}, str(tmp_path / "k.safetensors"), metadata=meta)
    with pytest.raises(LoraFormatError, match="not diffusers LoRA keys"):
        read_lora(tmp_path / "k.safetensors")
    with pytest.raises(FileNotFoundError):
        read_lora(tmp_path / "missing.safetensors")


def test_lora_node_execute_shows_metadata(comfy_root, make_sd3_model, make_lora_file, tmp_path):
    import folder_paths

    from comfy_nodes.lora_node import ICTHPLoraLoader

    make_lora_file(tmp_path / "loras" / "icthp_sd3.safetensors", "sd3")
    folder_paths.add_model_folder_path("loras", str(tmp_path / "loras"))
    model = make_sd3_model()
    out = ICTHPLoraLoader.execute(
        model=model, lora_name="icthp_sd3.safetensors", strength_model=0.5, strength_clip=1.0, clip=None
    )
    new_model, clip, info = out.result
    assert new_model is not model and clip is None and len(new_model.patches) > 0
    assert "base_model: tiny-sd3" in info and "reward: ict_hp" in info and "steps: 123" in info
    assert out.ui.as_dict()["text"] == (info,)
    fp = ICTHPLoraLoader.fingerprint_inputs(lora_name="icthp_sd3.safetensors", strength_model=0.5)
    make_lora_file(tmp_path / "loras" / "icthp_sd3.safetensors", "sd3", seed=1)  # retrained: new file
    assert ICTHPLoraLoader.fingerprint_inputs(lora_name="icthp_sd3.safetensors", strength_model=0.5) != fp
    with pytest.raises(FileNotFoundError, match="not found in models/loras"):
        ICTHPLoraLoader.execute(model=model, lora_name="nope.safetensors")


def test_text_encoder_lora_patches_the_clip(make_sd3_model, make_sd2_clip, make_lora_file, tmp_path):
    import comfy.lora

    from comfy_nodes.lora_node import apply_lora
    from icthp_core.diffusion.lora_io import read_lora

    path = make_lora_file(tmp_path / "te.safetensors", "sd3", rank=4, alpha=8.0)
    tensors, meta = _file_tensors(path)
    g = torch.Generator().manual_seed(1)
    for layer in range(3):
        for proj in ("q_proj", "v_proj"):
            mod = f"text_encoder.text_model.encoder.layers.{layer}.self_attn.{proj}"
            tensors[f"{mod}.lora_A.weight"] = torch.randn(4, 32, generator=g) * 0.1
            tensors[f"{mod}.lora_B.weight"] = torch.randn(32, 4, generator=g) * 0.1
    save_file(tensors, str(path), metadata=meta)
    clip = make_sd2_clip()
    model = make_sd3_model()
    new_model, new_clip = apply_lora(model, clip, read_lora(path), 1.0, 0.5)
    assert new_clip is not clip and not clip.patcher.patches
    key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, {})
    te_only = tmp_path / "te_only.safetensors"
    save_file({k: v for k, v in tensors.items() if k.startswith("text_encoder.")}, str(te_only))
    deltas = _expected_deltas(te_only, 0.5, 8.0 / 4, key_map)
    assert len(deltas) == 6 and all(k.startswith("clip_h.transformer.") for k, _ in deltas)
    _check_patch_and_restore(clip.patcher, new_clip.patcher, deltas)
