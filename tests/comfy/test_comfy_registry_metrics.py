"""The registry is the single source of metric choices: a toy metric registered at run time, and the BLIP-family
metrics (imagereward, blip_itc, blip_itm), appear in `icthp metrics`, the app's choices, the ComfyUI loader and
`icthp eval`; ImageReward also scores through the ComfyUI loader and `icthp score`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from icthp_core.scoring.registry import METRICS, MetricSpec, register, unregister

pytestmark = [pytest.mark.comfyui]

NEW = ("imagereward", "blip_itc", "blip_itm")


class Brightness(nn.Module):
    """Toy prompt-free metric: mean of the normalised pixels (brighter image = higher)."""

    needs_prompt = False
    preprocess_mode = "crop"

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.float().mean(dim=(1, 2, 3))

    def score_features(self, features: torch.Tensor, text=None) -> torch.Tensor:
        return features


@pytest.fixture
def toy_metric():
    register(
        MetricSpec(
            "toy_brightness",
            "Toy brightness",
            "image-only",
            "mean pixel value (test)",
            "about [-2, 2]",
            needs_prompt=False,
            model="toy_brightness",
        ),
        lambda src, device, dtype: Brightness(),
    )
    yield "toy_brightness"
    if "toy_brightness" in METRICS:
        unregister("toy_brightness")


def _loader_options(pack) -> list[str]:
    from comfy_nodes.reward_nodes import ICTHPLoader

    schema = ICTHPLoader.GET_SCHEMA()
    combo = next(i for i in schema.inputs if i.id == "model")
    return list(combo.options)


def test_toy_metric_appears_everywhere(pack, toy_metric, tmp_path, capsys):
    from icthp_app import offered_metrics

    from comfy_nodes.models import baselines
    from icthp_cli.main import main as icthp
    from icthp_core.testing.synthetic import make_dataset

    assert icthp(["metrics"]) == 0
    listing = capsys.readouterr().out
    for name in (toy_metric, *NEW):
        assert name in listing
    assert "about [-2, 2]" in listing and "unbounded, typically -2..2" in listing
    from icthp_cli.main import build_parser
    from icthp_core.scoring.registry import parse_metrics

    app_default = build_parser("app")[0].parse_args([]).metrics
    assert app_default == "all"
    offered = offered_metrics(parse_metrics(app_default), {"ict": "8y/ICT", "hp": "8y/HP"})
    assert toy_metric in offered and all(m in offered for m in NEW)
    assert toy_metric in baselines() and all(m in baselines() for m in NEW)
    assert toy_metric in _loader_options(pack) and all(m in _loader_options(pack) for m in NEW)
    # `icthp eval` with the toy metric on the synthetic triplets (brightness rises with the level: known answer)
    data = make_dataset(tmp_path / "toy", triplets=12, pairs=4)["triplets"]
    out = tmp_path / "res.json"
    args = ["eval", "--data", str(data), "--metrics", toy_metric, "--workers", "0", "--device", "cpu", "-o", str(out)]
    assert icthp(args) == 0
    res = json.loads(out.read_text())
    assert res["results"][toy_metric]["avg"] == 1.0 and res["results"][toy_metric]["n"] == 12
    assert res["results"]["ict_groundtruth"]["avg"] == 1.0  # E1 < E2 < E3 = 1 in the synthetic labels
    assert "Toy brightness" in capsys.readouterr().out
    md = out.with_suffix(".md").read_text()
    assert "| Toy brightness | 100.00" in md and "| Random |" in md and "| ICT-groundtruth | 100.00" in md
    unregister(toy_metric)
    assert toy_metric not in baselines() and toy_metric not in _loader_options(pack)


def test_imagereward_through_loader_and_score_cli(pack, tmp_path, capsys, monkeypatch):
    from comfy_nodes.paths import ALLOW_ANY_PATH_ENV
    from comfy_nodes.reward_nodes import ICTHPLoader, ICTHPScore
    from icthp_cli.main import main as icthp
    from icthp_core.scoring.scorer import MultiScorer
    from icthp_core.testing.blip import save_tiny_imagereward

    d = save_tiny_imagereward(tmp_path / "ImageReward", seed=3)
    monkeypatch.setenv(ALLOW_ANY_PATH_ENV, "1")  # a free-text source outside models/ (the policy: test_comfy_sources)
    (rm,) = ICTHPLoader.execute(model="imagereward", ict_source="ict", hp_source="hp", baseline_source=str(d)).result
    assert rm.metrics == ["imagereward"] and rm.needs_prompt
    images = torch.rand(2, 80, 64, 3, generator=torch.Generator().manual_seed(0))
    score = ICTHPScore.execute(reward_model=rm, images=images, prompt="a red car").result[0]
    from PIL import Image

    files = [tmp_path / f"{i}.png" for i in range(2)]
    for i, f in enumerate(files):  # the node scores the 8-bit image that SaveImage would write
        Image.fromarray((images[i].numpy() * 255).astype(np.uint8)).save(f)
    want = MultiScorer(["imagereward"], {"imagereward": str(d)}, device="cpu").score(files, "a red car")
    np.testing.assert_allclose(score, want["imagereward"].numpy(), rtol=1e-5, atol=1e-5)
    # `icthp score` with the same model on the files
    args = ["score", str(tmp_path / "0.png"), str(tmp_path / "1.png"), "--prompt", "a red car"]
    args += ["--metrics", "imagereward", "--source", f"imagereward={d}", "--device", "cpu", "--workers", "0"]
    assert icthp(args) == 0
    assert "ImageReward" in capsys.readouterr().out


def test_one_dtype_default_everywhere(pack):
    """score, eval, app, the Python API and the ComfyUI loader share one default precision (docs/evaluation.md)."""
    import inspect

    from comfy_nodes.reward_nodes import ICTHPLoader
    from icthp_cli.main import build_parser
    from icthp_cli.score import build_parser as score_parser
    from icthp_core.options import DEFAULT_DTYPE
    from icthp_core.scoring.scorer import MultiScorer, load_scorer

    assert DEFAULT_DTYPE == "fp32"
    assert score_parser().parse_args([]).dtype == DEFAULT_DTYPE
    assert build_parser("eval")[0].parse_args(["--data", "x"]).dtype == DEFAULT_DTYPE
    assert build_parser("app")[0].parse_args([]).dtype == DEFAULT_DTYPE
    assert inspect.signature(MultiScorer).parameters["dtype"].default == DEFAULT_DTYPE
    assert inspect.signature(load_scorer).parameters["dtype"].default == DEFAULT_DTYPE
    combo = next(i for i in ICTHPLoader.GET_SCHEMA().inputs if i.id == "dtype")
    assert combo.default == DEFAULT_DTYPE
