"""`icthp toy-data -o DIR --models`: tiny random models beside the toy data, and the commands that try every job.

The models are random (ICT and HP in their published layouts, a tiny SD3 pipeline): every score they give is
meaningless. They exist so that each job can be run end to end on a CPU in seconds, before the real weights are
downloaded.
"""

from __future__ import annotations

import shlex
from pathlib import Path

MEANINGLESS = (
    "These models are tiny and RANDOM: every score, accuracy and LoRA below is meaningless; the commands only show "
    "that each job runs. Real weights: see README 'Get the weights'."
)


def write_toy_models(folder: str | Path) -> dict[str, Path]:
    """Write `folder/models/{ict,hp,sd3}` (random; published layouts) and `folder/prompts.txt`; returns the paths."""
    from icthp_core.testing.diffusion import save_tiny_pipeline
    from icthp_core.testing.tiny import save_tiny_hp, save_tiny_ict

    root = Path(folder)
    models = root / "models"
    out = {
        "ict": save_tiny_ict(models / "ict", seed=0),
        "hp": save_tiny_hp(models / "hp", seed=1),
        "sd3": save_tiny_pipeline("sd3", models / "sd3"),
        "prompts": root / "prompts.txt",
    }
    out["prompts"].write_text("a red circle\na blue square\na green triangle\na yellow star\n", encoding="utf-8")
    return out


def toy_commands(folder: str | Path) -> list[tuple[str, str]]:
    """(job, command) to try each job on the toy data and models of `folder` (as the user named it), on a CPU."""
    d = Path(folder).as_posix()
    q = shlex.quote
    ict, hp, sd3 = q(f"{d}/models/ict"), q(f"{d}/models/hp"), q(f"{d}/models/sd3")
    models = f"--ict {ict} --hp {hp} --device cpu"
    train = "max_steps=2 batch_size=4 num_workers=0 report_to=none plot=false"
    rewards = q(f"reward_sources={{ict: {d}/models/ict, hp: {d}/models/hp}}")
    small = "resolution=32 max_steps=2 mixed_precision=no max_sequence_length=16 sample_every=0 checkpoint_every=0"
    return [
        ("score", f"icthp score {models} --prompt 'a red circle' {q(d + '/img')} --no-progress"),
        ("eval (triplets)", f"icthp eval --data {q(d + '/triplets.jsonl')} {models} --bootstrap 100"),
        ("eval (pairs)", f"icthp eval --data {q(d + '/pairs.jsonl')} {models}"),
        (
            "build-labels",
            f"icthp build-labels --data {q(d + '/triplets.jsonl')} -o {q(d + '/runs/labeled.jsonl')} "
            f"--clip {ict} --theta 0.2 --device cpu",
        ),
        (
            "train-ict",
            f"icthp train-ict train_data={q(d + '/triplets.jsonl')} base_model={ict} "
            f"output_dir={q(d + '/runs/ict')} {train}",
        ),
        (
            "train-hp",
            f"icthp train-hp train_data={q(d + '/triplets.jsonl')} base_model={ict} "
            f"output_dir={q(d + '/runs/hp')} {train}",
        ),
        (
            "draft",
            f"icthp draft base_model={sd3} prompts={q(d + '/prompts.txt')} reward=ict_hp {rewards} "
            f"output_dir={q(d + '/runs/draft')} {small}",
        ),
        (
            "evalgen",
            f"icthp evalgen --model {sd3} --lora ict_hp={q(d + '/runs/draft')} --prompts {q(d + '/prompts.txt')} "
            f"{models} -o {q(d + '/runs/evalgen')} --size 32 --steps 2 --no-progress",
        ),
        ("app", f"icthp app {models}   # then open http://127.0.0.1:7860 (Ctrl-C stops it)"),
    ]


def describe(folder: str | Path) -> str:
    """What `toy-data --models` prints: the warning, then one command per job."""
    lines = [MEANINGLESS, "", "Try each job (on a CPU; each takes seconds to a minute or so):"]
    lines += [f"  # {job}\n  {cmd}" for job, cmd in toy_commands(folder)]
    return "\n".join(lines)
