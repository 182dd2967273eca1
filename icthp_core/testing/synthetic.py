"""A tiny synthetic preference data set (for smoke tests and tutorials).

Each example is a coloured shape named by its prompt ("a red circle"). Quality is visible: the loser I1 is
dark, blurred and low-contrast, the winner I2 is medium, the refined image I3 is bright and sharp.
A model that
learns "brighter/sharper is better" ranks I1 < I2 < I3, so pairwise accuracy far above 50% is reachable.

    icthp toy-data -o OUT_DIR --triplets 64 --pairs 64

writes `OUT_DIR/triplets.jsonl` (with ICT labels), `OUT_DIR/pairs.jsonl` (label_0 with ties) and PNGs.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle")
QUALITY = {1: (0.35, 3.0), 2: (0.65, 1.2), 3: (1.0, 0.0)}  # level -> (brightness, blur radius)


def render(color: str, shape: str, level: float, size: int = 64, seed: int = 0) -> Image.Image:
    """A shape image; `level` in [1, 3] sets brightness and sharpness (3 = best)."""
    rng = random.Random(seed)
    lo, hi = QUALITY[1], QUALITY[3]
    f = (level - 1) / 2
    bright = lo[0] + f * (hi[0] - lo[0])
    blur = lo[1] + f * (hi[1] - lo[1])
    bg = tuple(int(200 * bright) for _ in range(3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    c = tuple(int(v * bright) for v in COLORS[color])
    m = size // 6 + rng.randint(-2, 2)
    box = (m, m, size - m, size - m)
    if shape == "circle":
        d.ellipse(box, fill=c)
    elif shape == "square":
        d.rectangle(box, fill=c)
    else:
        d.polygon([(size // 2, m), (size - m, size - m), (m, size - m)], fill=c)
    if blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    return img


def make_dataset(out: str | Path, triplets: int = 64, pairs: int = 64, seed: int = 0, size: int = 64) -> dict:
    """Write the data set; returns {"triplets": path, "pairs": path}."""
    out = Path(out)
    (out / "img").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows = []
    for i in range(triplets):
        color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
        names = []
        for level in (1, 2, 3):
            name = f"img/t{i:04d}_{level}.png"
            render(color, shape, level + rng.uniform(-0.2, 0.2), size, seed=i * 3 + level).save(out / name)
            names.append(name)
        e1, e2 = 0.3 + rng.uniform(-0.05, 0.05), 0.65 + rng.uniform(-0.05, 0.05)
        sim = 0.8
        rows.append(
            {
                "easy_prompt": f"a {color} {shape}",
                "refine_prompt": f"a {color} {shape}, bright, sharp, highly detailed",
                "image_1": names[0],
                "image_2": names[1],
                "image_3": names[2],
                "E1": e1,
                "E2": e2,
                "R1": e1 * sim,
                "R2": e2 * sim,
            }
        )
    prows = []
    for i in range(pairs):
        color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
        tie = rng.random() < 0.15
        a = rng.uniform(1, 3)
        b = a if tie else (rng.uniform(1, 3) if rng.random() < 0.5 else 4 - a)
        if not tie and abs(a - b) < 0.5:
            b = 3.0 if a < 2 else 1.0
        names = []
        for k, level in enumerate((a, b)):
            name = f"img/p{i:04d}_{k}.png"
            render(color, shape, level, size, seed=10_000 + i * 2 + k).save(out / name)
            names.append(name)
        label_0 = 0.5 if tie else float(a > b)
        prows.append({"prompt": f"a {color} {shape}", "image_0": names[0], "image_1": names[1], "label_0": label_0})
    with open(out / "triplets.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    with open(out / "pairs.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in prows)
    return {"triplets": out / "triplets.jsonl", "pairs": out / "pairs.jsonl"}
