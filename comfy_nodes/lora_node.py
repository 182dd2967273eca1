"""ICTHPLoraLoader: applies a diffusers-format SD3/SD3.5/FLUX LoRA trained by this project, strictly."""

from __future__ import annotations

import os

import comfy.lora
import comfy.model_base
from comfy_api.latest import io, ui

from icthp_core.diffusion.lora_io import LoraFile, describe, read_lora, to_comfy_state_dict

from .cache import LRUCache
from .paths import lora_fingerprint, lora_options, lora_path

_MAX_LISTED = 8
_cache: LRUCache[LoraFile] = LRUCache(4)


def _read_cached(path: str) -> LoraFile:
    key = (path, os.path.getmtime(path), os.path.getsize(path))
    return _cache.get_or_build(key, lambda: read_lora(path))


def model_arch(model) -> str:
    """``sd3`` / ``flux`` / the ComfyUI model class name of a MODEL (ModelPatcher)."""
    base = model.model
    if isinstance(base, comfy.model_base.SD3):
        return "sd3"
    if isinstance(base, comfy.model_base.Flux):
        return "flux"
    return type(base).__name__


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _MAX_LISTED else "")


def _target_shape(model_sd: dict, target) -> tuple[str, tuple[int, ...]] | None:
    key, offset = (target, None) if isinstance(target, str) else (target[0], target[1])
    if key not in model_sd:
        return None
    shape = list(model_sd[key].shape)
    if offset is not None:
        shape[offset[0]] = offset[2]
    return key, tuple(shape)


def build_patches(lora: LoraFile, component: str, key_map: dict, model_sd: dict, what: str) -> dict:
    """ComfyUI patches for one component of ``lora``; raises listing every unmatched or mis-shaped module."""
    mods = lora.component_modules(component)
    unmatched = sorted(n for n in mods if n not in key_map)
    if unmatched:
        raise ValueError(
            f"LoRA {lora.path.name}: {len(unmatched)} of {len(mods)} {component} modules match no "
            f"weight of the {what}: {_listing(unmatched)}. The LoRA was trained for "
            f"{lora.base_arch or 'another model'} (metadata icthp.base_arch)."
        )
    bad = []
    for name, m in mods.items():
        found = _target_shape(model_sd, key_map[name])
        want = (m.up.shape[0], m.down.shape[1])
        if found is None or found[1][:2] != want or any(d != 1 for d in found[1][2:]):
            bad.append(f"{name} {want} -> {found[0] if found else key_map[name]} {found[1] if found else 'missing'}")
    if bad:
        raise ValueError(
            f"LoRA {lora.path.name}: {len(bad)} {component} modules do not fit the {what}'s "
            f"weight shapes: {_listing(bad)}"
        )
    sd = to_comfy_state_dict(lora, component)
    patches = comfy.lora.load_lora(sd, {n: key_map[n] for n in mods}, log_missing=False)
    if len(patches) != len(mods):
        raise RuntimeError(f"LoRA {lora.path.name}: ComfyUI built {len(patches)} patches for {len(mods)} modules")
    return patches


def apply_lora(model, clip, lora: LoraFile, strength_model: float, strength_clip: float):
    """Patched clones of ``model`` (and ``clip``); every LoRA module must land on a weight."""
    arch = model_arch(model)
    if lora.base_arch and lora.base_arch != arch:
        raise ValueError(
            f"LoRA {lora.path.name} was trained for {lora.base_arch} (metadata icthp.base_arch) but the MODEL is {arch}"
        )
    new_model, new_clip = model, clip
    if "transformer" in lora.components:
        key_map = comfy.lora.model_lora_keys_unet(model.model, {})
        patches = build_patches(lora, "transformer", key_map, model.model.state_dict(), f"{arch} MODEL")
        if strength_model != 0:
            new_model = model.clone()
            applied = set(new_model.add_patches(patches, strength_model))
            missed = [str(k) for k in patches if k not in applied]
            if missed:
                raise RuntimeError(f"LoRA {lora.path.name}: weights not patched in the MODEL: {_listing(missed)}")
    te = [c for c in lora.components if c != "transformer"]
    if te:
        if clip is None:
            raise ValueError(
                f"LoRA {lora.path.name} holds text-encoder weights ({', '.join(te)}): connect the CLIP input"
            )
        key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, {})
        clip_sd = clip.cond_stage_model.state_dict()
        patches = {}
        for comp in te:
            patches.update(build_patches(lora, comp, key_map, clip_sd, "CLIP"))
        if strength_clip != 0:
            new_clip = clip.clone()
            applied = set(new_clip.add_patches(patches, strength_clip))
            missed = [str(k) for k in patches if k not in applied]
            if missed:
                raise RuntimeError(f"LoRA {lora.path.name}: weights not patched in the CLIP: {_listing(missed)}")
    return new_model, new_clip


class ICTHPLoraLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ICTHPLoraLoader",
            display_name="ICT-HP LoRA Loader (SD3/FLUX, strict)",
            category="ICT-HP",
            description="Applies a diffusers-format LoRA (SD3/SD3.5 or FLUX) from models/loras. Fails when "
            "any key does not match the model, honours alpha/rank, and shows the file's metadata.",
            is_output_node=True,
            inputs=[
                io.Model.Input("model"),
                io.Combo.Input("lora_name", options=lora_options()),
                io.Float.Input("strength_model", default=1.0, min=-10.0, max=10.0, step=0.01),
                io.Float.Input("strength_clip", default=1.0, min=-10.0, max=10.0, step=0.01),
                io.Clip.Input("clip", optional=True, tooltip="needed when the LoRA holds text-encoder weights"),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL"),
                io.Clip.Output(display_name="CLIP"),
                io.String.Output(display_name="info"),
            ],
        )

    @classmethod
    def execute(cls, model, lora_name, strength_model=1.0, strength_clip=1.0, clip=None) -> io.NodeOutput:
        lora = _read_cached(lora_path(lora_name))
        new_model, new_clip = apply_lora(model, clip, lora, strength_model, strength_clip)
        info = describe(lora) + f"\nstrength: model {strength_model}, clip {strength_clip}"
        return io.NodeOutput(new_model, new_clip, info, ui=ui.PreviewText(info))

    @classmethod
    def fingerprint_inputs(cls, lora_name, **kwargs):
        return (lora_fingerprint(lora_name), kwargs.get("strength_model"), kwargs.get("strength_clip"))
