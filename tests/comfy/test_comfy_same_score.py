"""The same file gives the same score in the CLI, the Python API, the app and ComfyUI (EXIF applied everywhere)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

pytestmark = [pytest.mark.comfyui]

PROMPT = "a red kite over a green field"


def _exif_rotated_jpeg(path):
    """A non-square photo whose EXIF says 'rotate 90 degrees to view' (as phones write them)."""
    rng = np.random.default_rng(5)
    small = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((320, 192), Image.Resampling.BILINEAR)
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(path, format="JPEG", quality=95, exif=exif.tobytes())
    return path


def test_same_file_same_score_everywhere(icthp_folder, tmp_path):
    import folder_paths
    import nodes
    from icthp_app.pool import ScorerPool

    from comfy_nodes.reward_nodes import ICTHPLoader, ICTHPScore
    from icthp_cli.main import main
    from icthp_core import load_scorer

    ict, hp = icthp_folder / "ict", icthp_folder / "hp"
    f = _exif_rotated_jpeg(tmp_path / "phone.jpg")

    out = tmp_path / "o.jsonl"
    argv = ["score", "--ict", str(ict), "--hp", str(hp), "--prompt", PROMPT, str(f), "-o", str(out), "--workers", "0"]
    assert main([*argv, "--no-progress", "-q"]) == 0
    cli = json.loads(out.read_text())["ict_hp"]
    api = float(load_scorer(ict, hp, device="cpu").score([str(f)], PROMPT)["ict_hp"][0])
    app = float(
        ScorerPool(["ict", "hp", "ict_hp"], {"ict": str(ict), "hp": str(hp)}).score([f], PROMPT, ["ict_hp"])["ict_hp"][
            0
        ]
    )

    shutil.copy(f, folder_paths.get_input_directory())
    image, _mask = nodes.LoadImage().load_image(f.name)  # ComfyUI's own loader (applies EXIF)
    (rm,) = ICTHPLoader.execute(model="ICT-HP", ict_source="ict", hp_source="hp", device="default", dtype="fp32").result
    comfy = ICTHPScore.execute(reward_model=rm, images=image, prompt=PROMPT).result[3][0]

    ignored = float(
        load_scorer(ict, hp, device="cpu").score([np.asarray(Image.open(f).convert("RGB"))], PROMPT)["ict_hp"][0]
    )
    assert cli == pytest.approx(api, abs=1e-6) and cli == pytest.approx(app, abs=1e-6)
    # ComfyUI resizes IMAGE tensors with torch's antialiased bicubic (not PIL's): close, not bit-equal
    assert abs(comfy - cli) < 2e-3
    assert abs(ignored - cli) > 5 * abs(comfy - cli)  # ignoring EXIF would be a visibly different score
