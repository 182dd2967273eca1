"""CLI wiring, the generation tab (fake pipeline), HTML escaping and charts."""

from __future__ import annotations

import argparse
import time
import types

import gradio as gr
import pandas as pd
import pytest
import torch
from icthp_app import build_app, make_app
from icthp_app.charts import scores_figure, win_rate_figure
from icthp_app.controller import Controller
from icthp_app.generate import Generator, explanation, requirements_missing
from icthp_app.logic import InputError
from icthp_app.pool import ScorerPool
from icthp_app.render import cards_html, pairs_html
from icthp_app.stored import StoredScores
from PIL import Image

from icthp_cli.main import build_parser
from icthp_core.errors import ConfigError


def _parse(*argv: str) -> argparse.Namespace:
    return build_parser("app")[0].parse_args(list(argv))


def _config(*argv: str):
    from icthp_cli.app import config

    return config(_parse(*argv))


def test_cli_arguments_and_sources(tmp_path):
    a = _config("--ict", "/m/ict", "--hp", "none", "--source", "pickscore=/m/ps", "--ab-root", str(tmp_path))
    assert a.sources == {"ict": "/m/ict", "pickscore": "/m/ps"}
    assert a.host == "127.0.0.1" and a.max_images == 16 and a.ab_roots == [str(tmp_path)]
    assert _config("--source", "ict=/x").sources["ict"] == "/x"  # the same as --ict /x
    with pytest.raises(ConfigError, match="not a metric with weights"):
        _config("--source", "ict_hp=/x")
    with pytest.raises(ConfigError, match="METRIC=SRC"):
        _config("--source", "clip")
    with pytest.raises(ConfigError, match="--batch-size 0"):  # not silently clamped
        _config("--batch-size", "0")
    with pytest.raises(SystemExit):  # the app decodes uploads itself: no --workers
        _parse("--workers", "2")
    assert (a.preload, a.warm) == (False, True) and _config("--lazy").warm is False and _config("--preload").preload
    with pytest.raises(SystemExit):  # load before serving, or only on first use: not both
        _parse("--preload", "--lazy")


def test_default_metrics_load_in_the_background_as_the_app_starts():
    calls: list = []
    make_app(
        _config("--hp", "none", "--metrics", "ict,hp,ict_hp,clip", "--port", "0"), factory=lambda *a: calls.append(a)
    )
    deadline = time.monotonic() + 10
    while not calls and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [c[0] for c in calls] == [["ict"]]  # the ticked group (--hp none: ICT only); clip is not ticked: not loaded


def test_make_app_builds_blocks_without_loading_models(tmp_path):
    calls = []
    args = _config(
        "--lazy", "--hp", "none", "--metrics", "ict,hp,ict_hp,clip", "--ab-root", str(tmp_path), "--port", "0"
    )
    demo, launch = make_app(args, factory=lambda *a: calls.append(a))
    assert isinstance(demo, gr.Blocks) and calls == []  # --lazy: nothing loaded at build time
    assert launch["server_name"] == "127.0.0.1" and launch["max_file_size"] == "20mb"
    cfg = demo.get_config_file()
    labels = [c.get("props", {}).get("label") for c in cfg["components"]]
    assert "Metrics" in labels
    choices = next(c["props"]["choices"] for c in cfg["components"] if c["props"].get("elem_id") == "cmp-metrics")
    assert [v for _, v in choices] == ["ict", "clip"]  # --hp none drops hp and ict_hp
    with pytest.raises(ConfigError, match="--ab-root"):
        _config("--ab-root", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="unknown metric"):
        _config("--metrics", "ict,nosuchmetric")


def test_generation_requirements_and_explanation(tmp_path):
    lora = tmp_path / "l.safetensors"
    lora.write_bytes(b"x")
    assert requirements_missing("base", str(lora), cuda=True) == []
    miss = requirements_missing(None, str(tmp_path / "nope.safetensors"), cuda=False)
    assert len(miss) == 3 and "CUDA" in miss[0] and "not found" in miss[2]
    assert "--base-model" in explanation(miss)


class FakePipe:
    def __init__(self):
        self.lora = True
        self.calls = []

    def enable_lora(self):
        self.lora = True

    def disable_lora(self):
        self.lora = False

    def __call__(self, prompt, num_inference_steps, guidance_scale, height, width, generator):
        seed_draw = int(torch.randint(0, 10**6, (1,), generator=generator))
        self.calls.append((self.lora, seed_draw, num_inference_steps, height))
        return types.SimpleNamespace(images=[Image.new("RGB", (width, height), (255 * self.lora, 0, 0))])


def test_generator_same_seed_base_then_lora_and_controller(tmp_path):
    pipe = FakePipe()
    loads = []
    gen = Generator("base", "l.safetensors", device="cpu", loader=lambda *a: loads.append(a) or pipe)
    base, lora = gen.generate("a cat", seed=7, steps=3, size=32)
    assert [c[0] for c in pipe.calls] == [False, True] and pipe.calls[0][1] == pipe.calls[1][1]
    assert base.getpixel((0, 0)) == (0, 0, 0) and lora.getpixel((0, 0)) == (255, 0, 0)
    gen.generate("a dog", seed=8, steps=3, size=32)
    assert len(loads) == 1 and pipe.lora  # loaded once, LoRA left enabled
    pool = ScorerPool(
        ["hp"], factory=lambda m, s, d, t: types.SimpleNamespace(score=lambda i, p: {"hp": torch.tensor([0.1, 0.4])})
    )
    c = Controller(pool, generator=gen, out_dir=tmp_path)
    r = c.generate("a cat", 1, 2, 3.0, 32, ["hp"])
    assert r.table["HP rank"].tolist() == [2, 1]
    with pytest.raises(InputError, match="not configured"):
        Controller(pool).generate("a cat", 1, 2, 3.0, 32, ["hp"])


def test_cards_escape_names_and_mark_winner(tmp_path):
    p = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(p)
    html = cards_html(["<script>alert(1)</script>.png", "b.png"], [p, p], {"ict_hp": [0.1, 0.2], "clip": [0.3, 0.1]})
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert html.count("icthp-card winner") == 1 and 'data-name="b.png"' in html.split("icthp-card winner")[1][:30]
    assert html.count("data:image/jpeg;base64,") == 2
    rec = StoredScores({"m": 0.5}, {"m": "<i>M</i>"}, "<u>net</u>", {"ict": "<s>"})
    stored = cards_html(["a", "b"], [p, p], {"hp": [0.1, 0.2]}, stored=[None, rec])
    assert stored.count('class="icthp-stored"') == 1 and "&lt;i&gt;M&lt;/i&gt; 0.5000" in stored
    assert "<i>" not in stored and "<u>" not in stored and "<s>" not in stored
    ph = pairs_html(["<b>p</b>"] * 3, [p] * 3, [p] * 3, {"hp": [1, 2, 3]}, {"hp": [0, 5, 3]}, limit=2)
    assert "&lt;b&gt;p&lt;/b&gt;" in ph and "1 more pair" in ph and ph.count("<b>HP") == 2


def test_charts_have_one_panel_per_metric():
    fig = scores_figure(["a", "b", "c"], {"ict": [0.1, 0.3, 0.2], "clip": [-0.3, -0.2, float("nan")]})
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == ["ICT", "CLIP"]
    t = pd.DataFrame({"metric": ["ICT"], "A win rate": [0.6], "CI low": [0.4], "CI high": [0.8]})
    assert win_rate_figure(t).axes[0].get_xlim() == (0.0, 1.0)


def test_build_app_lays_out_the_tabs_from_the_controller():
    """The Blocks have the compare, A/B and generate tabs, the pool's metrics as choices, the defaults ticked."""
    pool = ScorerPool(["hp", "ict"], factory=lambda *a: pytest.fail("build_app must not load a model"))
    demo = build_app(Controller(pool), default_metrics=["hp"], title="My title", generation_note="NOTE-XYZ")
    assert isinstance(demo, gr.Blocks) and demo.title == "My title"
    props = {c["props"].get("elem_id"): c["props"] for c in demo.get_config_file()["components"] if "props" in c}
    tabs = [c["props"]["label"] for c in demo.get_config_file()["components"] if c["type"] == "tabitem"]
    assert tabs == ["Compare images", "A/B models", "Generate: base vs LoRA"]
    for box in ("cmp-metrics", "ab-metrics"):
        assert [v for _, v in props[box]["choices"]] == ["hp", "ict"] and props[box]["value"] == ["hp"]
    assert props["gen-note"]["value"] == "NOTE-XYZ" and "cmp-run" in props and "exp-run" in props
