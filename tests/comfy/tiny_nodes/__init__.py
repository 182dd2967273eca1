"""Test-only ComfyUI node pack: stand-ins for the checkpoint loader and text encoders of the example workflows.

``ICTHPTestTinySD3`` returns a tiny random SD3 MMDiT (``comfy.supported_models.SD3``, as in conftest), a random
TAESD VAE with 16 latent channels and fixed random conditionings, so the examples' ICT-HP nodes run in a real
server without multi-GB weights. Loaded by the ``server`` fixture from ``custom_nodes/icthp_test_nodes``.
"""

import torch

TINY_SD3 = {
    "in_channels": 16,
    "patch_size": 2,
    "out_channels": 16,
    "depth": 2,
    "input_size": None,
    "adm_in_channels": 64,
    "pos_embed_max_size": 8,
    "num_patches": 64,
    "pos_embed_scaling_factor": None,
    "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": 32, "out_features": 128}},
    "x_block_self_attn_layers": [],
}
#: a tiny FLUX (``comfy.supported_models.Flux``): width 32, 1 double + 1 single block
TINY_FLUX = {
    "image_model": "flux",
    "in_channels": 16,
    "out_channels": 16,
    "patch_size": 2,
    "hidden_size": 32,
    "num_heads": 2,
    "axes_dim": [4, 6, 6],
    "mlp_ratio": 4.0,
    "theta": 10000,
    "qkv_bias": True,
    "context_in_dim": 32,
    "vec_in_dim": 32,
    "depth": 1,
    "depth_single_blocks": 1,
    "guidance_embed": False,
}


def _fill(tensors, seed: int, scale: float):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in tensors:
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g) * scale)


def tiny_sd3(seed: int = 3):
    import comfy.model_patcher
    import comfy.supported_models

    cfg = comfy.supported_models.SD3(dict(TINY_SD3))
    cfg.set_inference_dtype(torch.float32, None)
    model = cfg.get_model({}, device=torch.device("cpu"))
    _fill(model.diffusion_model.state_dict().values(), seed, 0.05)
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def tiny_vae(seed: int = 0):
    import comfy.sd
    import comfy.taesd.taesd

    sd = comfy.taesd.taesd.TAESD(latent_channels=16).state_dict()
    _fill(sd.values(), seed, 0.1)
    sd["vae_scale"], sd["vae_shift"] = torch.tensor(1.0), torch.tensor(0.0)
    return comfy.sd.VAE(sd=sd)


def cond(seed: int):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 5, 32, generator=g), {"pooled_output": torch.randn(1, 64, generator=g)}]]


class ICTHPTestTinySD3:
    CATEGORY = "ICT-HP tests"
    RETURN_TYPES = ("MODEL", "CONDITIONING", "CONDITIONING", "VAE")
    RETURN_NAMES = ("model", "positive", "negative", "vae")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 3, "min": 0, "max": 1000})}}

    def load(self, seed):
        return (tiny_sd3(seed), cond(1), cond(2), tiny_vae())


NODE_CLASS_MAPPINGS = {"ICTHPTestTinySD3": ICTHPTestTinySD3}
