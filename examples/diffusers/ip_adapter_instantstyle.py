"""Style transfer with IP-Adapter + InstantStyle, using the ICT or HP image tower as the image encoder
(paper Fig. 8, diffusers side).

    python examples/diffusers/ip_adapter_instantstyle.py --style style.jpg --encoder 8y/HP \\
        --prompt "a cat, masterpiece" --out style.png

The IP-Adapter must be a ViT-H one (ICT/HP are CLIP ViT-H/14, 1024-d image embeddings), e.g. h94/IP-Adapter
`sdxl_models/ip-adapter_sdxl_vit-h.safetensors`. InstantStyle applies the adapter only to the style block
(`up.block_0` attention 1) or, with `--mode style_and_layout`, also to `down.block_2`.
Writes [style image | base encoder | ICT/HP encoder] side by side (same seed).
"""

from __future__ import annotations

import argparse

import torch

from icthp_core.scoring.registry import METRICS


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="stabilityai/stable-diffusion-xl-base-1.0")
    ap.add_argument("--ip_adapter", default="h94/IP-Adapter")
    ap.add_argument("--subfolder", default="sdxl_models")
    ap.add_argument("--weight_name", default="ip-adapter_sdxl_vit-h.safetensors")
    ap.add_argument("--base_encoder", default="h94/IP-Adapter", help="repo with models/image_encoder (ViT-H)")
    ap.add_argument("--encoder", default=METRICS["hp"].default_source, help="ICT or HP hub id / local dir")
    ap.add_argument("--style", required=True, help="style reference image")
    ap.add_argument("--prompt", default="a cat, masterpiece, best quality")
    ap.add_argument("--mode", default="style", choices=["style", "layout", "style_and_layout"])
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="instantstyle.png")
    a = ap.parse_args(argv)

    from diffusers import StableDiffusionXLPipeline
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor, resize
    from torchvision.utils import save_image
    from transformers import CLIPVisionModelWithProjection

    from icthp_core.diffusion.transfer import instantstyle_scale, set_ip_adapter_image_encoder

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    pipe = StableDiffusionXLPipeline.from_pretrained(a.model, dtype=dtype).to(device)
    pipe.load_ip_adapter(a.ip_adapter, subfolder=a.subfolder, weight_name=a.weight_name, image_encoder_folder=None)
    pipe.set_ip_adapter_scale(instantstyle_scale(a.mode, a.scale))
    style = Image.open(a.style).convert("RGB")
    outs = []
    base = CLIPVisionModelWithProjection.from_pretrained(
        a.base_encoder, subfolder="models/image_encoder", dtype=dtype
    ).to(device)
    from icthp_core.diffusion.transfer import clip_image_processor

    for enc in ("base", a.encoder):
        if enc == "base":
            pipe.register_modules(image_encoder=base, feature_extractor=clip_image_processor())
        else:
            set_ip_adapter_image_encoder(pipe, enc)
        g = torch.Generator(device).manual_seed(a.seed)
        outs.append(
            pipe(
                a.prompt,
                ip_adapter_image=style,
                num_inference_steps=a.steps,
                guidance_scale=a.guidance,
                generator=g,
                output_type="pt",
            )
            .images.float()
            .cpu()
        )
    h = outs[0].shape[-1]
    ref = resize(pil_to_tensor(style).float() / 255, [h, h]).unsqueeze(0)
    save_image(torch.cat([ref, *outs]), a.out, nrow=3)
    print(f"wrote {a.out} (style | base image encoder | {a.encoder})")


if __name__ == "__main__":
    main()
