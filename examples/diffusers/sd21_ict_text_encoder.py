"""Generate with Stable Diffusion 2.1 using the ICT text tower as its text encoder (paper Fig. 7, diffusers side).

    python examples/diffusers/sd21_ict_text_encoder.py --prompt "a cozy cabin in a snowy forest" --out sd21_ict.png

Writes a side-by-side image: left the original SD2.1 text encoder, right the ICT text tower (same seeds).
`--tiny` runs offline on random tiny models (smoke test).
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from icthp_core.scoring.registry import METRICS


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="stabilityai/stable-diffusion-2-1", help="SD2.x hub id or local dir")
    ap.add_argument("--ict", default=METRICS["ict"].default_source, help="ICT hub id or local dir")
    ap.add_argument("--prompt", default="a cozy wooden cabin in a snowy forest at dusk, warm light")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--size", type=int, default=768)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="sd21_ict.png")
    ap.add_argument("--tiny", action="store_true", help="offline smoke run on tiny random models")
    a = ap.parse_args(argv)

    from torchvision.utils import save_image

    from icthp_core.diffusion.transfer import set_text_encoder

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.tiny:
        from icthp_core.testing.diffusion import tiny_sd2_pipeline
        from icthp_core.testing.tiny import save_tiny_ict

        pipe = tiny_sd2_pipeline(text_layers=1)
        a.ict = str(save_tiny_ict(tempfile.mkdtemp() + "/ict"))
        a.size, a.steps = 32, 2
    else:
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(
            a.model, dtype=torch.float16 if device == "cuda" else torch.float32
        )
    pipe = pipe.to(device)
    images = []
    for swap in (False, True):
        if swap:
            set_text_encoder(pipe, a.ict)
        g = torch.Generator(device).manual_seed(a.seed)
        images.append(
            pipe(
                a.prompt,
                num_inference_steps=a.steps,
                guidance_scale=a.guidance,
                height=a.size,
                width=a.size,
                generator=g,
                output_type="pt",
            ).images
        )
    save_image(torch.cat(images).float(), a.out, nrow=2)
    print(f"wrote {a.out} (left: original text encoder, right: ICT text tower)")


if __name__ == "__main__":
    main()
