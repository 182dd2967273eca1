"""Fixtures for the ComfyUI node-pack tests: real ComfyUI 0.3.75 imported in-process.

The ComfyUI tree is prepared by ``tests/comfy/setup_comfyui.sh`` (run here once per session; idempotent).
Set ``ICTHP_COMFYUI_DIR`` to use an existing ComfyUI 0.3.75 tree instead.
"""

from __future__ import annotations

import copy
import importlib.machinery
import importlib.util
import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import shared_models, warm_servers
from tests.comfy.tiny_nodes import TINY_FLUX, TINY_SD3

ROOT = Path(__file__).resolve().parents[2]
SETUP = Path(__file__).with_name("setup_comfyui.sh")


def comfyui_dir() -> Path:
    env = os.environ.get("ICTHP_COMFYUI_DIR")
    if env:
        return Path(env)
    target = ROOT / ".cache" / "comfyui"
    if not (target / "comfyui_version.py").is_file():
        subprocess.run(["bash", str(SETUP)], check=True, env={**os.environ, "PYTHON": sys.executable}, timeout=900)
    return target


@pytest.fixture(scope="session")
def comfy_root() -> Path:
    """Path of the ComfyUI tree, importable (appended to sys.path), CPU mode set before model_management."""
    root = comfyui_dir()
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    if str(root) in sys.path:
        sys.path.remove(str(root))
    sys.path.insert(0, str(root))
    # pytest imports the repository root (it has an __init__.py for ComfyUI) under the checkout's folder
    # name and puts its parent on sys.path; a checkout named "comfy" would then shadow ComfyUI's ``comfy``
    # (a namespace package, which loses to any regular package of that name on sys.path).
    spec = importlib.util.find_spec("comfy") if "comfy" not in sys.modules else None
    stale = sys.modules.get("comfy")
    if (stale is not None and not str(getattr(stale, "__path__", [""])[0]).startswith(str(root))) or (
        spec is not None and spec.origin is not None
    ):
        ns = importlib.machinery.ModuleSpec("comfy", None, is_package=True)
        ns.submodule_search_locations = [str(root / "comfy")]
        sys.modules["comfy"] = importlib.util.module_from_spec(ns)
        # inspect.getmodule caches file names per module name; drop what it learnt about the shadowing module
        inspect._filesbymodname.pop("comfy", None)  # noqa: SLF001
        for f, name in list(inspect.modulesbyfile.items()):
            if name == "comfy":
                del inspect.modulesbyfile[f]
    from comfy.cli_args import args

    args.cpu = True
    import comfy.model_management  # noqa: F401  (reads args.cpu at import)

    return root


@pytest.fixture(scope="session")
def pack(comfy_root):
    """The imported ``comfy_nodes`` package."""
    import comfy_nodes

    return comfy_nodes


# ---------------------------------------------------------------------------------------------- tiny models


def _tiny_icthp_dir(config: pytest.Config) -> Path:
    def build() -> Path:
        from icthp_core.testing.tiny import save_tiny_clip, save_tiny_hp, tiny_clip_config

        root = shared_models.tmp_factory(config).mktemp("icthp_models")
        # 3 text layers: ComfyUI's SD2 CLIP reads the penultimate layer and needs more than 2
        save_tiny_clip(root / "ict", seed=0, config=tiny_clip_config(text_config={"num_hidden_layers": 3}))
        save_tiny_hp(root / "hp", seed=1)
        return root

    return shared_models.once("comfy_tiny_icthp_dir", build)


@pytest.fixture(scope="session")
def tiny_icthp_dir(request) -> Path:
    """``<dir>/ict`` and ``<dir>/hp``: tiny ICT / HP models in the published layouts (a models/icthp folder)."""
    return _tiny_icthp_dir(request.config)


@pytest.fixture(scope="session")
def icthp_folder(comfy_root, tiny_icthp_dir) -> Path:
    """The tiny models registered as a ComfyUI ``icthp`` model folder."""
    import folder_paths

    from comfy_nodes.paths import register_model_folder

    register_model_folder()
    folder_paths.add_model_folder_path("icthp", str(tiny_icthp_dir), is_default=True)
    return tiny_icthp_dir


TINY_TEXT = {
    "architectures": ["CLIPTextModel"],
    "model_type": "clip_text_model",
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "hidden_act": "gelu",
    "hidden_size": 32,
    "intermediate_size": 64,
    "layer_norm_eps": 1e-5,
    "max_position_embeddings": 77,
    "num_attention_heads": 2,
    "num_hidden_layers": 3,
    "projection_dim": 16,
    "vocab_size": 49408,
    "bos_token_id": 0,
    "eos_token_id": 49407,
    "pad_token_id": 1,
    "torch_dtype": "float32",
}


@pytest.fixture(scope="session")
def make_sd2_clip(comfy_root, tmp_path_factory):
    """Factory: a real ``comfy.sd.CLIP`` built like ComfyUI's SD2.x CLIP (``clip_h``, penultimate layer,
    SD2 tokenizer) but with a tiny text config; fp32; weights random (seed) or an HF ``text_model.*`` dict."""

    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models_base
    import torch
    from comfy.text_encoders import sd2_clip

    cfg_path = tmp_path_factory.mktemp("sd2clip") / "tiny_sd2_clip_config.json"
    cfg_path.write_text(json.dumps(TINY_TEXT))

    class TinyClipH(comfy.sd1_clip.SDClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}, **kwargs):  # noqa: B006
            super().__init__(
                device=device,
                layer="hidden",
                layer_idx=-2,
                textmodel_json_config=str(cfg_path),
                dtype=dtype,
                special_tokens={"start": 49406, "end": 49407, "pad": 0},
                return_projected_pooled=True,
                model_options=model_options,
            )

    class TinySD2Clip(comfy.sd1_clip.SD1ClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}, **kwargs):  # noqa: B006
            super().__init__(
                device=device, dtype=dtype, model_options=model_options, clip_name="h", clip_model=TinyClipH, **kwargs
            )

    def make(seed: int = 7, hf_text_sd: dict | None = None):
        target = comfy.supported_models_base.ClipTarget(sd2_clip.SD2Tokenizer, TinySD2Clip)
        clip = comfy.sd.CLIP(target, model_options={"dtype": torch.float32})
        if hf_text_sd is None:
            from transformers import CLIPTextConfig, CLIPTextModel

            torch.manual_seed(seed)
            hf_text_sd = CLIPTextModel(CLIPTextConfig(**TINY_TEXT)).state_dict()
            # transformers 5 names CLIPTextModel keys without the "text_model." of the checkpoints
            hf_text_sd = {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in hf_text_sd.items()}
        sd = {f"clip_h.transformer.{k}": v for k, v in hf_text_sd.items() if not k.endswith("position_ids")}
        g = torch.Generator().manual_seed(seed + 1)  # the projection is not part of a CLIPTextModel
        sd["clip_h.transformer.text_projection.weight"] = torch.randn(32, 32, generator=g) * 0.1
        sd["clip_h.logit_scale"] = torch.tensor(4.6052)
        missing, unexpected = clip.load_sd(sd, full_model=True)
        assert not unexpected and not missing, (missing, unexpected)
        return clip

    return make


def _init_random(module, seed: int) -> None:
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in module.state_dict().values():  # parameters and buffers (ComfyUI allocates them empty)
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g) * 0.05)


def _tiny_patcher(model_config, seed: int):
    """A CPU fp32 ``ModelPatcher`` of a tiny ``comfy.supported_models`` config, randomly initialised."""
    import comfy.model_patcher
    import torch

    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, device=torch.device("cpu"))
    _init_random(model.diffusion_model, seed)
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


@pytest.fixture(scope="session")
def make_sd3_model(comfy_root):
    """Factory: a tiny SD3 MMDiT ``ModelPatcher`` (comfy.supported_models.SD3, depth 2 → width 128)."""
    import comfy.supported_models

    def make(seed: int = 0):
        return _tiny_patcher(comfy.supported_models.SD3(copy.deepcopy(TINY_SD3)), seed)

    return make


@pytest.fixture(scope="session")
def make_flux_model(comfy_root):
    """Factory: a tiny FLUX ``ModelPatcher`` (comfy.supported_models.Flux; width 32, 1 double + 1 single block)."""
    import comfy.supported_models

    def make(seed: int = 0):
        return _tiny_patcher(comfy.supported_models.Flux(copy.deepcopy(TINY_FLUX)), seed)

    return make


SD3_TARGETS = [
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "ff.net.0.proj",
    "ff.net.2",
]
FLUX_TARGETS = [*SD3_TARGETS, "proj_mlp", "single_transformer_blocks.0.proj_out"]


@pytest.fixture(scope="session")
def make_lora_file():
    """Factory writing a LoRA the way the project's trainer does: a tiny diffusers transformer (SD3 or FLUX,
    shapes matching ``make_sd3_model``/``make_flux_model``) with a peft adapter, saved by the diffusers
    pipeline's ``save_lora_weights`` (diffusers keys, adapter metadata), plus ``icthp.*`` metadata."""
    import torch
    from diffusers import FluxPipeline, FluxTransformer2DModel, SD3Transformer2DModel, StableDiffusion3Pipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors import safe_open
    from safetensors.torch import save_file

    def make(
        path: Path,
        arch: str = "sd3",
        rank: int = 4,
        alpha: float = 8.0,
        seed: int = 0,
        metadata: dict | None = None,
        alpha_tensors: bool = False,
    ) -> Path:
        torch.manual_seed(seed)
        if arch == "sd3":
            tr = SD3Transformer2DModel(
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
            targets, pipe = SD3_TARGETS, StableDiffusion3Pipeline
        else:
            tr = FluxTransformer2DModel(
                patch_size=1,
                in_channels=64,
                num_layers=1,
                num_single_layers=1,
                attention_head_dim=16,
                num_attention_heads=2,
                joint_attention_dim=32,
                pooled_projection_dim=32,
                guidance_embeds=False,
                axes_dims_rope=(4, 6, 6),
            )
            targets, pipe = FLUX_TARGETS, FluxPipeline
        tr.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets))
        with torch.no_grad():
            for name, p in tr.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn_like(p) * 0.1)  # non-zero B so deltas show
        out_dir = path.parent / (path.stem + "_tmp")
        pipe.save_lora_weights(
            out_dir,
            transformer_lora_layers=get_peft_model_state_dict(tr),
            transformer_lora_adapter_metadata={"r": rank, "lora_alpha": alpha},
        )
        with safe_open(str(out_dir / "pytorch_lora_weights.safetensors"), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if alpha_tensors:
            for k in [k for k in tensors if k.endswith(".lora_A.weight")]:
                tensors[k[: -len(".lora_A.weight")] + ".alpha"] = torch.tensor(float(alpha))
        meta.update(
            {
                "icthp.base_model": f"tiny-{arch}",
                "icthp.base_arch": arch,
                "icthp.reward": "ict_hp",
                "icthp.variant": "draft-k",
                "icthp.k": "1",
                "icthp.steps": "123",
                "icthp.rank": str(rank),
                "icthp.alpha": str(alpha),
            }
        )
        meta.update(metadata or {})
        meta = {k: v for k, v in meta.items() if v is not None}
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata=meta)
        return path

    return make


# ---------------------------------------------------------------------------------------------- live server

START_TIMEOUT = 180


def _prepare_server(config: pytest.Config) -> warm_servers.Launch:
    """A ComfyUI base directory whose ``custom_nodes/icthp`` is this repository (plus the tiny stand-in nodes) and
    whose ``models/icthp`` holds the tiny models, and the ``main.py --cpu`` command on it."""
    comfy = comfyui_dir()
    base = shared_models.tmp_factory(config).mktemp("comfy_base")
    (base / "custom_nodes").mkdir()
    os.symlink(ROOT, base / "custom_nodes" / "icthp", target_is_directory=True)
    # stand-ins for checkpoint loader + text encoders, so the example workflows run with tiny models
    os.symlink(Path(__file__).with_name("tiny_nodes"), base / "custom_nodes" / "icthp_test_nodes")
    shutil.copytree(_tiny_icthp_dir(config), base / "models" / "icthp")
    for d in ("input", "output", "temp", "user"):
        (base / d).mkdir(exist_ok=True)

    def command(port: int) -> list[str]:
        return [
            sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
            "--base-directory", str(base), "--disable-auto-launch", "--database-url", "sqlite:///:memory:",
        ]  # fmt: skip

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return warm_servers.Launch(command, comfy, env, base / "server.log", "/system_stats", info={"base": base})


warm_servers.register("comfyui", Path(__file__).parent, "server", _prepare_server)


@pytest.fixture(scope="session")
def server(comfy_root, request):
    """A ComfyUI server on loopback (``--cpu``) on the base directory above (started while pytest collects:
    tests/warm_servers.py); yields ``(url, base_dir)``; stopped at the end of the session."""
    comfy = warm_servers.started("comfyui", request.config)
    try:
        comfy.wait_until_up(START_TIMEOUT, "ComfyUI")
        yield comfy.url, comfy.info["base"]
    finally:
        comfy.stop(30)
