"""Constants and the tiny trainer configuration shared by the DRaFT tests."""

from icthp_core.diffusion.draft_train import DraftTrainConfig

PROMPTS = ["a photo of a cat", "a red car", "a blue house", "a dog on grass"]


def tiny_config(pipe_dir, prompt_file, rewards, out, **kw) -> DraftTrainConfig:
    """A DRaFT run on a tiny pipeline at 32 px (rank-4 LoRA, fp32); `kw` overrides any field."""
    base = dict(
        base_model=str(pipe_dir),
        prompts=str(prompt_file),
        reward="ict_hp",
        reward_sources=rewards,
        output_dir=str(out),
        resolution=32,
        max_steps=8,
        batch_size=2,
        lr=1e-2,
        rank=4,
        mixed_precision="no",
        max_sequence_length=16,
        log_every=2,
        sample_every=8,
        checkpoint_every=0,
        sample_seeds=[0, 1],
    )
    base.update(kw)
    return DraftTrainConfig(**base)
