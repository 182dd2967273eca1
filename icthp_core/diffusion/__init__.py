"""Diffusion (needs the ``diffusion`` extra): DRaFT-K / ReFL reward fine-tuning, LoRA I/O for diffusers and ComfyUI,
and transfer of the reward towers into diffusers pipelines."""
